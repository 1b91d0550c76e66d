"""The worker: takes jobs from JetStream and runs them through the operations table.

The consumers it pulls from, the events it writes for each job, retries,
redeliveries (held while the first run lives), expiry, failed submissions, the
full store and SIGTERM are described in docs/jobs.md, "Workers and delivery".

``Worker.serve`` connects, sets up, heartbeats (``registry.py``) and runs two
pull loops (``_pull_loop``: the fleet's ``_any`` consumer and this host's
consumer) plus the dead-letter loop (``_dlq_loop``, ``deadletter.py``) until its
stop event is set, then drains within the grace period. ``_handle`` is one
delivery: skip a failed submission, look at a redelivery (``_redelivered``,
``_hold``), expire a late synchronous job, else ``_run``: record the start, run
the provider in a thread pool (``_execute``; a ``dry_run`` marker in the data runs it with
``dry_run=True``: ``operations.split_dry_run``), write the result and the final
event, ack. ``Slots`` (``max_jobs``) bounds the jobs a process runs at once.
``exit_code`` is 1 when NATS closed the connection for good (the supervisor
restarts the worker).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from osapi import __version__
from osapi.config import is_hostname
from osapi.errors import ConfigError
from osapi.job import deadletter, natsadapter, operations
from osapi.job import status as st
from osapi.job.errors import InvalidJob, RetryableError, is_store_full
from osapi.job.ids import is_job_id
from osapi.job.registry import DEFAULT_INTERVAL, TTL_INTERVALS, Registry
from osapi.job.setup import Names, dlq_consumer_config, ensure_consumer, host_consumer_config
from osapi.job.store import Store

log = logging.getLogger("osapi.job.worker")

DEFAULT_GRACE = 30.0
POLL = 10.0  # one pull request waits this long for a job; a stop does not wait for it (_fetch). Longer: fewer
# idle pull requests (1,000 hosts at 2 s cost the cluster ~1,500 requests/s doing nothing: bench/results.md, "Fleet")
MAX_PAUSE = 5.0  # longest wait between retries while NATS is away
HOLD_POLL = 1.0  # a redelivery held while another instance runs the job: how often to look again
PROBE_TIMEOUT = 1.0  # how long an instance asked "do you run job J?" has to answer
DLQ_RETRY = 5.0  # a dead letter that could not be recorded (a full store, NATS trouble) is tried again after this
RUN, DONE, BUSY = "run", "done", "busy"


class Slots:
    """``max_jobs`` slots; a pull loop waits for a free one without taking it (``wait_free``)."""

    def __init__(self, count: int):
        self.free = count
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_free(self, stopping: asyncio.Event) -> None:
        while self.free <= 0 and not stopping.is_set():
            await self._changed.wait()

    async def take(self) -> None:
        while self.free <= 0:
            await self._changed.wait()
        self.free -= 1

    def give(self) -> None:
        self.free += 1
        self._notify()

    def wake(self) -> None:
        self._notify()


def _now() -> str:
    return st.rfc3339(time.time_ns())


class Worker:
    def __init__(self, cfg, hostname: str | None = None, labels: dict | None = None,
                 heartbeat: float = DEFAULT_INTERVAL, grace: float = DEFAULT_GRACE, poll: float = POLL):
        self.cfg = cfg
        self.hostname = hostname or cfg.job.worker.hostname or socket.gethostname()
        if not is_hostname(self.hostname) or self.hostname.startswith("_"):
            raise ConfigError(
                f"the worker's hostname {self.hostname!r} is not a valid hostname",
                "set job.worker.hostname (OSAPI_JOB_WORKER_HOSTNAME) to this host's name",
            )
        self.labels = dict(cfg.job.worker.labels if labels is None else labels)
        self.max_jobs = cfg.job.worker.max_jobs
        self.heartbeat = heartbeat
        self.grace = grace
        self.poll = poll
        self.instance = uuid.uuid4().hex[:12]
        self.started_at = _now()
        consumer = cfg.job.consumer
        self.max_deliver = consumer.max_deliver
        self.ack_wait = consumer.ack_wait
        self.back_off = list(consumer.back_off)
        self.names = Names.from_config(cfg)
        self.context = operations.HostContext(self.hostname, dict(self.labels), cfg)
        self.pool = ThreadPoolExecutor(max_workers=self.max_jobs, thread_name_prefix="osapi-job")
        self.running: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()
        self.nc = None
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.slots: Slots | None = None
        self.abandoned = 0  # jobs still running when the grace ran out
        self.exit_code = 0  # 1: NATS closed the connection for good
        self._active: dict[str, int] = {}  # job id -> runs of it in this process now
        self._subs: list = []  # pull subscriptions, for the negative acks at stop
        self._reconnected_at: float | None = None
        self._store_full_at: float | None = None  # monotonic time a start could not be recorded: the store is full
        self._beat_now: asyncio.Event | None = None

    @property
    def registry_key(self) -> str:
        return f"{self.hostname}.{self.instance}"

    # ------------------------------------------------------------ lifecycle

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain within the grace period. Logs "worker <host> stopped" last."""
        try:
            await self._serve(stop)
        finally:
            log.info("worker %s stopped", self.hostname, extra={"fields": {
                "exit_status": self.exit_code, "instance": self.instance,
                **({"abandoned": self.abandoned} if self.abandoned else {})}})

    async def _serve(self, stop: asyncio.Event) -> None:
        from osapi.job import connection

        self.slots = Slots(self.max_jobs)
        self._beat_now = asyncio.Event()
        operations.warn_if_test_operations(log)
        self.nc = await self._connect(stop)
        if self.nc is None:
            return
        try:
            self.store = Store(self.nc, self.cfg)
            self.registry = Registry(self.store)
            if not await self._retry(stop, "set up the job streams", self._setup):
                return
            await self.nc.subscribe(probe_subject(self.instance), cb=self._answer_probe)
            loops = [
                asyncio.create_task(self._pull_loop("_any", self._bind_any)),
                asyncio.create_task(self._pull_loop("host", self._bind_host)),
                asyncio.create_task(self._dlq_loop()),
            ]
            beat = asyncio.create_task(self._heartbeat_loop())
            log.info("worker %s ready", self.hostname, extra={"fields": {
                "labels": ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "-",
                "max_jobs": self.max_jobs, "instance": self.instance}})
            await stop.wait()
            log.info("stopping: no new jobs; %d running", len(self.running))
            self.stopping.set()
            self.slots.wake()
            await asyncio.gather(beat, return_exceptions=True)
            await asyncio.wait(loops, timeout=self.poll + 5)
            if self.running:
                _, pending = await asyncio.wait(set(self.running), timeout=self.grace)
                if pending:
                    self.abandoned = len(pending)
                    log.warning("%d job(s) still running after %gs; they will be redelivered", len(pending), self.grace)
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending, timeout=5)  # their negative acks go out
            for task in loops:
                task.cancel()
        finally:
            for sub in self._subs:
                await self._nak_queued(sub)
                await _quiet(sub.unsubscribe())  # no more deliveries to a pull given up at stop …
            await _quiet(asyncio.wait_for(self.nc.flush(), 2))
            for sub in self._subs:
                await self._nak_queued(sub)  # … and those that came before the server saw that
            # everything we publish is confirmed (acks are requests), so close rather than drain:
            # draining waits on the pull subscriptions' queues, which nothing reads any more
            try:
                await asyncio.wait_for(self.nc.flush(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            await connection.close(self.nc)
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _connect(self, stop: asyncio.Event):
        from osapi.job.connection import connect
        from osapi.job.errors import NatsUnavailable

        async def closed() -> None:
            if not stop.is_set():
                log.error("NATS closed the connection for good; exiting with status 1 so that the "
                          "supervisor starts this worker again")
                self.exit_code = 1
                stop.set()

        async def reconnected() -> None:
            self._reconnected_at = time.monotonic()
            if self._beat_now is not None:
                self._beat_now.set()  # be in the registry again at once: see _redelivered

        attempt = 0
        while not stop.is_set():
            try:
                return await connect(self.cfg, f"osapi-worker {self.hostname} {os.getpid()}", first_timeout=2.0,
                                     on_closed=closed, on_reconnected=reconnected)
            except NatsUnavailable as exc:
                attempt += 1
                if attempt == 1 or attempt % 12 == 0:
                    log.warning("%s; retrying", exc)
                await _wait(stop, min(MAX_PAUSE, 0.5 * attempt))
        return None

    async def _retry(self, stop: asyncio.Event, what: str, fn) -> bool:
        for attempt in range(1, 1 << 30):
            if stop.is_set():
                return False
            try:
                await fn()
                return True
            except Exception as exc:  # noqa: BLE001 - NATS away: wait and try again
                if attempt == 1 or attempt % 12 == 0:
                    log.warning("cannot %s: %s; retrying", what, _describe(exc))
                await _wait(stop, min(MAX_PAUSE, 0.5 * attempt))
        return False

    async def _setup(self) -> None:
        await self.store.setup(update_consumers=True)
        await ensure_consumer(self.store.js, self.names.stream, host_consumer_config(self.cfg, self.hostname, self.labels))

    # ------------------------------------------------------------ pulling

    async def _bind_any(self):
        return await self.store.js.pull_subscribe_bind(self.names.any_consumer, self.names.stream)

    async def _bind_host(self):
        return await self.store.js.pull_subscribe_bind(self.names.host_consumer(self.hostname), self.names.stream)

    async def _pull_loop(self, label: str, bind) -> None:
        import nats.errors

        sub = None
        failures = 0
        try:
            while not self.stopping.is_set():
                await self.slots.wait_free(self.stopping)  # pull only while a slot is free, without taking it
                if self.stopping.is_set():
                    break
                try:
                    if sub is None:
                        sub = await bind()
                        self._subs.append(sub)
                    try:
                        msgs = await self._fetch(sub)
                    except nats.errors.TimeoutError:
                        failures = 0
                        continue
                    failures = 0
                    for msg in msgs:
                        if self.stopping.is_set():
                            await _quiet(msg.nak())  # someone else (or our next start) takes it at once
                            continue
                        task = asyncio.create_task(self._process(msg))
                        self.running.add(task)
                        task.add_done_callback(self._finished)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS away or consumer gone
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("pulling %s jobs failed: %s; retrying", label, _describe(exc))
                    if failures >= 3:
                        # the server may have lost the consumer (a wiped store): create it again
                        if sub is not None:
                            await self._nak_queued(sub)
                            self._subs.remove(sub)
                        sub = await self._rebind(sub)
                    await _wait(self.stopping, min(MAX_PAUSE, 0.25 * failures))
        finally:
            if sub is not None:
                await self._nak_queued(sub)

    async def _fetch(self, sub) -> list:
        """One pull of at most one job (``poll`` s); ``[]`` at once when the worker stops meanwhile.

        An idle pull holds no job: giving it up lets a stopping worker exit
        without sitting out ``poll``. A job that the server delivers for the
        abandoned pull lands in the subscription's queue and is negatively acked
        at stop (``_nak_queued``), so another process takes it at once.
        """
        if self.stopping.is_set():
            return []
        fetch = asyncio.ensure_future(sub.fetch(1, timeout=self.poll))
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not fetch.done():
                fetch.cancel()
        try:
            return await fetch
        except asyncio.CancelledError:
            if fetch.cancelled() and self.stopping.is_set():
                return []
            raise

    async def _nak_queued(self, sub) -> None:
        """Negative-ack jobs delivered after the last pull gave up waiting (nobody will read them).

        nats-py keeps such late deliveries in the subscription's queue for the next
        pull; at stop there is none, and they would wait ``ack_wait`` for redelivery.
        """
        for msg in natsadapter.queued_messages(sub):
            if msg.reply and msg.reply.startswith("$JS.ACK."):
                await _quiet(msg.nak())

    async def _rebind(self, sub):
        try:
            if sub is not None:
                await sub.unsubscribe()
        except Exception:  # noqa: BLE001
            pass
        try:
            await self._setup()
        except Exception as exc:  # noqa: BLE001
            log.debug("setup while NATS is away: %s", _describe(exc))
        return None

    def _finished(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job handling crashed: %s", task.exception(), exc_info=task.exception())

    # ------------------------------------------------------------ one job

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
            # host of a broadcast); a redelivery at every host's (_redelivered)
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
        store.forget(job_id)  # read it afresh: a job deleted while it ran must not get keys back
        if await store.get_job(job_id) is None:
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

    # ------------------------------------------------------------ redeliveries

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
            await _wait(self.stopping, 0.5)
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
            await _wait(self.stopping, HOLD_POLL)
            if self.stopping.is_set():
                break
            verdict = await self._redelivered(job)
            if verdict != BUSY:
                return verdict
        return "stopping"

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

    # ------------------------------------------------------------ dead letters

    async def _dlq_loop(self) -> None:
        import nats.errors

        sub = None
        failures = 0
        while not self.stopping.is_set():
            try:
                if sub is None:
                    await ensure_consumer(self.store.js, self.names.dlq_stream, dlq_consumer_config(self.cfg))
                    sub = await self.store.js.pull_subscribe_bind(self.names.dlq_consumer, self.names.dlq_stream)
                try:
                    msgs = await self._fetch(sub)
                except nats.errors.TimeoutError:
                    continue
                failures = 0
                for msg in msgs:
                    try:
                        await deadletter.handle(self.store, msg.data)
                    except Exception as exc:  # noqa: BLE001 - try it again soon, not after the DLQ's ack_wait
                        await _quiet(msg.nak(delay=DLQ_RETRY))
                        if not is_store_full(exc):
                            raise
                        self._note_store_full(exc)  # said once; recorded when room comes back
                        continue
                    await msg.ack_sync()
                    self._store_accepts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("dead-letter handling failed: %s; retrying", _describe(exc))
                if failures >= 3:
                    sub = None
                await _wait(self.stopping, min(MAX_PAUSE, 0.25 * failures))

    # ------------------------------------------------------------ registry

    def _entry(self) -> dict:
        return {
            "hostname": self.hostname,
            "labels": dict(self.labels),
            "version": __version__,
            "started_at": self.started_at,
            "last_seen": _now(),
            "ttl": self.heartbeat * TTL_INTERVALS,
            "pid": os.getpid(),
            "instance": self.instance,
        }

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._beat_now.clear()
            try:
                await self.registry.beat(self.registry_key, self._entry(), self.heartbeat * TTL_INTERVALS)
                failures = 0
            except Exception as exc:  # noqa: BLE001
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("heartbeat failed: %s", _describe(exc))
            await _wait_any((self.stopping, self._beat_now), self.heartbeat)
        try:
            await self.registry.remove(self.registry_key)
        except Exception as exc:  # noqa: BLE001 - the entry expires by itself
            log.debug("cannot remove the registry entry: %s", exc)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` unless ``event`` is set first."""
    try:
        await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
    except asyncio.TimeoutError:
        pass


async def _wait_any(events, seconds: float) -> None:
    """Sleep ``seconds`` unless one of ``events`` is set first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def probe_subject(instance: str) -> str:
    """Core NATS subject on which a worker instance answers whether it runs a job (not in any stream)."""
    return f"_osapi.worker.{instance}.running"


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


async def _quiet(coro) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001
        log.debug("ignored: %s", exc)


def _describe(exc: BaseException) -> str:
    return getattr(exc, "description", None) or str(exc) or type(exc).__name__
