"""Dead jobs: from the server's max-deliveries advisory to a ``failed`` job.

Every worker with the control plane's credentials (``DeadLetters._dlq_loop``) and
every API process (``osapi.api.bridge``) runs one ``DeadLetterLoop`` on the shared
``<consumer_name>-dlq`` consumer, so each dead job is handled once, whoever runs it,
and a fleet whose workers are all enrolled hosts (which run no such loop: it writes
under other hosts' names) still has its dead jobs handled: its host gets a ``failed`` response and event
(unless it already has a final one) whose error tells the true cause (a full job
store, a worker that died, a job never started). Advisories of consumers that
are not osapi's own job consumers are ignored. docs/jobs.md, "Dead letters".
"""

from __future__ import annotations

import asyncio
import json
import logging

from osapi.job import status as st
from osapi.domain.errors import is_store_full
from osapi.domain.ids import is_job_id
from osapi.job.setup import dlq_consumer_config, ensure_consumer
from osapi.job.store import Store
from osapi.retry import Backoff, pause, sampled
from osapi.worker.common import MAX_PAUSE, describe, log as worker_log, quiet

log = logging.getLogger("osapi.job.deadletter")
DLQ_RETRY = 5.0  # a dead letter that could not be recorded (a full store, NATS trouble) is tried again after this
UNKNOWN_HOST = "_unknown"


async def handle(store: Store, payload: bytes) -> str | None:
    """Mark the job of one advisory as failed. Returns the job id handled, or None."""
    import nats.js.errors as jse

    try:
        advisory = json.loads(payload)
        seq = int(advisory["stream_seq"])
        consumer = str(advisory.get("consumer") or "")
        deliveries = int(advisory.get("deliveries") or 0)
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed dead-letter entry: %.200r", payload)
        return None
    names = store.names
    if consumer != names.any_consumer and not consumer.startswith(f"{names.consumer}-host-"):
        log.debug("ignoring the max-deliveries advisory of consumer %r: not an osapi job consumer", consumer)
        return None
    try:
        msg = await store.js.get_msg(names.stream, seq)
    except jse.NotFoundError:
        log.warning("dead job notification %d of %s is gone (expired); cannot mark its job", seq, names.stream)
        return None
    job_id = (msg.data or b"").decode(errors="replace").strip()
    if not is_job_id(job_id) or await store.get_job(job_id) is None:
        return None

    host = None
    if consumer != names.any_consumer:
        try:
            info = await store.js.consumer_info(names.stream, consumer)
            host = (info.config.metadata or {}).get("osapi_hostname")
        except jse.NotFoundError:
            host = None
    events = await store.events(job_id)
    last = st.last_per_host(events)
    if host is None:
        if consumer == names.any_consumer and any(e.event in st.TERMINAL for e in events):
            return job_id  # another host finished it
        active = sorted((e for e in last.values() if e.event in st.ACTIVE), key=lambda e: e.sort_key)
        host = active[-1].host if active else None
    elif last.get(host) is not None and last[host].event in st.TERMINAL:
        return job_id  # the worker already reported its final failure
    host, note = await _store_full_note(store, job_id, host)
    where = f"the job is in the dead-letter stream {names.dlq_stream}"
    reason = "dead-letter"
    if note is not None:  # the response already says it (kept: a retry below finds it again)
        error, reason = note, "store-full"
    elif not any(e.event == st.STARTED and e.host == host for e in events):
        full = await store.full()
        cause = full or "the job store refused the write or NATS failed each time"
        error = f"gave up after {deliveries} deliveries: no worker could record starting it ({cause}); {where}"
        reason = "store-full" if full else reason
    else:
        error = f"gave up after {deliveries} deliveries: the worker died, timed out or asked to retry each time; {where}"
    if note is None:
        await store.put_response(job_id, host, {
            "status": "failed", "data": None, "error": error, "hostname": host, "deliveries": deliveries,
            "reason": reason,
        })
    await store.add_event(job_id, st.FAILED, host, error=error, reason=reason)
    log.warning("job %s failed on %s: %s", job_id, host, error)
    return job_id


async def _store_full_note(store: Store, job_id: str, host: str | None) -> tuple[str, str | None]:
    """The host to fail and the error a worker left when a full store kept it from starting the job.

    ``host`` None (the fleet-wide consumer, nobody started the job): the host
    that left such a note, else ``UNKNOWN_HOST``.
    """
    if host is not None:
        found = await store.response(job_id, host)
        responses = {host: found} if found else {}
    else:
        responses = await store.responses(job_id)
    for name, record in sorted(responses.items()):
        if isinstance(record, dict) and record.get("reason") == "store-full" and record.get("error"):
            return name, str(record["error"])
    return host or UNKNOWN_HOST, None


class DeadLetterLoop:
    """The loop on the shared dead-letter consumer, until ``stopping`` is set (or it is cancelled).

    ``fetch(sub)``: one pull (default: one message, waiting ``poll`` s); ``on_store_full(exc)``
    and ``on_store_accepts()``: a worker's notes about a full job store (the API has none).
    """

    def __init__(self, store: Store, cfg, stopping: asyncio.Event, *, poll: float = 2.0, fetch=None,
                 on_store_full=None, on_store_accepts=None, logger: logging.Logger = log):
        self.store = store
        self.cfg = cfg
        self.stopping = stopping
        self.poll = poll
        self.fetch = fetch or (lambda sub: sub.fetch(1, timeout=self.poll))
        self.on_store_full = on_store_full or (lambda exc: None)
        self.on_store_accepts = on_store_accepts or (lambda: None)
        self.log = logger
        self.handled = 0  # dead letters acknowledged (for tests and logs)

    async def run(self) -> None:
        import nats.errors

        names = self.store.names
        sub = None
        trouble = Backoff.linear(0.25, MAX_PAUSE)  # failures in a row: the pause grows
        while not self.stopping.is_set():
            try:
                if sub is None:
                    await ensure_consumer(self.store.js, names.dlq_stream, dlq_consumer_config(self.cfg))
                    sub = await self.store.js.pull_subscribe_bind(names.dlq_consumer, names.dlq_stream)
                try:
                    msgs = await self.fetch(sub)
                except nats.errors.TimeoutError:
                    continue
                trouble.succeeded()
                for msg in msgs:
                    try:
                        await handle(self.store, msg.data)
                    except Exception as exc:  # noqa: BLE001 - try it again soon, not after the DLQ's ack_wait
                        await quiet(msg.nak(delay=DLQ_RETRY))
                        if not is_store_full(exc):
                            raise
                        self.on_store_full(exc)  # said once; recorded when room comes back
                        continue
                    await msg.ack_sync()
                    self.handled += 1
                    self.on_store_accepts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                wait = trouble.failed()
                if sampled(trouble.failures, 20):
                    self.log.warning("dead-letter handling failed: %s; retrying", describe(exc))
                if trouble.failures >= 3:
                    sub = None
                await pause(wait, self.stopping)


class DeadLetters:
    """The dead-letter loop of a ``Worker`` (a part of it: it reads the worker's state)."""

    async def _dlq_loop(self) -> None:
        await DeadLetterLoop(self.store, self.cfg, self.stopping, poll=self.poll, fetch=self._fetch,
                             on_store_full=self._note_store_full, on_store_accepts=self._store_accepts,
                             logger=worker_log).run()
