"""The worker: takes jobs from JetStream and runs them through the operations table.

Consumers (CONTRACT §5.3, names in ``setup.py``):

* ``<consumer_name>-any`` — one durable for the whole fleet on ``jobs.*._any``:
  every worker pulls from it, so each ``_any`` job runs on exactly one worker;
* ``<consumer_name>-host-<host>`` — one durable per *host* on ``jobs.*._all``,
  ``jobs.*.host.<host>`` and every prefix of every label; all worker processes
  of a host pull from it, so each job runs once per host. Created with deliver
  policy "new" (a new host does not replay history); a restart finds the
  durable and resumes where the host left off.
* ``<consumer_name>-dlq`` — dead jobs become ``failed`` (``deadletter.py``).

For each job: ``acknowledged`` event, ``started`` event, the provider runs in a
thread pool (providers block), its result goes to KV ``job-responses``, then a
``completed`` or ``failed`` event, then the ack. While a job runs the worker
sends in-progress acks every ``ack_wait/3``, so ``ack_wait`` only catches dead
workers: a job longer than ``ack_wait`` still runs once.

Failures and retries:

* a provider exception → the job fails on this host with the exception's
  message, no retry (deterministic: a missing interface stays missing);
* ``osapi.job.errors.RetryableError`` → negative ack with the
  ``job.consumer.back_off`` delay for that delivery; on the last allowed
  delivery (``max_deliver``) the failure is recorded and the server moves the
  job to the dead-letter stream;
* a worker that dies or hangs → redelivery after ``ack_wait``, up to
  ``max_deliver`` deliveries, then the dead-letter stream;
* NATS trouble while reporting → negative ack with back-off (the job may run
  again: delivery is at least once, the result is written once per host).

``max_jobs`` bounds the jobs a process runs at once: a slot is taken before
pulling, so a busy process leaves jobs to its host's other processes.

SIGTERM: stop pulling, leave the registry, finish running jobs within ``grace``
seconds, exit 0. NATS going away is survived: the connection reconnects by
itself; pulls fail and are retried with a bounded back-off.
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
from osapi.job import deadletter, operations
from osapi.job import status as st
from osapi.job.errors import InvalidJob, RetryableError
from osapi.job.ids import is_job_id
from osapi.job.registry import DEFAULT_INTERVAL, TTL_INTERVALS, Registry
from osapi.job.setup import Names, dlq_consumer_config, ensure_consumer, host_consumer_config
from osapi.job.store import Store
from osapi.job.subjects import parse_target

log = logging.getLogger("osapi.job.worker")

DEFAULT_GRACE = 30.0
POLL = 2.0  # one pull request waits this long for a job (also bounds how fast SIGTERM is noticed)
MAX_PAUSE = 5.0  # longest wait between retries while NATS is away


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
        self.slots: asyncio.Semaphore | None = None
        self.abandoned = 0  # jobs still running when the grace ran out

    @property
    def registry_key(self) -> str:
        return f"{self.hostname}.{self.instance}"

    # ------------------------------------------------------------ lifecycle

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain within the grace period."""
        self.slots = asyncio.Semaphore(self.max_jobs)
        self.nc = await self._connect(stop)
        if self.nc is None:
            return
        try:
            self.store = Store(self.nc, self.cfg)
            self.registry = Registry(self.store)
            if not await self._retry(stop, "set up the job streams", self._setup):
                return
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
            await asyncio.gather(beat, return_exceptions=True)
            await asyncio.wait(loops, timeout=self.poll + 5)
            if self.running:
                _, pending = await asyncio.wait(set(self.running), timeout=self.grace)
                if pending:
                    self.abandoned = len(pending)
                    log.warning("%d job(s) still running after %gs; they will be redelivered", len(pending), self.grace)
                    for task in pending:
                        task.cancel()
            for task in loops:
                task.cancel()
        finally:
            # everything we publish is confirmed (acks are requests), so close rather than drain:
            # draining waits on the pull subscriptions' queues, which nothing reads any more
            try:
                await asyncio.wait_for(self.nc.flush(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            await self.nc.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _connect(self, stop: asyncio.Event):
        from osapi.job.connection import connect
        from osapi.job.errors import NatsUnavailable

        attempt = 0
        while not stop.is_set():
            try:
                return await connect(self.cfg, f"osapi-worker {self.hostname} {os.getpid()}", first_timeout=2.0)
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
        await self.store.setup()
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
        while not self.stopping.is_set():
            await self.slots.acquire()
            handed_off = False
            try:
                if self.stopping.is_set():
                    break  # a slot came free while stopping: do not pull again
                if sub is None:
                    sub = await bind()
                try:
                    msgs = await sub.fetch(1, timeout=self.poll)
                except nats.errors.TimeoutError:
                    failures = 0
                    continue
                failures = 0
                for msg in msgs:
                    if self.stopping.is_set():
                        await msg.nak()  # someone else (or our next start) takes it at once
                        continue
                    task = asyncio.create_task(self._process(msg))
                    self.running.add(task)
                    task.add_done_callback(self._finished)
                    handed_off = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away or consumer gone
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("pulling %s jobs failed: %s; retrying", label, _describe(exc))
                if failures >= 3:
                    # the server may have lost the consumer (a wiped store): create it again
                    sub = await self._rebind(sub)
                await _wait(self.stopping, min(MAX_PAUSE, 0.25 * failures))
            finally:
                if not handed_off:
                    self.slots.release()

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
        self.slots.release()
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
        store, host = self.store, self.hostname
        delivery = msg.metadata.num_delivered or 1
        job_id = (msg.data or b"").decode(errors="replace").strip()
        try:
            job = await store.get_job(job_id) if is_job_id(job_id) else None
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read job %s: %s; retrying later", job_id, _describe(exc))
            await _quiet(msg.nak(delay=self._delay(delivery)))
            return
        if job is None:
            log.info("job %s no longer exists (deleted or expired); skipping", job_id)
            await _quiet(msg.term())
            return
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            if delivery > 1 and await self._already_done(job):
                log.info("job %s already finished on %s; not running it again", job_id, host)
                await msg.ack()
                return
            # the two start events are written while the provider already runs: a synchronous
            # caller waits for the response, so only what it needs stays on its path
            starting = asyncio.ensure_future(self._start_events(job_id, delivery))
            try:
                outcome, data, error = await self._execute(job)
            finally:
                await starting
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
                await msg.ack()  # a lost ack means a redelivery, which _already_done answers
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS trouble while reporting
            log.warning("job %s on %s: cannot report (%s); it will be redelivered", job_id, host, _describe(exc))
            await _quiet(msg.nak(delay=self._delay(delivery)))
        finally:
            keep_alive.cancel()

    async def _start_events(self, job_id: str, delivery: int) -> None:
        """``acknowledged`` then ``started`` (their keys carry the order: nanos taken in this order)."""
        await asyncio.gather(
            self.store.add_event(job_id, st.ACKNOWLEDGED, self.hostname, delivery=delivery, instance=self.instance),
            self.store.add_event(job_id, st.STARTED, self.hostname, delivery=delivery),
        )

    async def _already_done(self, job: dict) -> bool:
        """A redelivered job that already has a final result here (the ack was lost) is not rerun."""
        events = await self.store.events(job["id"])
        if parse_target(job.get("target_hostname")).broadcast:
            last = st.last_per_host(events).get(self.hostname)
            return last is not None and last.event in st.TERMINAL
        return any(e.event in st.TERMINAL for e in events)

    async def _execute(self, job: dict) -> tuple[str, Any, str | None]:
        """Run the provider: ``("ok", data, None)``, ``("failed", None, error)`` or ``("retry", None, error)``."""
        operation = job.get("operation") or {}
        try:
            op = operations.get(operation.get("type"))
            data = op.check(operation.get("data"))
        except operations.InvalidData as exc:
            return "failed", None, f"{exc} (this worker runs osapi {__version__})"
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.pool, op.run, data, self.context)
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
                    msgs = await sub.fetch(1, timeout=self.poll)
                except nats.errors.TimeoutError:
                    continue
                failures = 0
                for msg in msgs:
                    await deadletter.handle(self.store, msg.data)
                    await msg.ack_sync()
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
            try:
                await self.registry.beat(self.registry_key, self._entry(), self.heartbeat * TTL_INTERVALS)
                failures = 0
            except Exception as exc:  # noqa: BLE001
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("heartbeat failed: %s", _describe(exc))
            await _wait(self.stopping, self.heartbeat)
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


async def _quiet(coro) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001
        log.debug("ignored: %s", exc)


def _describe(exc: BaseException) -> str:
    return getattr(exc, "description", None) or str(exc) or type(exc).__name__
