"""Redeliveries: a job delivered again (``num_delivered`` > 1) is run again only
when no live worker instance is still running it. ``_redelivered`` reads the
job's events; when another instance acknowledged it last, that instance is asked
over core NATS (``probe_subject``) and the redelivery is held (``_hold``) while
it answers yes. docs/jobs.md, "At least once, retries, redelivery".
"""

from __future__ import annotations

import json
import time

from osapi.job import status as st
from osapi.job.registry import TTL_INTERVALS
from osapi.retry import pause
from osapi.worker.common import log, quiet as _quiet

HOLD_POLL = 1.0  # a redelivery held while another instance runs the job: how often to look again
PROBE_TIMEOUT = 1.0  # how long an instance asked "do you run job J?" has to answer
RUN, DONE, BUSY = "run", "done", "busy"


class Redelivery:
    """The redelivery arbitration of a ``Worker`` (a part of it: it reads the worker's state)."""

    async def _redelivered(self, job: dict, events: list[st.Event] | None = None) -> str:
        """``DONE`` (finished already: the ack was lost), ``BUSY`` (running on a live instance) or ``RUN``."""
        if events is None:
            events = await self.store.events(job["id"])
        broadcast = st.summarize(job).broadcast
        relevant = [e for e in events if e.event != st.SUBMITTED and (not broadcast or e.host == self.hostname)]
        if not relevant:
            return RUN
        newest = max(relevant, key=lambda e: e.sort_key)
        # a broadcast: this host's newest event decides; one host: any final result is the result
        finished = newest.event in st.TERMINAL if broadcast else any(e.event in st.TERMINAL for e in relevant)
        if finished:
            return DONE
        if newest.event not in st.ACTIVE:
            return RUN
        instance = await self._instance_of(job["id"], newest, relevant)
        if instance is None:
            return RUN
        if instance == self.instance:
            return BUSY if job["id"] in self._active else RUN
        answer = await self._ask(instance, job["id"])
        # just back from a NATS outage: the other instance may not have reconnected yet
        ttl = self.heartbeat * TTL_INTERVALS
        while (answer == "gone" and self._reconnected_at is not None
               and time.monotonic() - self._reconnected_at < ttl and not self.stopping.is_set()):
            await pause(0.5, self.stopping)
            answer = await self._ask(instance, job["id"])
        return BUSY if answer in ("yes", "silent") else RUN

    async def _ask(self, instance: str, job_id: str) -> str:
        """Whether ``instance`` runs ``job_id``: ``yes``, ``no``, ``silent`` (no answer) or ``gone``."""
        import nats.errors

        try:
            reply = await self.nc.request(probe_subject(instance), job_id.encode(), timeout=PROBE_TIMEOUT)
        except nats.errors.NoRespondersError:
            return "gone"
        except nats.errors.TimeoutError:
            return "silent"
        return "yes" if reply.data == b"yes" else "no"

    async def _answer_probe(self, msg) -> None:
        """Another instance asks whether this one still runs a job (see ``_redelivered``)."""
        running = (msg.data or b"").decode(errors="replace") in self._active
        await _quiet(msg.respond(b"yes" if running else b"no"))

    async def _instance_of(self, job_id: str, newest: st.Event, relevant: list) -> str | None:
        """The worker instance behind a host's newest run (from its ``acknowledged`` event)."""
        import nats.js.errors as jse

        acks = [e for e in relevant if e.host == newest.host and e.event == st.ACKNOWLEDGED
                and e.nanos <= newest.nanos]
        if not acks:
            return None
        ack = max(acks, key=lambda e: e.sort_key)
        try:
            entry = await self.store.kv("jobs").get(st.event_key(job_id, ack.event, ack.host, ack.nanos))
        except jse.KeyNotFoundError:
            return None
        try:
            details = json.loads(entry.value or b"{}")
        except ValueError:
            return None
        instance = details.get("instance") if isinstance(details, dict) else None
        return instance if isinstance(instance, str) else None

    async def _hold(self, job: dict) -> str:
        """Keep a redelivery (in progress) while a live instance runs the job; then DONE or RUN."""
        log.info("job %s is running on another live worker instance (a NATS outage or a paused process "
                 "outlasted ack_wait); holding this redelivery instead of running it twice", job["id"])
        while not self.stopping.is_set():
            await pause(HOLD_POLL, self.stopping)
            if self.stopping.is_set():
                break
            verdict = await self._redelivered(job)
            if verdict != BUSY:
                return verdict
        return "stopping"


def probe_subject(instance: str) -> str:
    """Core NATS subject on which a worker instance answers whether it runs a job (not in any stream)."""
    return f"_osapi.worker.{instance}.running"

