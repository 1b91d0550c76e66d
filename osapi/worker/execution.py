"""Running one delivered job: skip a failed submission, look at a redelivery
(``Redelivery``), expire a late synchronous job, else record the start, run the
provider of the operations table in a thread pool (``_execute``; a ``dry_run``
marker in the data runs it with ``dry_run=True``: ``operations.split_dry_run``),
write the result and the final event, ack -- or hand the job back with the
consumer's back-off. docs/jobs.md, "Workers and delivery".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from osapi import __version__
from osapi.domain import operations
from osapi.job import status as st
from osapi.domain.errors import InvalidJob, RetryableError, is_store_full
from osapi.domain.ids import is_job_id
from osapi.worker.common import describe as _describe, log, now as _now, quiet as _quiet
from osapi.worker.redelivery import BUSY, DONE, RUN


class Execution:
    """The running of jobs by a ``Worker`` (a part of it: it reads the worker's state)."""

    def _delay(self, delivery: int) -> float:
        if not self.back_off:
            return 0.0
        return float(self.back_off[min(max(delivery, 1), len(self.back_off)) - 1])

    async def _keep_alive(self, msg) -> None:
        interval = max(0.2, self.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.debug("in-progress ack failed: %s", exc)

    async def _process(self, msg) -> None:
        """One delivered job: take a slot (normally free at once), handle it, give the slot back."""
        delivery = msg.metadata.num_delivered or 1
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        took = False
        try:
            await self.slots.take()
            took = True
            await self._handle(msg, delivery)
        except asyncio.CancelledError:
            # the grace ran out: hand the job back now rather than after ack_wait
            await asyncio.shield(_quiet(msg.nak()))
            raise
        except Exception as exc:  # noqa: BLE001 - NATS trouble while reporting
            job_id = (msg.data or b"").decode(errors="replace").strip()
            log.warning("job %s on %s: cannot report (%s); it will be redelivered", job_id, self.hostname,
                        _describe(exc))
            await _quiet(msg.nak(delay=self._delay(delivery)))
        finally:
            keep_alive.cancel()
            if took:
                self.slots.give()

    async def _handle(self, msg, delivery: int) -> None:
        store, host = self.store, self.hostname
        job_id = (msg.data or b"").decode(errors="replace").strip()
        try:
            # a first delivery looks only at this host's events and a failed submission (O(1) per
            # host of a broadcast); a redelivery at every host's (redelivery.py)
            job, events = (await store.job_and_events(job_id, host if delivery == 1 else None)
                           if is_job_id(job_id) else (None, []))
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read job %s: %s; retrying later", job_id, _describe(exc))
            await _quiet(msg.nak(delay=self._delay(delivery)))
            return
        if job is None:
            log.info("job %s no longer exists (deleted or expired); skipping", job_id)
            await _quiet(msg.term())
            return
        if st.abandoned(events):
            log.info("job %s: its submission failed (its caller was answered an error); not running it", job_id)
            await msg.ack()
            return
        if delivery > 1:
            verdict = await self._redelivered(job, events)
            if verdict == BUSY:
                verdict = await self._hold(job)
            if verdict == DONE:
                log.info("job %s already finished%s; not running it again", job_id,
                         f" on {host}" if st.summarize(job).broadcast else "")
                await msg.ack()
                return
            if verdict != RUN:  # stopping while held: hand it back at once
                await _quiet(msg.nak())
                return
        if _expired(job):
            await self._expire(job, delivery)
            await msg.ack()
            return
        self._active[job_id] = self._active.get(job_id, 0) + 1
        try:
            await self._run(msg, job, delivery)
        finally:
            self._active[job_id] -= 1
            if not self._active[job_id]:
                del self._active[job_id]

    async def _run(self, msg, job: dict, delivery: int) -> None:
        store, host, job_id = self.store, self.hostname, job["id"]
        starting = asyncio.ensure_future(self._start_events(job_id, delivery))
        if self._store_full_at is not None or not _is_query(job):
            # a modify job (or any job while the store is full) runs only once its start is recorded
            try:
                await starting
            except Exception as exc:  # noqa: BLE001 - not recorded: not run
                await self._not_started(msg, job_id, delivery, exc)
                return
            outcome, data, error = await self._execute(job)
        else:
            # a query runs while its start events are written: a synchronous caller waits for
            # the response, so only what it needs stays on its path
            try:
                outcome, data, error = await self._execute(job)
            finally:
                not_recorded = await _error_of(starting)
            if not_recorded is not None:  # its result is dropped: a run that was not recorded did not happen
                await self._not_started(msg, job_id, delivery, not_recorded)
                return
        self._store_accepts()
        gave_up = False
        if outcome == "retry":
            if delivery < self.max_deliver:
                delay = self._delay(delivery)
                log.warning("job %s on %s asked to retry (%s); delivery %d of %d, next in %gs",
                            job_id, host, error, delivery, self.max_deliver, delay)
                await msg.nak(delay=delay)
                return
            outcome, error, gave_up = "failed", f"{error} (gave up after {delivery} deliveries)", True
        await store.put_response(job_id, host, {
            "status": outcome, "data": data, "error": error, "hostname": host,
            "finished": _now(), "delivery": delivery,
        })
        store.forget(job_id)  # done with its body here
        if not await store.still_stored(job_id):  # deleted while it ran: it must not get keys back
            await store.purge_job(job_id)
            await msg.ack()
            return
        event = st.COMPLETED if outcome == "ok" else st.FAILED
        await store.add_event(job_id, event, host, **({"error": error} if error else {}))
        log.log(logging.INFO if outcome == "ok" else logging.WARNING, "job %s %s on %s", job_id, event, host,
                extra={"fields": {"type": job["operation"]["type"], **({"error": error} if error else {})}})
        if gave_up:
            await msg.nak()  # the last delivery: the server moves it to the dead-letter stream
        else:
            await msg.ack()  # a lost ack means a redelivery, which _redelivered answers

    async def _not_started(self, msg, job_id: str, delivery: int, exc: BaseException) -> None:
        """The start of a job could not be recorded, so it was not run: hand it back with back-off.

        A full store is said once (until a start is recorded again). On the last
        delivery the true cause is left where the dead-letter handler finds it (this
        host's response, ``reason: store-full``), and recorded at once if room came back.
        """
        if not is_store_full(exc):
            raise exc  # NATS trouble: ``_process`` hands the job back with back-off
        self._note_store_full(exc)
        if delivery < self.max_deliver:
            log.debug("job %s not started on %s: the job store is full; delivery %d of %d", job_id, self.hostname,
                      delivery, self.max_deliver)
            await _quiet(msg.nak(delay=self._delay(delivery)))
            return
        error = (f"job store full: {self.hostname} could not record starting the job in {delivery} deliveries, "
                 f"so it did not run it (job.kv.max_bytes = {self.cfg.job.kv.max_bytes} bytes)")
        await _quiet(self.store.put_response(job_id, self.hostname, {
            "status": "failed", "data": None, "error": error, "hostname": self.hostname,
            "finished": _now(), "reason": "store-full",
        }))
        await _quiet(self.store.add_event(job_id, st.FAILED, self.hostname, error=error, reason="store-full"))
        log.warning("job %s failed on %s: %s", job_id, self.hostname, error)
        await _quiet(msg.nak())  # the last delivery: the server moves it to the dead-letter stream

    def _note_store_full(self, exc: BaseException) -> None:
        """A write refused by a full job store: said once, until the store takes writes again."""
        if self._store_full_at is None:
            log.warning("the job store is full (%s): jobs are not run until their start can be recorded; "
                        "delete old jobs, wait for job.kv.ttl to expire them, or raise job.kv.max_bytes",
                        _describe(exc))
        self._store_full_at = time.monotonic()

    def _store_accepts(self) -> None:
        if self._store_full_at is not None:
            self._store_full_at = None
            log.info("the job store takes writes again: running jobs")

    async def _start_events(self, job_id: str, delivery: int) -> None:
        """``acknowledged`` then ``started`` (their keys carry the order: nanos taken in this order)."""
        await asyncio.gather(
            self.store.add_event(job_id, st.ACKNOWLEDGED, self.hostname, delivery=delivery, instance=self.instance),
            self.store.add_event(job_id, st.STARTED, self.hostname, delivery=delivery),
        )

    async def _expire(self, job: dict, delivery: int) -> None:
        """A synchronous job picked up after its caller gave up: failed here, not run."""
        error = f"expired before this host picked it up (expires_at {job.get('expires_at')}): not run"
        await self.store.put_response(job["id"], self.hostname, {
            "status": "failed", "data": None, "error": error, "hostname": self.hostname,
            "finished": _now(), "delivery": delivery, "reason": "expired",
        })
        await self.store.add_event(job["id"], st.FAILED, self.hostname, error=error, reason="expired")
        log.warning("job %s failed on %s: %s", job["id"], self.hostname, error)

    async def _execute(self, job: dict) -> tuple[str, Any, str | None]:
        """Run the provider: ``("ok", data, None)``, ``("failed", None, error)`` or ``("retry", None, error)``."""
        operation = job.get("operation") or {}
        try:
            op = operations.get(operation.get("type"))
            data, dry_run = operations.split_dry_run(op, operation.get("data"))
            data = op.check(data)
        except operations.InvalidData as exc:
            return "failed", None, f"{exc} (this worker runs osapi {__version__})"
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.pool, op.run, data, self.context, dry_run)
        except RetryableError as exc:
            return "retry", None, str(exc) or type(exc).__name__
        except InvalidJob as exc:
            return "failed", None, exc.message
        except Exception as exc:  # noqa: BLE001 - a provider failure is the job's failure
            log.debug("provider %s raised", op.provider, exc_info=True)
            return "failed", None, str(exc).strip() or type(exc).__name__
        if not isinstance(result, dict):
            return "failed", None, f"provider {op.provider} returned {type(result).__name__}, not an object"
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            return "failed", None, f"provider {op.provider} returned a result that is not JSON: {exc}"
        return "ok", result, None


def _is_query(job: dict) -> bool:
    """The job's operation only reads (an unknown type counts as a modify: it fails anyway)."""
    try:
        return operations.get((job.get("operation") or {}).get("type")).kind == operations.QUERY
    except operations.InvalidData:
        return False


async def _error_of(task: asyncio.Future) -> BaseException | None:
    """Wait for ``task``; its exception (None when it succeeded)."""
    try:
        await task
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def _expired(job: dict) -> bool:
    expires = job.get("expires_at_ns")
    return isinstance(expires, int) and time.time_ns() > expires

