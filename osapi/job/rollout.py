"""Rollouts: a broadcast job sent batch by batch (README.md "Rollouts", docs/jobs.md "Rollouts").

``POST /jobs`` with ``rollout: {batch, max_failures, pause}`` on a multi-host
target (``_all``, a label) stores the job with its plan (``plan``): the hosts the
worker registry lists for the target at submission, in hostname order, split
into batches. Nothing is published then; the control plane sends the batches:

* KV ``<job.kv_bucket>-rollouts`` holds one entry per rollout being driven
  (``{job_id, batch, sent_ns, published, owner, lease_until_ns}``; ``batch`` is
  the number of batches sent so far).
* Every API process runs a ``RolloutDriver`` on its NATS loop. Each
  ``SCAN_EVERY`` seconds it looks at every entry; one whose lease is its own or
  has expired it takes (a KV update at the entry's revision: compare-and-set,
  so one process at a time drives a rollout) for ``LEASE`` seconds. A process
  killed with -9 stops renewing: another (or the restarted) one takes over
  within ``LEASE + SCAN_EVERY`` seconds.
* A step: a host of the current batch with no final event ``api.server.job_timeout``
  after the batch was sent gets ``no_response``; once every host of the batch
  has a final outcome and ``pause`` has passed, either failed + no_response
  hosts exceed ``max_failures`` -- every remaining host gets ``skipped`` and the
  rollout ends -- or the next batch is recorded as sent (compare-and-set) and
  then announced on each host's own subject (``jobs.<kind>.host.<h>``).
* Exactly once per host: the record comes before the announcement, and the
  entry says when the announcement was acknowledged (``published``). A process
  that takes over a batch not marked published announces it again with the same
  ``Nats-Msg-Id`` (``<job>:<subject>``): JetStream's duplicate window drops the
  copy of a message that did land, and only a host with no event at all is
  announced again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from typing import Any

from osapi.job import status as st
from osapi.domain.errors import InvalidJob
from osapi.domain.subjects import host_target, subject_for

log = logging.getLogger("osapi.job.rollout")


def dumps(data: Any) -> bytes:  # as store.dumps; this module stays free of nats for the CLI's flag checks
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

FIELDS = ("batch", "max_failures", "pause")
LEASE = 5.0  # seconds a driver holds a rollout without renewing it
SCAN_EVERY = 1.0  # seconds between two looks at the active rollouts
MAX_COUNT = 1_000_000
BATCH_PERCENT = r"^(100|[1-9][0-9]?)%$"
FAILURES_PERCENT = r"^(100|[1-9]?[0-9])%$"
PAUSE_PATTERN = r"^(0|([0-9]{1,6}(\.[0-9]{1,3})?(ms|s|m|h|d)){1,4})$"


def _count(field: str, value: Any, minimum: int, percent: str) -> int | str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a whole number may be written 3.0, as everywhere in the API
    if isinstance(value, int) and not isinstance(value, bool):
        if not minimum <= value <= MAX_COUNT:
            raise InvalidJob(f"rollout.{field} must be an integer from {minimum} to {MAX_COUNT} or a percentage "
                             f"such as \"25%\", got {value!r}")
        return value
    if isinstance(value, str) and re.fullmatch(percent, value):
        return value
    lowest = "1%" if minimum else "0%"
    raise InvalidJob(f"rollout.{field} must be an integer >= {minimum} or a percentage from {lowest} to 100% "
                     f"(such as \"25%\"), got {value!r}"[:300])


def pause_seconds(value: Any) -> float:
    """``"30s"`` → 30.0; ``"0s"``/``"0"`` → 0.0. ``InvalidJob`` for anything else."""
    from osapi.config import parse_duration

    if isinstance(value, str) and re.fullmatch(PAUSE_PATTERN, value):
        if re.fullmatch(r"0|(0+(\.0+)?(ms|s|m|h|d))+", value):
            return 0.0
        return parse_duration(value)
    raise InvalidJob(f"rollout.pause must be a duration such as 0s, 30s, 5m or 1h30m, got {value!r}"[:300])


def check(rollout: Any) -> dict:
    """The validated ``rollout`` object with its defaults: ``{batch, max_failures, pause}``."""
    if not isinstance(rollout, dict):
        raise InvalidJob(f"rollout must be an object {{batch, max_failures, pause}}, got {type(rollout).__name__}")
    unknown = sorted(set(rollout) - set(FIELDS))
    if unknown:
        raise InvalidJob(f"rollout has unknown field {', '.join(unknown)[:200]}; allowed: {', '.join(FIELDS)}")
    if "batch" not in rollout:
        raise InvalidJob('rollout.batch is required: an integer >= 1 or a percentage such as "25%"')
    pause = rollout.get("pause", "0s")
    pause_seconds(pause)
    return {"batch": _count("batch", rollout["batch"], 1, BATCH_PERCENT),
            "max_failures": _count("max_failures", rollout.get("max_failures", 0), 0, FAILURES_PERCENT),
            "pause": pause}


def _of(value: int | str, total: int, batch: bool) -> int:
    """A count, or a percentage of ``total``: a batch rounded up (at least 1), failures rounded down."""
    if isinstance(value, int):
        return value
    share = total * int(value[:-1]) / 100
    return max(1, math.ceil(share)) if batch else math.floor(share)


def plan(rollout: dict, hosts: list[str]) -> dict:
    """What the job body stores: the request, the batches (hostname order) and the bounds in numbers."""
    hosts = sorted(hosts)
    size = _of(rollout["batch"], len(hosts), True)
    return {**rollout,
            "pause_s": pause_seconds(rollout["pause"]),
            "max_failed_hosts": _of(rollout["max_failures"], len(hosts), False),
            "batches": [hosts[i:i + size] for i in range(0, len(hosts), size)]}


async def start(store, job_id: str) -> None:
    """Hand a stored rollout job to the drivers: its entry, no batch sent yet."""
    await store.kv("rollouts").create(job_id, dumps({"job_id": job_id, "batch": 0, "sent_ns": None,
                                                     "published": True, "owner": None, "lease_until_ns": 0}))


class RolloutDriver:
    """Drives the rollouts of the KV bucket from one API process (see the module docstring)."""

    def __init__(self, store, cfg, owner: str | None = None):
        self.store = store
        self.cfg = cfg
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: look again later
                log.debug("rollout scan: %s", getattr(exc, "description", None) or exc)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), SCAN_EVERY)
            except asyncio.TimeoutError:
                pass

    async def scan(self) -> None:
        import nats.js.errors as jse

        kv = self.store.kv("rollouts")
        try:
            keys = await kv.keys()
        except jse.NoKeysError:
            return
        for key in keys:
            try:
                await self.step(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one rollout's trouble does not stop the others
                log.warning("rollout %s: %s", key, getattr(exc, "description", None) or exc)

    async def _save(self, key: str, state: dict, revision: int) -> int | None:
        """Compare-and-set: the new revision, or None when another process changed the entry first."""
        import nats.js.errors as jse

        try:
            return await self.store.kv("rollouts").update(key, dumps(state), last=revision)
        except (jse.KeyWrongLastSequenceError, jse.BadRequestError):
            return None

    async def step(self, key: str) -> None:
        import nats.js.errors as jse

        kv = self.store.kv("rollouts")
        try:
            entry = await kv.get(key)
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            return
        try:
            state = json.loads(entry.value or b"")
        except ValueError:
            state = None
        if not isinstance(state, dict) or not isinstance(state.get("batch"), int):
            await kv.delete(key)
            return
        now = time.time_ns()
        if state.get("owner") != self.owner and (state.get("lease_until_ns") or 0) > now:
            return  # another process drives it
        previous = state.get("owner")
        state.update(owner=self.owner, lease_until_ns=now + int(LEASE * 1e9))
        revision = await self._save(key, state, entry.revision)
        if revision is None:
            return
        if previous not in (None, self.owner):
            log.info("rollout %s: driving it (lease taken from %s)", key, previous)
        job, events = await self.store.job_and_events(key)
        if job is None or st.abandoned(events) or not isinstance(job.get("rollout"), dict):
            await kv.delete(key)  # deleted, expired or never published: nothing to drive
            return
        rollout = job["rollout"]
        batches, sent = rollout.get("batches") or [], state["batch"]
        last = st.last_per_host(events)
        if sent:
            current = batches[sent - 1]
            if not state.get("published"):
                await self._publish(job, [h for h in current if h not in last])
                state["published"] = True
                revision = await self._save(key, state, revision)
                if revision is None:
                    return
            unfinished = [h for h in current if h not in last or last[h].event not in st.FINAL]
            if unfinished:
                timeout = float(self.cfg.api.server.job_timeout)
                if now < (state.get("sent_ns") or 0) + int(timeout * 1e9):
                    return
                await self._mark(key, unfinished, st.NO_RESPONSE, "no-answer",
                                 f"no answer within {timeout:g}s of its batch being sent (rollout)")
                events = await self.store.events(key)
                last = st.last_per_host(events)
            done_ns = max((last[h].nanos for h in current if h in last), default=now)
            if now < done_ns + int(float(rollout.get("pause_s") or 0) * 1e9):
                return
        reached = [h for hosts in batches[:sent] for h in hosts]
        bad = [h for h in reached if h in last and last[h].event in (st.FAILED, st.NO_RESPONSE)]
        limit = rollout.get("max_failed_hosts", 0)
        if bad and len(bad) > limit:
            remaining = [h for hosts in batches[sent:] for h in hosts]
            if remaining:
                await self._mark(key, remaining, st.SKIPPED, "rollout-stopped",
                                 f"skipped: {len(bad)} host(s) failed or did not answer, more than "
                                 f"max_failures ({limit}); the rollout stopped after batch {sent}")
            log.info("rollout %s: stopped after batch %d (%d failed or silent > %d)", key, sent, len(bad), limit)
            await kv.delete(key)
            return
        if sent >= len(batches):
            log.info("rollout %s: done, %d batch(es)", key, sent)
            await kv.delete(key)
            return
        state.update(batch=sent + 1, sent_ns=time.time_ns(), published=False)
        revision = await self._save(key, state, revision)  # recorded before it is sent
        if revision is None:
            return
        await self._publish(job, batches[sent])
        state["published"] = True
        await self._save(key, state, revision)

    async def _publish(self, job: dict, hosts: list[str]) -> None:
        prefix = self.store.names.prefix
        subjects = [subject_for(job["kind"], host_target(h), prefix) for h in hosts]
        await asyncio.gather(*(self.store.publish_job(s, job["id"], True) for s in subjects))

    async def _mark(self, job_id: str, hosts: list[str], event: str, reason: str, error: str) -> None:
        """A response (unless the host has one) and an event for each host of ``hosts``."""
        finished = st.rfc3339(time.time_ns())

        async def one(host: str) -> None:
            record = {"status": event, "data": None, "error": error, "hostname": host, "finished": finished,
                      "reason": reason}
            if await self.store.create_response(job_id, host, record):
                await self.store.add_event(job_id, event, host, error=error, reason=reason)

        await asyncio.gather(*(one(h) for h in hosts))
