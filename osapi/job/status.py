"""Job status, computed from events, never stored (CONTRACT §5.2).

Pure functions over what the store reads: the immutable job, its append-only
events and the per-host responses. Events are KV keys
``status.<id>.<event>.<host>.<nanos>``; everything status needs is in the key,
so listing keys (cheap) is enough to know a job's status without reading values.

The ``submitted`` event's host slot holds the *target* (``_any``, ``_all``, a
hostname, or ``key=value`` for a label, since ``:`` is not allowed in KV keys);
it tells how to combine the hosts' events:

* one-host targets (``_any``, a hostname): the job ran once. ``completed`` as
  soon as any delivery completed; ``failed`` when the newest worker event is a
  failure; otherwise ``processing``. (A ``_any`` job whose first worker died is
  finished by another host; the dead host's dangling ``started`` does not count.)
* broadcasts (``_all``, labels): each host's newest event decides that host;
  ``processing`` while any host is acknowledged/started, then ``completed`` (all
  ok), ``failed`` (all failed) or ``partial_failure``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping, NamedTuple

SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED = "submitted", "acknowledged", "started", "completed", "failed"
EVENTS = (SUBMITTED, ACKNOWLEDGED, STARTED, COMPLETED, FAILED)
ACTIVE = frozenset({ACKNOWLEDGED, STARTED})
TERMINAL = frozenset({COMPLETED, FAILED})
PROCESSING, PARTIAL_FAILURE = "processing", "partial_failure"
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


def _single(token: str | None) -> bool:
    """One-host target? Unknown (no submitted event): treat as a broadcast."""
    if token is None:
        return False
    return token == "_any" or (token != "_all" and "=" not in token)


def submitted_token(events: Iterable[Event]) -> str | None:
    for event in events:
        if event.event == SUBMITTED:
            return event.host
    return None


def last_per_host(events: Iterable[Event]) -> dict[str, Event]:
    last: dict[str, Event] = {}
    for event in events:
        if event.event == SUBMITTED:
            continue
        seen = last.get(event.host)
        if seen is None or event.sort_key > seen.sort_key:
            last[event.host] = event
    return last


def compute_status(events: Iterable[Event], expected: Iterable[str] = ()) -> str:
    """One of ``STATUSES`` from a job's events (any order).

    ``expected``: for a broadcast, the hosts the registry listed as matching when
    the job was submitted (kept in the job). One of them that has not answered
    keeps the job ``processing`` — a host that answers fast does not finish a
    broadcast that a slower host has not even picked up yet.
    """
    events = list(events)
    worker_events = [e for e in events if e.event != SUBMITTED]
    if not worker_events:
        return SUBMITTED
    if _single(submitted_token(events)):
        if any(e.event == COMPLETED for e in worker_events):
            return COMPLETED
        newest = max(worker_events, key=lambda e: e.sort_key)
        return FAILED if newest.event == FAILED else PROCESSING
    last = last_per_host(worker_events)
    states = {e.event for e in last.values()}
    if states & ACTIVE or any(host not in last for host in expected):
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


def job_view(job: Mapping[str, Any], events: Iterable[Event], responses: Mapping[str, Mapping[str, Any]]) -> dict:
    """The job object of CONTRACT §4.3 from its parts."""
    events = sorted(events, key=lambda e: e.sort_key)
    expected = expected_hosts(job)
    status = compute_status(events, expected)
    last = last_per_host(events)
    single = _single(submitted_token(events))
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
    for host in expected:  # listed when submitted, not heard from yet
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
    elif status in (FAILED, PARTIAL_FAILURE):
        failed = [h for h, e in sorted(last.items()) if e.event == FAILED]
        detail = "; ".join(f"{h}: {(shown.get(h) or {}).get('error') or 'failed'}" for h in failed)
        error = f"{len(failed)} of {len(last)} hosts failed: {detail}"[:MAX_ERROR_SUMMARY]
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
