"""Job status, computed from events, never stored (docs/jobs.md, Events and computed status).

Pure functions over what the store reads: the immutable job, its append-only
events and the per-host responses. Events are KV keys
``status.<id>.<event>.<host>.<nanos>``; everything status needs is in the key,
so listing keys is enough to know a job's status without reading values.

One-host targets (``_any``, a hostname) are ``completed`` once any delivery
completed; broadcasts (``_all``, labels) combine each host's newest event, and
an expected host silent past ``silence_limit`` counts as failed. A ``failed``
event in the host slot ``SUBMISSION_HOST`` makes the job ``failed`` at once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, NamedTuple

SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED = "submitted", "acknowledged", "started", "completed", "failed"
EVENTS = (SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED)
ACTIVE = frozenset({ACKNOWLEDGED, STARTED})
TERMINAL = frozenset({COMPLETED, FAILED})
PROCESSING, PARTIAL_FAILURE = "processing", "partial_failure"
SUBMISSION_HOST = "_submission"  # the host slot of a failed submission's ``failed`` event (no worker has it)
STATUSES = (SUBMITTED, PROCESSING, COMPLETED, FAILED, PARTIAL_FAILURE)
_RANK = {name: i for i, name in enumerate(EVENTS)}
MAX_ERROR_SUMMARY = 2000


class Event(NamedTuple):
    """One status event, as its KV key tells it (a tuple: tens of thousands are parsed at once)."""

    event: str
    host: str
    nanos: int

    @property
    def sort_key(self) -> tuple:
        return (self.nanos, _RANK.get(self.event, 99), self.host)


def event_key(job_id: str, event: str, host: str, nanos: int) -> str:
    return f"status.{job_id}.{event}.{host}.{nanos}"


def parse_event_key(key: str) -> tuple[str, Event] | None:
    """``status.<id>.<event>.<host>.<nanos>`` → (id, Event); None for anything else."""
    parts = key.split(".")
    if len(parts) < 5 or parts[0] != "status" or parts[2] not in _RANK or not parts[-1].isdigit():
        return None
    host = parts[3] if len(parts) == 5 else ".".join(parts[3:-1])
    return parts[1], Event(parts[2], host, int(parts[-1]))


def target_token(target_text: str) -> str:
    """The submitted event's host slot for a target (``group:web`` → ``group=web``)."""
    return target_text.replace(":", "=")


def target_from_token(token: str) -> str:
    return token.replace("=", ":")


def target_is_broadcast(target: Any) -> bool:
    """The one rule (``subjects.Target.broadcast``); an unreadable target counts as a broadcast."""
    from osapi.job.errors import InvalidJob
    from osapi.job.subjects import parse_target

    if not isinstance(target, str):
        return True
    try:
        return parse_target(target).broadcast
    except InvalidJob:
        return True


class Summary(NamedTuple):
    """What status needs of a job body: small, kept per job id (bodies never change)."""

    op_type: str | None
    broadcast: bool
    expected: tuple[str, ...]
    answer_by_ns: int | None  # an expected host with no event after this counts as failed
    created_ns: int | None = None


def summarize(job: Mapping[str, Any], silence_limit: float | None = None) -> Summary:
    """A ``Summary`` of a job body; ``silence_limit`` (seconds) bounds the wait for expected hosts."""
    broadcast = job.get("broadcast")
    if not isinstance(broadcast, bool):  # stored before the flag existed
        broadcast = target_is_broadcast(job.get("target_hostname"))
    op_type = (job.get("operation") or {}).get("type") if isinstance(job.get("operation"), dict) else None
    expected = tuple(expected_hosts(job)) if broadcast else ()
    created = job.get("created_ns")
    created = created if isinstance(created, int) else None
    answer_by = None
    if expected and created is not None and silence_limit is not None:
        answer_by = created + int(silence_limit * 1e9)
    return Summary(op_type if isinstance(op_type, str) else None, broadcast, expected, answer_by, created)


def submitted_token(events: Iterable[Event]) -> str | None:
    for event in events:
        if event.event == SUBMITTED:
            return event.host
    return None


def abandoned(events: Iterable[Event]) -> bool:
    """The submission failed (its caller was answered 5xx): the job is final and never runs."""
    return any(e.event == FAILED and e.host == SUBMISSION_HOST for e in events)


def _unless_abandoned(job: Summary | None, events: list[Event]) -> Summary | None:
    """An abandoned broadcast waits for no expected host."""
    if job is not None and job.expected and abandoned(events):
        return job._replace(expected=(), answer_by_ns=None)
    return job


def last_per_host(events: Iterable[Event]) -> dict[str, Event]:
    last: dict[str, Event] = {}
    for event in events:
        if event.event == SUBMITTED:
            continue
        seen = last.get(event.host)
        if seen is None or event.sort_key > seen.sort_key:
            last[event.host] = event
    return last


def silent_hosts(job: Summary | None, last: Mapping[str, Event], now_ns: int | None) -> list[str]:
    """Expected hosts with no event at all once ``job.answer_by_ns`` has passed (they count as failed)."""
    if job is None or not job.expected or job.answer_by_ns is None or now_ns is None or now_ns < job.answer_by_ns:
        return []
    return [h for h in job.expected if h not in last]


def compute_status(events: Iterable[Event], job: Summary | None = None, now_ns: int | None = None) -> str:
    """One of ``STATUSES`` from a job's events (any order).

    ``job``: the job's ``Summary`` (broadcast or not, expected hosts and how
    long they are waited for); without it, the submitted event's target decides
    and no host is expected. ``now_ns``: the time to judge silent hosts by.
    """
    events = list(events)
    worker_events = [e for e in events if e.event != SUBMITTED]
    job = _unless_abandoned(job, worker_events)
    if job is not None:
        broadcast = job.broadcast
    else:
        token = submitted_token(events)
        broadcast = token is None or target_is_broadcast(target_from_token(token))
    if not broadcast:
        if not worker_events:
            return SUBMITTED
        if any(e.event == COMPLETED for e in worker_events):
            return COMPLETED
        newest = max(worker_events, key=lambda e: e.sort_key)
        return FAILED if newest.event == FAILED else PROCESSING
    last = last_per_host(worker_events)
    silent = silent_hosts(job, last, now_ns)
    if not worker_events and not silent:
        return SUBMITTED
    states = {e.event for e in last.values()} | ({FAILED} if silent else set())
    waiting = job is not None and any(h not in last for h in job.expected) and not silent
    if states & ACTIVE or waiting:
        return PROCESSING
    if states == {COMPLETED}:
        return COMPLETED
    if states == {FAILED}:
        return FAILED
    return PARTIAL_FAILURE


def expected_hosts(job: Mapping[str, Any] | None) -> list[str]:
    """The hosts a broadcast job was expected to reach (``[]`` for one-host jobs and old jobs)."""
    hosts = (job or {}).get("expected_hosts")
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def rfc3339(nanos: int) -> str:
    """UTC, millisecond precision: ``2024-05-01T12:00:00.123Z``."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


def _duration(events: list[Event], host: str) -> float | None:
    """Seconds from this host's newest ``started`` to its terminal event after it."""
    own = sorted((e for e in events if e.host == host and e.event != SUBMITTED), key=lambda e: e.sort_key)
    if not own or own[-1].event not in TERMINAL:
        return None
    started = [e for e in own if e.event == STARTED and e.nanos <= own[-1].nanos]
    if not started:
        return None
    return round((own[-1].nanos - started[-1].nanos) / 1e9, 3)


def silence_error(job: Summary) -> str:
    limit = ((job.answer_by_ns or 0) - (job.created_ns or 0)) / 1e9
    return f"no answer within {limit:g}s of submission: the host did not pick the job up (down, or no worker running)"


def job_view(job: Mapping[str, Any], events: Iterable[Event], responses: Mapping[str, Mapping[str, Any]],
             now_ns: int | None = None, silence_limit: float | None = None) -> dict:
    """The job object (docs/api.md, Envelopes) from its parts (``now_ns``/``silence_limit``: see ``compute_status``)."""
    events = sorted(events, key=lambda e: e.sort_key)
    summary = _unless_abandoned(summarize(job, silence_limit), events)
    status = compute_status(events, summary, now_ns)
    last = last_per_host(events)
    silent = silent_hosts(summary, last, now_ns)
    single = not summary.broadcast
    shown = {
        host: {"status": r.get("status"), "data": r.get("data"), "error": r.get("error")}
        for host, r in sorted(responses.items())
    }
    worker_states = {
        host: {
            "status": event.event,
            "error": (shown.get(host) or {}).get("error") if event.event == FAILED else None,
            "duration": _duration(events, host),
        }
        for host, event in sorted(last.items())
    }
    for host in silent:  # listed when submitted, silent past the bound: failed
        worker_states[host] = {"status": FAILED, "error": silence_error(summary), "duration": None}
    for host in summary.expected:  # listed when submitted, not heard from yet
        worker_states.setdefault(host, {"status": SUBMITTED, "error": None, "duration": None})
    worker_states = dict(sorted(worker_states.items()))
    hostname = result = error = None
    if single and last:
        done = [e for e in events if e.event == COMPLETED]
        decider = done[-1] if done else max(last.values(), key=lambda e: e.sort_key)
        hostname = decider.host
        response = shown.get(hostname) or {}
        result = response.get("data")
        error = response.get("error") if status == FAILED else None
    elif status == FAILED and SUBMISSION_HOST in shown:
        error = shown[SUBMISSION_HOST].get("error")
    elif status in (FAILED, PARTIAL_FAILURE):
        failed = sorted([h for h, e in last.items() if e.event == FAILED] + silent)
        detail = "; ".join(f"{h}: {worker_states[h]['error'] or 'failed'}" for h in failed)
        error = f"{len(failed)} of {len(last) + len(silent)} hosts failed: {detail}"[:MAX_ERROR_SUMMARY]
    created_ns = job.get("created_ns")
    updated_ns = max([e.nanos for e in events] + ([created_ns] if created_ns else []), default=None)
    return {
        "id": job["id"],
        "status": status,
        "created": job.get("created"),
        "updated_at": rfc3339(updated_ns) if updated_ns else job.get("created"),
        "target_hostname": job.get("target_hostname"),
        "operation": job.get("operation"),
        "hostname": hostname,
        "result": result,
        "error": error,
        "responses": shown,
        "worker_states": worker_states,
        "timeline": [
            {
                "timestamp": rfc3339(e.nanos),
                "event": e.event,
                "hostname": target_from_token(e.host) if e.event == SUBMITTED else e.host,
            }
            for e in events
        ],
    }
