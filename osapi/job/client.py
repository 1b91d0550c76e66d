"""The job client: submit, inspect, list, delete, wait (docs/jobs.md).

Used by the REST API on its one long-lived connection (all methods are
coroutines on that connection's event loop). A job comes in as a ``JobRequest``,
validated once where it entered (the API's handlers, or ``JobClient.prepare`` for
plain values) before anything is stored; NATS failures become ``NatsUnavailable``.

* ``create`` (``POST /jobs``) and ``run`` (the synchronous endpoints) store a job
  through ``_submit``: body and ``submitted`` event together, then the
  notification. A failed or abandoned submission is marked ``failed`` under
  ``status.SUBMISSION_HOST`` by ``_abandon`` (docs/jobs.md, Failed submissions).
* ``run`` waits for the hosts' answers and decides when a broadcast is complete,
  when no live worker matches (``NoLiveWorker``) and when to give up
  (``JobTimeout``); an expected host that did not answer gets ``no_response``; jobs it stores expire (docs/jobs.md, Synchronous calls and
  completion of broadcasts; Expiry of synchronous jobs).
* ``list`` and ``stats`` read pages from subject listings and every job's status
  from ``statusindex.StatusIndex`` (docs/jobs.md, Storage layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Iterable, NamedTuple

from osapi.domain import operations
from osapi.job import rollout as rollouts
from osapi.job import status as st
from osapi.domain.errors import (
    InvalidJob, JobError, JobNotFound, JobStoreFull, JobTimeout, NatsUnavailable, NoLiveWorker, NothingToRetry,
    is_store_full,
)
from osapi.job.idempotency import Keys
from osapi.domain.ids import is_job_id, new_job_id
from osapi.job.registry import Registry
from osapi.retry import Backoff, GaveUp, retry, sampled
from osapi.job.statusindex import StatusIndex
from osapi.job.store import Store, _gather_bounded
from osapi.domain.subjects import Target, host_target, parse_target, subject_for

log = logging.getLogger("osapi.job.client")

MAX_LIMIT = 1000
RETRYABLE = (st.FAILED, st.NO_RESPONSE, st.SKIPPED)  # the host states a retry may name
RECONNECT_CHECK = 2.0  # while waiting: how often to look whether the connection was re-established
ABANDON_PAUSE = (0.5, 30.0)  # a failed submission's cleanup: first and longest pause between attempts


class JobRequest(NamedTuple):
    """A validated job, what ``create``, ``create_once`` and ``run`` take: nothing is parsed again inward.

    ``data`` is in its stored form (``dry_run: true`` inside for a dry run).
    ``JobClient.prepare`` makes one from plain values; an edge that validated
    the parts itself (the REST API's handlers) puts them together with ``of``.
    """

    op: operations.Operation
    data: dict
    target: Target

    @classmethod
    def of(cls, op: operations.Operation, data: dict, target: Target, dry_run: bool = False) -> "JobRequest":
        """From parts already validated: ``op.check``-ed data, a parsed target, a dry run the operation has."""
        return cls(op, operations.with_dry_run(data, dry_run), target)


class JobClient:
    SYNC_EXPIRY_MARGIN = 30.0  # a synchronous job expires this long after its caller's timeout
    # observer.run_done(op_type, seconds or None, no_response_hosts) after each run() that stored its job
    observer = None
    rollout_driver = None  # the API's rollout.RolloutDriver, woken when a rollout is submitted

    def __init__(self, nc, cfg):
        self.nc = nc
        self.cfg = cfg
        self.store = Store(nc, cfg)
        self.registry = Registry(self.store)
        self.index = StatusIndex(self.store)
        self._cleanups: set[asyncio.Task] = set()  # failed submissions being marked (``_abandon``)
        self.idempotency = Keys(self.store)
        operations.warn_if_test_operations(log)

    # ------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _nats(self, what: str):
        """Turn NATS trouble into ``NatsUnavailable`` naming the server."""
        import nats.errors

        from osapi.job.connection import describe

        if self.nc.is_closed or not self.nc.is_connected:
            raise NatsUnavailable(f"cannot {what}: not connected to NATS at {describe(self.cfg)} (reconnecting)")
        try:
            yield
        except JobError:
            raise
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            detail = getattr(exc, "description", None) or str(exc) or type(exc).__name__
            if is_store_full(exc):
                raise JobStoreFull(
                    f"cannot {what}: {detail} (a KV bucket reached "
                    f"job.kv.max_bytes = {self.cfg.job.kv.max_bytes} bytes)",
                    "delete old jobs, wait for job.kv.ttl to expire them, or raise job.kv.max_bytes",
                ) from exc
            raise NatsUnavailable(f"cannot {what}: NATS at {describe(self.cfg)}: {detail}") from exc

    async def setup(self) -> None:
        """Streams, KV buckets, DLQ and the shared consumers (idempotent).

        An existing consumer is left as it is: the workers own their settings (``setup.py``).
        """
        async with self._nats("set up the job streams"):
            await self.store.setup(update_consumers=False)

    @staticmethod
    def prepare(operation: Any, target: Any = "_any", dry_run: bool = False) -> JobRequest:
        """The one parse of a job given as plain values: a ``JobRequest``, or ``InvalidJob`` naming the bad field.

        For a caller holding JSON-like values (a stored job being retried, tests, bench);
        the REST API validates at its own edge and builds ``JobRequest.of`` instead.
        The data comes back in its stored form: with ``dry_run: true`` for a dry run
        (``dry_run``, or an ``operation.data`` of a stored dry-run job), see
        ``operations.split_dry_run``; a query with a dry run is ``InvalidJob``.
        """
        if not isinstance(operation, dict):
            raise InvalidJob(f"operation must be an object with type and data, got {type(operation).__name__}")
        unknown = sorted(set(operation) - {"type", "data"})
        if unknown:
            raise InvalidJob(f"operation has unknown field {', '.join(unknown)}; allowed: type, data")
        if "type" not in operation:
            raise InvalidJob("operation.type is required")
        try:
            op = operations.get(operation["type"])
        except operations.InvalidData as exc:
            raise InvalidJob(f"operation.type: {exc}") from None
        try:
            data, stored_dry_run = operations.split_dry_run(op, operation.get("data"))
            data = op.check(data)
        except operations.InvalidData as exc:
            raise InvalidJob(f"operation.data: {exc}") from None
        if dry_run:
            try:
                operations.check_dry_run(op)
            except operations.InvalidData as exc:
                raise InvalidJob(f"dry_run: {exc}") from None
        return JobRequest.of(op, data, parse_target(target), dry_run or stored_dry_run)

    async def _submit_shielded(self, job_id: str, op: operations.Operation, data: dict, target: Target,
                               expected: set[str] | None = None, expires_after: float | None = None,
                               answer: str = "503", retry_of: str | None = None,
                               rollout: dict | None = None) -> dict:
        """``_submit`` run to its end even if the caller is cancelled (the API gave up on the request).

        A submission cancelled half-way would leave a job stored but never
        published. Shielded, it goes on; it learns that its caller is gone
        (``answer``: what the API answered then) and abandons the job.
        """
        gone = asyncio.Event()
        task = asyncio.ensure_future(self._submit(job_id, op, data, target, expected, expires_after, gone, answer,
                                                  retry_of, rollout))
        task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            gone.set()
            raise

    async def _submit(self, job_id: str, op: operations.Operation, data: dict, target: Target,
                      expected: set[str] | None = None, expires_after: float | None = None,
                      gone: asyncio.Event | None = None, answer: str = "503", retry_of: str | None = None,
                      rollout: dict | None = None) -> dict:
        """Store the job and its ``submitted`` event, then publish it; on failure ``_abandon`` it.

        A broadcast keeps the hosts the registry lists for its target
        (``expected_hosts``): its status stays ``processing`` until each of them
        has answered (or is silent past the bound of ``status.py``), even when a
        fast host answers before a slow one picked it up.

        A retry (``retry_of``) is sent to exactly the hosts in ``expected``: it
        is a broadcast whose expected hosts are those, keeps the original
        target as ``target_hostname`` (what was asked) and is announced once per
        host on that host's subject (``jobs.<kind>.host.<h>``), which only that
        host's consumer receives.

        A rollout (``rollout``, checked by ``rollout.check``) stores its plan
        (``rollout.plan``: the expected hosts in batches) with the job and is
        not announced here: its entry in the rollouts bucket hands it to the
        drivers (``osapi/job/rollout.py``), which announce batch after batch.
        Its hosts are judged silent per batch by the driver, not by ``answer_by_ns``.
        """
        if target.broadcast and expected is None:
            expected = await self._expected_hosts(target)
        nanos = time.time_ns()
        job = {
            "id": job_id,
            "created": st.rfc3339(nanos),
            "created_ns": nanos,
            "target_hostname": target.text,
            "broadcast": target.broadcast or retry_of is not None,
            "operation": {"type": op.type, "data": data},
            "kind": op.kind,
            "subject": subject_for(op.kind, target, self.store.names.prefix),
        }
        subjects = [job["subject"]]
        if retry_of is not None:
            job["retry_of"] = retry_of
            subjects = [subject_for(op.kind, host_target(h), self.store.names.prefix) for h in sorted(expected or ())]
            job["subject"] = subjects[0]
            job["subjects"] = subjects
        if rollout is not None:
            job["rollout"] = rollouts.plan(rollout, sorted(expected or ()))
            subjects = []
        if job["broadcast"]:
            job["expected_hosts"] = sorted(expected or ())
            # an expected host silent this long is no_response: the bound travels with the job (status.py)
            if rollout is None:
                job["answer_by_ns"] = nanos + int(float(self.cfg.api.server.job_timeout) * 1e9)
        if expires_after is not None:
            expires = nanos + int(expires_after * 1e9)
            job["expires_at"], job["expires_at_ns"] = st.rfc3339(expires), expires
        try:
            # the job and its first event do not order each other: sent together, both acks awaited;
            # the notification only once both are stored (a worker reads the job when woken)
            revision, _ = await _all(self.store.put_job(job),
                                     self.store.add_event(job_id, st.SUBMITTED, st.target_token(target.text)))
            if gone is not None and gone.is_set():
                raise _CallerGone()
            await _all(*(self.store.publish_job(s, job_id, len(subjects) > 1) for s in subjects))
            if rollout is not None:
                await rollouts.start(self.store, job_id)
                if self.rollout_driver is not None:
                    self.rollout_driver.wake()
            if gone is not None and gone.is_set():
                raise _CallerGone()
        except BaseException as exc:
            if isinstance(exc, (_CallerGone, asyncio.CancelledError)):
                reason = f"submission failed: the caller stopped waiting and was answered {answer}"
            else:
                from osapi.job.connection import describe

                detail = getattr(exc, "description", None) or str(exc) or type(exc).__name__
                reason = f"submission failed: NATS at {describe(self.cfg)}: {detail}; the caller was answered 503"
            self._abandon(job_id, reason)
            raise
        return {"job_id": job_id, "status": st.SUBMITTED, "revision": revision, "timestamp": job["created"]}

    def _abandon(self, job_id: str, reason: str) -> None:
        """A failed submission: make sure, in the background, that its job never runs (see the module docstring)."""
        log.warning("job %s: %s; marking it failed so that no worker runs it", job_id, reason)
        task = asyncio.ensure_future(self._mark_abandoned(job_id, reason))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def settle(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for the failed submissions being marked (``_abandon``)."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=timeout)
        await self.idempotency.settle(timeout)

    async def _mark_abandoned(self, job_id: str, reason: str) -> None:
        """Retry ``_abandon_once`` with a growing pause until it succeeds, for at most ``job.kv.ttl``."""
        def why(exc: BaseException) -> str:
            return getattr(exc, "description", None) or str(exc) or type(exc).__name__

        def notify(attempt: int, exc: BaseException, _pause: float) -> None:
            if sampled(attempt, 10):
                log.warning("job %s: cannot mark the failed submission yet (%s); retrying", job_id, why(exc))

        attempts = 0

        async def once() -> str:
            nonlocal attempts
            attempts += 1
            return await self._abandon_once(job_id, reason)

        try:  # any error: NATS still away, try again
            outcome = await retry(once, Backoff(*ABANDON_PAUSE), notify=notify,
                                  within=max(60.0, float(self.cfg.job.kv.ttl or 0)))
        except GaveUp as exc:
            log.error("job %s: cannot mark the failed submission (%s) after %d attempts; giving up "
                      "(it expires with job.kv.ttl)", job_id, why(exc.last), exc.attempts)
            return
        log.info("job %s: failed submission %s", job_id, outcome,
                 extra={"fields": {"attempts": attempts}})

    async def _abandon_once(self, job_id: str, reason: str) -> str:
        """Record the ``failed`` event (after whatever part of the submission landed), or remove the job.

        The event goes to the job bucket's stream after the job body and its
        ``submitted`` event sent earlier on this connection: once it is stored,
        a missing body will not land any more, and the marker is removed with it.
        """
        store = self.store
        record = {"status": "failed", "data": None, "error": reason, "hostname": st.SUBMISSION_HOST,
                  "finished": st.rfc3339(time.time_ns()), "reason": "submission"}
        try:
            await store.put_response(job_id, st.SUBMISSION_HOST, record)
            await store.add_event(job_id, st.FAILED, st.SUBMISSION_HOST, error=reason, reason="submission")
        except Exception as exc:
            if not is_store_full(exc):
                raise
            await store.purge_job(job_id)  # no room for the marker: nothing of the job may stay
            return "removed (the job store is full: no failed event fits)"
        store.forget(job_id)
        if await store.get_job(job_id) is None:
            await store.purge_job(job_id)
            return "removed (its body was never stored)"
        return "marked failed"

    # ------------------------------------------------------------ the interface

    async def create(self, job: JobRequest, rollout: dict | None = None) -> dict:
        """Store and publish a job: ``{job_id, status: "submitted", revision, timestamp}``.

        ``job``: see ``JobRequest`` (a dry run is in its data). ``rollout``: ``check_rollout``'s
        answer for a multi-host target: sent batch by batch (``osapi/job/rollout.py``).
        """
        async with self._nats("submit the job"):
            return await self._submit_shielded(new_job_id(), job.op, job.data, job.target, rollout=rollout)

    @staticmethod
    def check_rollout(rollout: Any, target: Target) -> dict | None:
        """The one check of a ``rollout`` (``{batch, max_failures?, pause?}``, ``rollout.check``): the
        checked object, or None for none; ``InvalidJob`` for a one-host target."""
        if rollout is None:
            return None
        checked = rollouts.check(rollout)
        if not target.broadcast:
            raise InvalidJob(f"rollout needs a multi-host target (_all or a label key:value), got {target.text!r}")
        return checked

    async def create_once(self, job: JobRequest, key_slot: str, request_hash: str,
                          rollout: dict | None = None) -> tuple[dict, bool]:
        """``create`` under an idempotency key (``idempotency.py``): ``(answer, replayed)``.

        ``key_slot``: ``idempotency.slot()`` of the key; ``request_hash``: ``idempotency.body_hash()``
        of the validated request. The first request with the key submits its job; a later one
        with the same request gets the first answer back (``replayed``) and stores nothing.
        """
        job_id = new_job_id()

        async def submit() -> dict:
            return await self._submit_shielded(job_id, job.op, job.data, job.target, rollout=rollout)

        async with self._nats("submit the job"):
            return await self.idempotency.once(key_slot, request_hash, job_id, submit, self._submitted)

    async def _submitted(self, job_id: str) -> dict | None:
        """The ``create`` answer for a stored job whose submission did not fail, else None."""
        import nats.js.errors as jse

        from osapi.job.idempotency import answer_of

        if not is_job_id(job_id):
            return None
        try:
            entry = await self.store.kv("jobs").get(f"jobs.{job_id}")
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            return None
        try:
            job = json.loads(entry.value or b"")
        except ValueError:
            return None
        if not isinstance(job, dict) or job.get("id") != job_id:
            return None
        if await self.store.responses(job_id, [st.SUBMISSION_HOST]):
            return None  # its submission failed: the job never runs
        return answer_of(job, entry.revision)

    async def retry(self, job_id: str, states: Iterable[str] = RETRYABLE) -> dict:
        """A new job with the same operation and data for exactly the hosts of ``job_id`` in
        ``states`` (some of ``RETRYABLE``, checked by the caller): ``{job_id, retry_of, hosts}``.

        ``JobNotFound`` for an unknown job, ``NothingToRetry`` when no host is in those states.
        The stored job is parsed once here (``prepare``): it is this call's input.
        """
        self._check_id(job_id)
        states = set(states)
        async with self._nats("retry the job"):
            self.store.forget(job_id)  # another process may have deleted it
            view = await self.store.view(job_id)
            if view is None:
                raise JobNotFound(f"no job {job_id}: never submitted, deleted, or expired (job.kv.ttl)")
            hosts = sorted(h for h, s in view["hosts"].items() if s.get("state") in states)
            if not hosts:
                found = ", ".join(f"{h}: {s.get('state')}" for h, s in view["hosts"].items()) or "none"
                raise NothingToRetry(f"no host of job {job_id} is {' or '.join(sorted(states))} (hosts: {found})")
            job = self.prepare(view["operation"], view["target_hostname"])
            new_id = new_job_id()
            await self._submit_shielded(new_id, job.op, job.data, job.target, set(hosts), retry_of=job_id)
        return {"job_id": new_id, "retry_of": job_id, "hosts": hosts}

    @staticmethod
    def _check_id(job_id: Any) -> str:
        if not is_job_id(job_id):
            raise JobNotFound(f"{job_id!r} is not a job id (a lower-case UUID)")
        return job_id

    async def get(self, job_id: str) -> dict:
        self._check_id(job_id)
        async with self._nats("read the job"):
            self.store.forget(job_id)  # another process may have deleted it
            view = await self.store.view(job_id)
        if view is None:
            raise JobNotFound(f"no job {job_id}: never submitted, deleted, or expired (job.kv.ttl)")
        return view

    async def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        """``{total_items, items}``, newest first."""
        if status is not None and status not in st.STATUSES:
            raise InvalidJob(f"status must be one of {', '.join(st.STATUSES)}, got {status!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidJob(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidJob(f"offset must be an integer of 0 or more, got {offset!r}")
        async with self._nats("list jobs"):
            if status is None:
                ids, total = await self.store.newest_job_ids(offset, limit)
            else:
                all_ids, _, statuses = await self.index.snapshot()
                matching = [i for i in reversed(all_ids) if statuses[i] == status]
                ids, total = matching[offset:offset + limit], len(matching)
            views = await self.store.views(ids)
        return {"total_items": total, "items": [views[i] for i in ids if i in views]}

    async def delete(self, job_id: str) -> None:
        self._check_id(job_id)
        async with self._nats("delete the job"):
            self.store.forget(job_id)
            if await self.store.get_job(job_id) is None:
                raise JobNotFound(f"no job {job_id}: never submitted, deleted, or expired (job.kv.ttl)")
            await self.store.purge_job(job_id)

    async def stats(self) -> dict:
        """``{total_jobs, status_counts, operation_counts, dlq_count}``."""
        import nats.js.errors as jse

        async def dlq_count() -> int:
            try:
                info = await self.store.js.stream_info(self.store.names.dlq_stream)
                return int(info.state.messages)
            except jse.NotFoundError:
                return 0

        async with self._nats("read queue statistics"):
            (ids, jobs, statuses), dlq = await asyncio.gather(self.index.snapshot(), dlq_count())
        status_counts = {s: 0 for s in st.STATUSES}
        operation_counts: dict[str, int] = {}
        for job_id in ids:
            summary = jobs.get(job_id)
            status_counts[statuses[job_id]] += 1
            if summary is not None and summary.op_type:
                operation_counts[summary.op_type] = operation_counts.get(summary.op_type, 0) + 1
        return {
            "total_jobs": len(ids),
            "status_counts": status_counts,
            "operation_counts": dict(sorted(operation_counts.items())),
            "dlq_count": dlq,
        }

    async def watch(self, job_id: str, after: int, emit):
        """Follow a job's events after stream sequence ``after``: a started ``watch.JobWatch``.

        ``emit`` gets each event, then the end (see ``osapi/job/watch.py``); ``JobNotFound``
        when there is no such job. Stop it with ``await watch.stop()``.
        """
        from osapi.job.watch import JobWatch

        self._check_id(job_id)
        async with self._nats("follow the job's events"):
            self.store.forget(job_id)  # deleted meanwhile (here or by another process): not from the cache
            return await JobWatch(self, job_id, after, emit).start()

    async def store_full(self) -> str | None:
        """Why the job store is full (``Store.full``), or None: for ``/health/status``."""
        async with self._nats("read the job store's size"):
            return await self.store.full()

    async def workers(self) -> dict:
        async with self._nats("read the worker registry"):
            return await self.registry.workers()

    async def run(self, job: JobRequest, timeout: float, quiet_period: float,
                  expires_after: float | None = None) -> dict:
        """Submit and wait: ``{job_id, results: [...]}``; ``JobTimeout`` if nobody answered.

        ``job``: see ``JobRequest``. ``expires_after``: seconds after which a worker that has
        not picked the job up yet fails it instead of running it (docs/jobs.md, Expiry of
        synchronous jobs).
        """
        op, data, parsed = job
        job_id = new_job_id()
        async with self._nats("run the job"):
            prefix = self.store.subject_of("responses", f"{job_id}.")
            sub = await self.nc.subscribe(f"{prefix}>")
            try:
                # A broadcast stores the hosts it expects, so it reads the registry first; a
                # one-host job needs it only to fail fast when nobody matches, so it reads it
                # only when no answer came within the quiet period (off the hot path).
                expected = await self._expected_hosts(parsed) if parsed.broadcast else set()
                submitted = time.monotonic()
                await self._submit_shielded(job_id, op, data, parsed, expected, expires_after, answer="504")
                answers, unanswered, live = await self._collect(
                    sub, prefix, job_id, parsed, expected, bool(expected) if parsed.broadcast else None,
                    timeout, quiet_period)
                if self.observer is not None:
                    self.observer.run_done(op.type, time.monotonic() - submitted if answers else None,
                                           len(unanswered) if parsed.broadcast else 0)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if not answers:
            # the messages are the API's 404/504 details: the category ("no live worker matches
            # target" / "no worker answered in time") is not repeated
            if not live:
                raise NoLiveWorker(
                    f"{parsed.text!r} names no registered worker host or label; job {job_id} stays queued "
                    f"for a host that may come (waited {min(timeout, quiet_period):g}s for an unregistered one)",
                    job_id,
                    "see `osapi client job workers list` for the live workers, their hostnames and labels",
                )
            raise JobTimeout(
                f"job {job_id} (target {parsed.text}) waited {timeout:g}s",
                job_id,
                "is a worker running for that target? see `osapi client job workers list`",
            )
        if unanswered:
            answers.update(await self._mark_unanswered(job_id, unanswered))
        return {"job_id": job_id, "results": [_result(h, r) for h, r in sorted(answers.items())]}

    # ------------------------------------------------------------ waiting

    async def _expected_hosts(self, target: Target) -> set[str]:
        entries = await self.registry.entries()
        return {e["hostname"] for e in entries if target.matches(e["hostname"], e.get("labels"))}

    async def _any_live(self, target: Target) -> bool:
        """Whether the registry lists a live worker for ``target``; True when it cannot tell (wait on)."""
        import nats.errors

        try:
            return bool(await self._expected_hosts(target))
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot read the worker registry: %s", exc)
            return True

    async def _catch_up(self, job_id: str) -> dict[str, dict]:
        """Responses already stored (best effort: NATS may be away right now)."""
        import nats.errors

        try:
            return await self.store.responses(job_id)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot read the responses of %s: %s", job_id, exc)
            return {}

    async def _collect(self, sub, prefix: str, job_id: str, target: Target, expected: set[str],
                       matched: bool | None, timeout: float,
                       quiet_period: float) -> tuple[dict[str, dict], dict[str, str], bool]:
        """Answers as they arrive on ``sub``, until the target is satisfied or the fallbacks end it.

        Returns the answers, for each expected host that did not answer why,
        and whether the registry listed a live worker for the target.
        ``matched``: the registry listed one; if not, the first answer must come
        within ``quiet_period``; None: not looked up yet -- it is, when no
        answer came within ``quiet_period``.
        """
        import nats.errors

        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        first_by = None if matched else started + min(timeout, quiet_period)
        reconnects = self.nc.stats.get("reconnects", 0)
        answers: dict[str, dict] = {}
        awaited = set(expected)  # expected hosts still waited for
        dropped: dict[str, str] = {}
        quiet_until: float | None = None

        def done() -> bool:
            if not answers:
                return False
            return not target.broadcast or (bool(awaited) and awaited <= answers.keys())

        while not done():
            now = loop.time()
            end = deadline if answers or first_by is None else first_by
            if now >= end and matched is None and not answers:
                matched = await self._any_live(target)
                if matched:
                    first_by = None  # a live worker matches: wait for it up to the timeout
                    continue
            if now >= end:
                answers.update(await self._catch_up(job_id))  # last look: answers missed in transit
                break
            wait = min(end - now, RECONNECT_CHECK)
            if quiet_until is not None:
                wait = min(wait, max(0.0, quiet_until - now))
            try:
                msg = await sub.next_msg(timeout=max(wait, 0.001))
            except nats.errors.TimeoutError:
                if self.nc.stats.get("reconnects", 0) != reconnects:
                    # messages published while we were reconnecting never reach a core subscription
                    reconnects = self.nc.stats.get("reconnects", 0)
                    answers.update(await self._catch_up(job_id))
                if quiet_until is not None and loop.time() >= quiet_until:
                    if not awaited:
                        break  # the registry named nobody: the quiet period decides
                    try:
                        live = await self._expected_hosts(target)
                    except (nats.errors.Error, OSError, asyncio.TimeoutError):
                        live = awaited  # cannot tell now: keep waiting for them, up to the timeout
                    for host in awaited - live - answers.keys():  # a host that went silent is not awaited
                        dropped[host] = (f"no answer: {host} left the worker registry before answering "
                                         "(stopped, or silent past its heartbeat)")
                    awaited &= live
                    if not awaited:
                        break
                    quiet_until = loop.time() + quiet_period
                continue
            try:
                record = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(record, dict):
                answers[msg.subject[len(prefix):]] = record
                if target.broadcast:
                    quiet_until = loop.time() + quiet_period
        unanswered = {h: dropped.get(h, f"no answer within {timeout:g}s") for h in sorted(expected)
                      if h not in answers}
        return answers, unanswered, matched is not False

    async def _mark_unanswered(self, job_id: str, unanswered: dict[str, str]) -> dict[str, dict]:
        """A ``no_response`` response and event for each expected host that did not answer (best effort).

        The response is only created if the host has none: one that answered
        at the last moment keeps its answer, and that answer is returned.
        """
        import nats.errors

        store = self.store
        finished = st.rfc3339(time.time_ns())

        def record(host: str) -> dict:
            return {"status": st.NO_RESPONSE, "data": None, "error": unanswered[host], "hostname": host,
                    "finished": finished, "reason": "no-answer"}

        async def mark(host: str) -> dict:
            if not await store.create_response(job_id, host, record(host)):
                return await store.response(job_id, host) or record(host)
            await store.add_event(job_id, st.NO_RESPONSE, host, error=unanswered[host], reason="no-answer")
            return record(host)

        try:
            store.forget(job_id)
            if await store.get_job(job_id) is None:  # deleted while we waited: write nothing back
                return {h: record(h) for h in unanswered}
            marked = await _gather_bounded([mark(h) for h in unanswered])
            return dict(zip(unanswered, marked))
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot record the hosts that did not answer job %s: %s", job_id, exc)
            return {h: record(h) for h in unanswered}


class _CallerGone(Exception):
    """The caller of a submission stopped waiting (the API answered 503/504) before it was published."""


async def _all(*coros) -> list:
    """Run ``coros`` together (their requests pipelined) and wait for every one; then raise the first error."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("shielded job submission failed: %s", task.exception())


def _result(hostname: str, record: dict) -> dict:
    if record.get("status") == "ok":
        data = record.get("data")
        return {"hostname": hostname, **(data if isinstance(data, dict) else {"result": data})}
    if record.get("status") == st.NO_RESPONSE:
        return {"hostname": hostname, "status": st.NO_RESPONSE, "error": record.get("error") or "no answer"}
    return {"hostname": hostname, "status": "failed", "error": record.get("error") or "failed"}
