"""Job status, computed from events, never stored (docs/jobs.md, Events and computed status).

Pure functions over what the store reads: the immutable job, its append-only
events and the per-host responses. Events are KV keys
``status.<id>.<event>.<host>.<nanos>``; everything status needs is in the key,
so listing keys is enough to know a job's status without reading values.

One-host targets (``_any``, a hostname) are ``completed`` once any delivery
completed; broadcasts (``_all``, labels) combine each host's newest event, and
an expected host with no event once ``answer_by_ns`` (stored at submission) has
passed is ``no_response``. A ``failed`` event in the host slot
``SUBMISSION_HOST`` makes the job ``failed`` at once. Every host's outcome
(``host_states``: pending, running, ok, failed, no_response, skipped) and the
``summary`` are part of the view; ``no_response`` and ``skipped`` count as not
ok, and the job's ``status`` keeps its five values.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, NamedTuple

SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED = "submitted", "acknowledged", "started", "completed", "failed"
NO_RESPONSE, SKIPPED = "no_response", "skipped"
EVENTS = (SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED, NO_RESPONSE, SKIPPED)
ACTIVE = frozenset({ACKNOWLEDGED, STARTED})
TERMINAL = frozenset({COMPLETED, FAILED})  # the host ran the job to its end (its response is written first)
NOT_OK = frozenset({FAILED, NO_RESPONSE, SKIPPED})  # a host's final event that is not a success
FINAL = TERMINAL | NOT_OK
PENDING, RUNNING, OK = "pending", "running", "ok"
HOST_STATES = (PENDING, RUNNING, OK, FAILED, NO_RESPONSE, SKIPPED)
_STATE_OF = {ACKNOWLEDGED: RUNNING, STARTED: RUNNING, COMPLETED: OK, FAILED: FAILED, NO_RESPONSE: NO_RESPONSE,
             SKIPPED: SKIPPED}
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
    from osapi.domain.errors import InvalidJob
    from osapi.domain.subjects import parse_target

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
    answer_by_ns: int | None  # an expected host with no event after this is no_response
    created_ns: int | None = None


def summarize(job: Mapping[str, Any], silence_limit: float | None = None) -> Summary:
    """A ``Summary`` of a job body; ``silence_limit`` (seconds) bounds the wait for expected hosts of
    jobs stored without ``answer_by_ns``."""
    broadcast = job.get("broadcast")
    if not isinstance(broadcast, bool):  # stored before the flag existed
        broadcast = target_is_broadcast(job.get("target_hostname"))
    op_type = (job.get("operation") or {}).get("type") if isinstance(job.get("operation"), dict) else None
    expected = tuple(expected_hosts(job)) if broadcast else ()
    created = job.get("created_ns")
    created = created if isinstance(created, int) else None
    answer_by = job.get("answer_by_ns") if expected else None
    if isinstance(job.get("rollout"), dict):
        answer_by = None  # a rollout's silent hosts are marked no_response by its driver, batch by batch
    elif not isinstance(answer_by, int) or isinstance(answer_by, bool):
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
    """Expected hosts with no event at all once ``job.answer_by_ns`` has passed: ``no_response``."""
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
        return FAILED if newest.event in NOT_OK else PROCESSING
    last = last_per_host(worker_events)
    silent = silent_hosts(job, last, now_ns)
    if not worker_events and not silent:
        return SUBMITTED
    states = {FAILED if e.event in NOT_OK else e.event for e in last.values()} | ({FAILED} if silent else set())
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


def host_states(summary: Summary, events: list[Event], last: Mapping[str, Event],
                silent: Iterable[str]) -> dict[str, str]:
    """Every host's outcome (``HOST_STATES``), by hostname.

    A broadcast: the hosts expected at submission and every host that took the
    job. A one-host job (``_any``, a hostname): the host whose run decides it,
    or the target, ``pending``, while nobody took it. A job whose submission
    failed reaches no host: ``{}``.
    """
    if abandoned(events):
        return {}
    if not summary.broadcast:
        decider = _decider(events, last)
        if decider is None:
            target = submitted_token(events)
            return {target_from_token(target) if target else "_any": PENDING}
        return {decider.host: OK if decider.event == COMPLETED else _STATE_OF.get(last[decider.host].event, PENDING)}
    states = {host: _STATE_OF.get(event.event, PENDING) for host, event in last.items()}
    for host in silent:
        states[host] = NO_RESPONSE
    for host in summary.expected:
        states.setdefault(host, PENDING)
    return dict(sorted(states.items()))


def outcome_summary(states: Mapping[str, str]) -> dict[str, int]:
    """``{targeted, ok, failed, no_response, skipped, pending}``; ``pending`` counts running hosts too."""
    counts = {"targeted": len(states), OK: 0, FAILED: 0, NO_RESPONSE: 0, SKIPPED: 0, PENDING: 0}
    for state in states.values():
        counts[PENDING if state == RUNNING else state] += 1
    return counts


def _decider(events: list[Event], last: Mapping[str, Event]) -> Event | None:
    """A one-host job's deciding event: its (newest) ``completed``, else the newest worker event."""
    done = [e for e in events if e.event == COMPLETED]
    if done:
        return done[-1]
    return max(last.values(), key=lambda e: e.sort_key) if last else None


def _not_ok_error(states: Mapping[str, str], worker_states: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``1 of 3 hosts failed, 1 did not answer: h1: …; h2: …`` (capped at ``MAX_ERROR_SUMMARY``)."""
    bad = [h for h, s in states.items() if s in (FAILED, NO_RESPONSE, SKIPPED)]
    counts = outcome_summary(states)
    words = [(FAILED, "failed"), (NO_RESPONSE, "did not answer"), (SKIPPED, "skipped")]
    parts = [f"{counts[state]} {word}" for state, word in words if counts[state]]
    if not parts:
        return None
    parts[0] = parts[0].replace(" ", f" of {len(states)} hosts ", 1)
    detail = "; ".join(f"{h}: {(worker_states.get(h) or {}).get('error') or states[h]}" for h in bad)
    return f"{', '.join(parts)}: {detail}"[:MAX_ERROR_SUMMARY]


def batch_of(job: dict) -> dict[str, int]:
    """Each host's batch number (from 1) in a rollout job; ``{}`` for any other job."""
    rollout = job.get("rollout")
    batches = rollout.get("batches") if isinstance(rollout, dict) else None
    if not isinstance(batches, list):
        return {}
    return {h: n for n, hosts in enumerate(batches, 1) if isinstance(hosts, list) for h in hosts
            if isinstance(h, str)}


def _hosts(job: Mapping[str, Any], states: Mapping[str, str]) -> dict:
    """``hosts``: each host's state and, in a rollout, its batch (from 1)."""
    batches = batch_of(job) if isinstance(job.get("rollout"), dict) else {}
    return {host: {"state": state, **({"batch": batches[host]} if host in batches else {})}
            for host, state in states.items()}


def job_view(job: Mapping[str, Any], events: Iterable[Event], responses: Mapping[str, Mapping[str, Any]],
             now_ns: int | None = None, silence_limit: float | None = None) -> dict:
    """The job object (docs/api.md, Envelopes) from its parts, with every host's outcome (``hosts``,
    ``summary``); ``now_ns``/``silence_limit``: see ``compute_status`` and ``summarize``."""
    events = sorted(events, key=lambda e: e.sort_key)
    summary = _unless_abandoned(summarize(job, silence_limit), events)
    status = compute_status(events, summary, now_ns)
    last = last_per_host(events)
    silent = silent_hosts(summary, last, now_ns)
    states = host_states(summary, events, last, silent)
    shown = {
        host: {"status": r.get("status"), "data": r.get("data"), "error": r.get("error")}
        for host, r in sorted(responses.items())
    }
    worker_states = {
        host: {
            "status": event.event,
            "error": (shown.get(host) or {}).get("error") if event.event in NOT_OK else None,
            "duration": _duration(events, host),
        }
        for host, event in sorted(last.items())
    }
    for host in silent:  # listed when submitted, silent past the bound: no_response
        worker_states[host] = {"status": NO_RESPONSE, "error": silence_error(summary), "duration": None}
    for host in summary.expected:  # listed when submitted, not heard from yet
        worker_states.setdefault(host, {"status": SUBMITTED, "error": None, "duration": None})
    worker_states = dict(sorted(worker_states.items()))
    hostname = result = error = None
    if not summary.broadcast and last:
        hostname = _decider(events, last).host
        response = shown.get(hostname) or {}
        result = response.get("data")
        error = response.get("error") if status == FAILED else None
    elif status == FAILED and abandoned(events):
        error = (shown.get(SUBMISSION_HOST) or {}).get("error") or "submission failed"
    elif status in (FAILED, PARTIAL_FAILURE):
        error = _not_ok_error(states, worker_states)
    created_ns = job.get("created_ns")
    updated_ns = max([e.nanos for e in events] + ([created_ns] if created_ns else []), default=None)
    view = {
        "id": job["id"],
        "status": status,
        "created": job.get("created"),
        "updated_at": rfc3339(updated_ns) if updated_ns else job.get("created"),
        "target_hostname": job.get("target_hostname"),
        "operation": job.get("operation"),
        "hostname": hostname,
        "result": result,
        "error": error,
        "hosts": _hosts(job, states),
        "summary": outcome_summary(states),
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
    if isinstance(job.get("retry_of"), str):
        view["retry_of"] = job["retry_of"]
    return view
