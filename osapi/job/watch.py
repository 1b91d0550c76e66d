"""Follow one job's events as they are stored (``GET /jobs/{id}/events``).

A ``JobWatch`` runs on the job client's event loop. It reads the job and the
sequences of its stored events (one batch request), then subscribes with an
ordered JetStream consumer filtered on the job's event keys
(``$KV.<bucket>.status.<id>.>``) from the stream sequence after ``after``: the
server pushes the stored events, then each new one, in store order -- no
polling. Each event goes to ``emit`` as ``("event", StoredEvent)``; the stream
sequence is the event's id (monotonic, so ``after`` resumes after it).

Once it has caught up with what was stored when it started, it computes the
job's status (``status.py``) after every event; at a final status it emits
``("end", job view)`` and stops. While idle it looks again every ``RECHECK``
seconds: an expected host silent past its bound turns the job final without
an event, and a job deleted meanwhile ends the watch with ``("gone", reason)``.
``emit`` is called on the event loop: it must be quick and thread-safe
(``queue.SimpleQueue.put``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Callable, NamedTuple

from osapi.job import status as st
from osapi.domain.errors import JobNotFound

log = logging.getLogger("osapi.job.watch")

RECHECK = 5.0  # seconds: an idle watch re-judges the status (silent hosts) and checks the job still exists
FINAL = frozenset({st.COMPLETED, st.FAILED, st.PARTIAL_FAILURE})


class StoredEvent(NamedTuple):
    seq: int  # the stream sequence of the event's KV message: its id
    event: str
    hostname: str  # for ``submitted``: the target
    nanos: int
    error: str | None

    def data(self) -> dict:
        out: dict[str, Any] = {"timestamp": st.rfc3339(self.nanos), "hostname": self.hostname}
        if self.error is not None:
            out["error"] = self.error
        return out


class JobWatch:
    def __init__(self, client, job_id: str, after: int, emit: Callable[[tuple], None]):
        self.client = client
        self.store = client.store
        self.job_id = job_id
        self.after = after
        self.emit = emit
        self._events: set[st.Event] = set()
        self._summary: st.Summary | None = None
        self._caught_up_at: int | None = None  # the newest stored sequence at start; None: unknown
        self._caught_up = False
        self._sub = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._done = False

    async def start(self) -> "JobWatch":
        """Read the job and subscribe; ``JobNotFound`` when there is no such job."""
        store = self.store
        job, stored = await self._job_and_sequences()
        if job is None:
            raise JobNotFound(f"no job {self.job_id}: never submitted, deleted, or expired (job.kv.ttl)")
        self._summary = st.summarize(job, store.silence_limit)
        if stored is not None:
            self._events.update(event for _, event in stored)
            newest = max((seq for seq, _ in stored), default=0)
            self._caught_up_at = newest
            self._caught_up = newest <= self.after
        self._sub = await self._subscribe()
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._finished)
        return self

    async def stop(self) -> None:
        self._done = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
        await self._unsubscribe()

    # ------------------------------------------------------------ reading

    async def _job_and_sequences(self) -> tuple[dict | None, list[tuple[int, st.Event]] | None]:
        """The job and ``(sequence, event)`` of every stored event (None when one batch cannot say)."""
        store = self.store
        subject = store.subject_of("jobs", f"status.{self.job_id}.>")
        job, got = await asyncio.gather(store.get_job(self.job_id),
                                        store.multi_last(store.stream_of("jobs"), [subject]))
        if got is None:  # more events than one batch returns: list them (no sequences)
            events = await store.events(self.job_id)
            self._events.update(events)
            return job, None
        pre = len(store.subject_of("jobs", ""))
        out = []
        for msg in got:
            parsed = st.parse_event_key(msg.headers.get("Nats-Subject", "")[pre:])
            seq = msg.headers.get("Nats-Sequence", "")
            if parsed and parsed[0] == self.job_id and seq.isdigit():
                out.append((int(seq), parsed[1]))
        return job, out

    async def _subscribe(self):
        from nats.js.api import ConsumerConfig, DeliverPolicy

        store = self.store
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.after + 1)
        return await store.js.subscribe(store.subject_of("jobs", f"status.{self.job_id}.>"),
                                        stream=store.stream_of("jobs"), cb=self._on_msg,
                                        ordered_consumer=True, config=config)

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        if self._done:
            return
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return
        pre = len(self.store.subject_of("jobs", ""))
        parsed = st.parse_event_key(msg.subject[pre:])
        meta = msg.metadata
        seq = meta.sequence.stream
        if parsed is None or parsed[0] != self.job_id or seq <= self.after:
            return
        event = parsed[1]
        self._events.add(event)
        hostname = st.target_from_token(event.host) if event.event == st.SUBMITTED else event.host
        self.emit(("event", StoredEvent(seq, event.event, hostname, event.nanos, _error(msg.data))))
        if not self._caught_up:
            if self._caught_up_at is not None:
                self._caught_up = seq >= self._caught_up_at
            else:
                self._caught_up = meta.num_pending == 0
        if self._caught_up:
            self._wake.set()

    # ------------------------------------------------------------ judging

    async def _run(self) -> None:
        idle = False
        while not self._done:
            if self._caught_up_at is None and not self._caught_up and idle:
                self._caught_up = True  # nothing came within RECHECK: what was stored has been sent
            if self._caught_up and await self._judge(idle):
                return
            try:
                await asyncio.wait_for(self._wake.wait(), RECHECK)
                idle = False
            except asyncio.TimeoutError:
                idle = True
            self._wake.clear()

    async def _judge(self, idle: bool) -> bool:
        """True when the watch ended: a final status (``end`` sent) or the job is gone.

        Only an idle recheck looks whether the job was deleted: an event just came.
        """
        status = st.compute_status(self._events, self._summary, time.time_ns())
        if status not in FINAL:
            if idle:
                try:
                    self.store.forget(self.job_id)
                    if await self.store.get_job(self.job_id) is None:
                        return self._end(("gone", f"job {self.job_id} was deleted"))
                except Exception as exc:  # noqa: BLE001 - NATS away for a moment: look again later
                    log.debug("job %s: cannot check it still exists: %s", self.job_id, exc)
            return False
        try:
            view = await self.client.get(self.job_id)
        except JobNotFound:
            return self._end(("gone", f"job {self.job_id} was deleted"))
        if view.get("status") not in FINAL:  # events this watch has not seen yet: wait for them
            return False
        return self._end(("end", view))

    def _end(self, item: tuple) -> bool:
        self._done = True
        self.emit(item)
        return True

    def _finished(self, task: asyncio.Task) -> None:
        asyncio.ensure_future(self._unsubscribe())
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("job %s: following its events failed: %s", self.job_id, exc)
            self._done = True
            self.emit(("gone", f"following the events of job {self.job_id} failed; see the API's log"))


def _error(data: bytes | None) -> str | None:
    try:
        details = json.loads(data) if data else None
    except ValueError:
        return None
    error = details.get("error") if isinstance(details, dict) else None
    return error if isinstance(error, str) else None
