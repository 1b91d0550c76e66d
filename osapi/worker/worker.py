"""``Worker``: one worker process's jobs (the package's text names the seams it puts together).

``serve`` connects (retried: ``osapi.retry``), sets up the streams and this
host's consumer, starts the pull loops, the dead-letter loop and the heartbeat,
and at stop hands back what it cannot finish within the grace period.
``exit_code`` is 1 when NATS closed the connection for good (the supervisor
restarts the worker).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from osapi.config import is_hostname
from osapi.errors import ConfigError
from osapi.domain import operations
from osapi.job.registry import DEFAULT_INTERVAL, Registry
from osapi.job.setup import Names, ensure_consumer, host_consumer_config
from osapi.job.store import Store
from osapi.retry import Backoff, GaveUp, retry, sampled
from osapi.worker.common import MAX_PAUSE, describe as _describe, log, now as _now, quiet as _quiet
from osapi.worker.consumer import Consumer, Slots, leader_elected_subject
from osapi.worker.deadletter import DeadLetters
from osapi.worker.execution import Execution
from osapi.worker.heartbeat import Heartbeat
from osapi.worker.redelivery import Redelivery, probe_subject

DEFAULT_GRACE = 30.0
POLL = 10.0  # one pull request waits this long for a job; a stop does not wait for it (_fetch). Longer: fewer
# idle pull requests (1,000 hosts at 2 s cost the cluster ~1,500 requests/s doing nothing: bench/results.md, "Fleet")


class Worker(Consumer, Execution, Redelivery, DeadLetters, Heartbeat):
    """One worker process's jobs: the seams above, on one NATS connection."""

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
        # enrolled with its own NATS credentials (osapi.fleet): nats-server lets it take, read and
        # answer jobs only; it creates no stream or consumer and runs no dead-letter loop
        self.fleet_host = bool(cfg.nats.user)

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
            if not self.fleet_host:  # a fleet host's credentials allow no JetStream advisories: it re-pulls on reconnect
                await self.nc.subscribe(leader_elected_subject(self.names.stream), cb=self._leader_elected)
            loops = [
                asyncio.create_task(self._pull_loop("_any", self._bind_any)),
                asyncio.create_task(self._pull_loop("host", self._bind_host)),
            ]
            if not self.fleet_host:  # dead letters are written under other hosts' names: the control plane's job
                loops.append(asyncio.create_task(self._dlq_loop()))
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
        from osapi.domain.errors import NatsUnavailable

        async def closed() -> None:
            if not stop.is_set():
                log.error("NATS closed the connection for good; exiting with status 1 so that the "
                          "supervisor starts this worker again")
                self.exit_code = 1
                stop.set()

        async def reconnected() -> None:
            self._reconnected_at = time.monotonic()
            self.repull()  # a pull the old server held is lost: send it again now, not when it expires
            if self._beat_now is not None:
                self._beat_now.set()  # be in the registry again at once: see _redelivered

        try:
            return await retry(
                lambda: connect(self.cfg, f"osapi-worker {self.hostname} {os.getpid()}", first_timeout=2.0,
                                on_closed=closed, on_reconnected=reconnected),
                Backoff.linear(0.5, MAX_PAUSE), on=NatsUnavailable, stop=stop,
                notify=lambda attempt, exc, _: sampled(attempt, 12) and log.warning("%s; retrying", exc))
        except GaveUp:
            return None

    async def _retry(self, stop: asyncio.Event, what: str, fn) -> bool:
        def failed(attempt: int, exc: BaseException, _pause: float) -> None:  # NATS away: wait and try again
            if sampled(attempt, 12):
                log.warning("cannot %s: %s; retrying", what, _describe(exc))

        try:
            await retry(fn, Backoff.linear(0.5, MAX_PAUSE), stop=stop, notify=failed)
        except GaveUp:
            return False
        return True

    async def _setup(self) -> None:
        if self.fleet_host:  # fleet credentials: the control plane made the streams and this host's consumer
            return
        await self.store.setup(update_consumers=True)
        await ensure_consumer(self.store.js, self.names.stream, host_consumer_config(self.cfg, self.hostname, self.labels))
