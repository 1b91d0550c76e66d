"""The status of every stored job, kept up to date from what changed (statistics and status filters).

Status is computed from events, never stored (docs/jobs.md, Events and computed
status). ``StatusIndex`` keeps per job only what ``status.compute_status`` needs
and reads only what changed on each call: the job bucket's stream info, the event
keys stored since the last sequence it saw (``_since``), the job id listing.
It lists everything again on the first call, when the stream was re-created or
went backwards, when an incremental read fails, and every ``RESYNC`` seconds.
Concurrent callers share the next computation. The reasons and the costs are in
docs/jobs.md, "The status index".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from osapi.job import status as st
from osapi.job.store import MAX_SUBJECT_PAGES, REQUEST_TIMEOUT, Store

log = logging.getLogger("osapi.job.statusindex")

RESYNC = 300.0  # seconds between full listings whatever happened
BATCH = 1000  # event keys a batch direct get returns


class _Job:
    """What status needs of one job's events."""

    __slots__ = ("last", "completed", "submitted", "version", "status", "status_version")

    def __init__(self) -> None:
        self.last: dict[str, st.Event] = {}  # host -> its newest worker event
        self.completed: st.Event | None = None  # one completed event (a one-host job is completed if any)
        self.submitted: st.Event | None = None  # its target decides "broadcast?" when the body is unreadable
        self.version = 0  # bumped on every change that can change the status
        self.status: str | None = None
        self.status_version = -1  # the version ``status`` was computed for (-1: depends on time, or none)

    def add(self, event: st.Event) -> None:
        if event.event == st.SUBMITTED:
            if self.submitted is None:
                self.submitted = event
                self.version += 1
            return
        seen = self.last.get(event.host)
        if seen is None or event.sort_key > seen.sort_key:
            self.last[event.host] = event
            self.version += 1
        if event.event == st.COMPLETED and self.completed is None:
            self.completed = event
            self.version += 1

    def events(self) -> list[st.Event]:
        """Events that give the same status as all of the job's events."""
        out = list(self.last.values())
        if self.completed is not None and self.completed not in out:
            out.append(self.completed)
        if self.submitted is not None:
            out.append(self.submitted)
        return out


class StatusIndex:
    def __init__(self, store: Store):
        self.store = store
        self._jobs: dict[str, _Job] = {}
        self._seq = 0  # the job stream's last sequence already read
        self._created: str | None = None  # the stream's creation time (a re-created stream starts over)
        self._synced_at: float | None = None  # monotonic time of the last full listing
        self._lock = asyncio.Lock()
        self._runs = 0  # computations started
        self._result: tuple[list[str], dict[str, st.Summary], dict[str, str]] | None = None

    async def snapshot(self) -> tuple[list[str], dict[str, st.Summary], dict[str, str]]:
        """Every stored job id (oldest first), their summaries and statuses, as of after this call began."""
        ticket = self._runs
        async with self._lock:
            if self._runs > ticket and self._result is not None:
                return self._result  # that computation started after we asked: share it
            self._runs += 1
            self._result = None
            self._result = await self._compute()
            return self._result

    async def _compute(self) -> tuple[list[str], dict[str, st.Summary], dict[str, str]]:
        await self._refresh()
        ids = await self.store.all_job_ids()  # after the events: a job whose events were read is listed
        wanted = set(ids)
        for job_id in [i for i in self._jobs if i not in wanted]:  # deleted or expired
            del self._jobs[job_id]
        summaries = await self.store.summaries(ids)
        now = time.time_ns()
        return ids, summaries, {i: self._status(i, summaries.get(i), now) for i in ids}

    def _status(self, job_id: str, summary: st.Summary | None, now: int) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            return st.compute_status((), summary, now)
        if job.status_version == job.version:
            return job.status
        status = st.compute_status(job.events(), summary, now)
        job.status = status
        waiting = (summary is None  # unreadable now: do not keep what was computed without it
                   or (summary.broadcast and summary.expected and summary.answer_by_ns is not None
                       and now < summary.answer_by_ns and any(h not in job.last for h in summary.expected)))
        job.status_version = -1 if waiting else job.version  # a waiting broadcast's silent hosts turn no_response
        return status

    # ------------------------------------------------------------ reading what changed

    async def _refresh(self) -> None:
        state = await self._stream_state()
        last_seq = int(state.get("last_seq") or 0)
        created = state.get("created")
        stale = (self._synced_at is None or created != self._created or last_seq < self._seq
                 or time.monotonic() - self._synced_at > RESYNC)
        if stale:
            await self._full(last_seq, created)
            return
        if last_seq == self._seq:
            return
        try:
            await self._since(self._seq + 1, last_seq)
        except Exception as exc:  # noqa: BLE001 - a server without batch gets, a timeout: list everything
            log.debug("reading new job events failed (%s); listing them all", exc)
            await self._full(last_seq, created)

    async def _stream_state(self) -> dict[str, Any]:
        import nats.js.errors as jse

        stream = self.store.stream_of("jobs")
        msg = await self.store.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=REQUEST_TIMEOUT)
        data = json.loads(msg.data)
        if "error" in data:
            raise jse.APIError.from_error(data["error"])
        return {**(data.get("state") or {}), "created": data.get("created")}

    async def _full(self, last_seq: int, created: str | None) -> None:
        """Every job's events from one subject listing (``last_seq`` read before it: later ones come again)."""
        found = await self.store.all_events()
        jobs: dict[str, _Job] = {}
        for job_id, events in found.items():
            job = self._jobs.get(job_id)
            fresh = _Job()
            for event in events:
                fresh.add(event)
            if job is not None and _same(job, fresh):
                jobs[job_id] = job  # unchanged: keep its cached status
            else:
                jobs[job_id] = fresh
        self._jobs = jobs
        self._seq, self._created, self._synced_at = last_seq, created, time.monotonic()

    async def _since(self, start: int, last_seq: int) -> None:
        """Add the event keys stored from sequence ``start`` on (batch direct gets, ``BATCH`` a request).

        ``last_seq``: the stream's last sequence, read before: once the batches
        reach the end, everything up to it has been seen.
        """
        store = self.store
        stream = store.stream_of("jobs")
        pre = len(store.kv_prefix("jobs"))
        subject_filter = store.subject_of("jobs", "status.>")
        seq = start
        for _ in range(MAX_SUBJECT_PAGES):
            got, end = await store.direct_batch(stream, {"seq": seq, "next_by_subj": subject_filter, "batch": BATCH})
            status = end.get("Status")
            if status not in ("204", "404"):
                raise RuntimeError(f"batch get of job events from {seq}: status {status} {end}")
            for msg in got:
                parsed = st.parse_event_key(msg.headers.get("Nats-Subject", "")[pre:])
                if parsed:
                    self._jobs.setdefault(parsed[0], _Job()).add(parsed[1])
                seq = max(seq, int(msg.headers["Nats-Sequence"]) + 1)
            if status == "404" or not got or end.get("Nats-Num-Pending") == "0":
                self._seq = max(seq - 1, last_seq)
                return
            self._seq = seq - 1
        raise RuntimeError("too many new job events to read incrementally")


def _same(a: _Job, b: _Job) -> bool:
    return a.last == b.last and a.completed == b.completed and a.submitted == b.submitted
