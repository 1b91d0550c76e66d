"""Helpers for the job-system tests: worker stacks and an in-process JobClient.

``worker_stack`` is a ``testkit.Stack`` whose workers run with the test-only
operations on (``OSAPITEST_HOOKS=1``, see ``tests/testhooks.py``), a 1 s
heartbeat and a 15 s grace. ``Bridge`` runs a ``JobClient`` on its own event loop
thread (as the API does), so synchronous tests call ``bridge.call(client.run(job_request(...), ...))``
(``job_request``: a job from plain values, through ``JobClient.prepare``);
``with_test_operations()`` registers the test-only operations in the test process
itself. Every process is stopped by pid; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace

from testkit import NatsServer, Stack, clean_env, wait_for

HOOKS_ENV = {"OSAPITEST_HOOKS": "1"}


@contextlib.contextmanager
def with_test_operations():
    """The test-only operations (test.sleep, …) known to this process while the block runs."""
    from osapi.domain import operations

    was = operations.are_test_operations_enabled()
    operations.enable_test_operations()
    try:
        yield
    finally:
        if not was:
            operations.disable_test_operations()


def job_request(op_type, data=None, target="_any", dry_run: bool = False):
    """The ``JobRequest`` that ``JobClient.create``/``run`` take, parsed from plain values (``JobClient.prepare``)."""
    from osapi.job.client import JobClient

    return JobClient.prepare({"type": op_type, "data": data if data is not None else {}}, target, dry_run)


def base_env(server: NatsServer, state_dir: Path, extra: dict | None = None) -> dict[str, str]:
    """The clean process environment pointed at ``server``, test operations on, plus ``extra``."""
    return clean_env(**{**server.env(), "OSAPI_SUPERVISE_STATE_DIR": str(state_dir), **HOOKS_ENV, **(extra or {})})


def worker_stack(workdir: Path, env: dict | None = None, nats: NatsServer | None = None) -> Stack:
    """A ``testkit.Stack`` for job tests: test operations on, workers with a 1 s heartbeat and a 15 s grace."""
    return Stack(workdir, {**HOOKS_ENV, **(env or {})}, nats=nats, heartbeat="1s", grace="15s")


@contextlib.contextmanager
def job_stack(workdir: Path, env: dict, workers: list[tuple[str, dict]]):
    """Test operations on (in this process too: the client validates them), a ``worker_stack`` with
    ``workers`` (hostname, ``start_worker`` keywords) started, and a ``Bridge`` once all are registered.

    Yields ``server``, ``fleet`` (the stack), ``bridge``, ``client`` and ``started`` (the workers, in order).
    """
    with with_test_operations(), worker_stack(workdir, env) as fleet:
        started = [fleet.start_worker(hostname, **kw) for hostname, kw in workers]
        with Bridge(fleet.env) as bridge:
            bridge.wait_workers([hostname for hostname, _ in workers])
            yield SimpleNamespace(server=fleet.nats, fleet=fleet, bridge=bridge, client=bridge.client,
                                  started=started)


class Bridge:
    """A JobClient on a background event loop, called synchronously from tests."""

    def __init__(self, env: dict[str, str]):
        from osapi import config

        self.cfg = config.load(None, env)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="job-bridge", daemon=True)
        self.thread.start()
        self.nc = None
        try:
            from osapi.job.client import JobClient
            from osapi.job.connection import connect

            self.nc = self.call(connect(self.cfg, "osapi-tests"))
            self.client = JobClient(self.nc, self.cfg)
            self.call(self.client.setup())
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Bridge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.nc is not None:
            from osapi.job.connection import close

            try:
                self.call(close(self.nc), timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    # convenience
    @property
    def store(self):
        return self.client.store

    def events(self, job_id: str):
        return self.call(self.store.events(job_id))

    def started_hosts(self, job_id: str) -> list[str]:
        return sorted(e.host for e in self.events(job_id) if e.event == "started")

    def instance_pids(self, job_id: str) -> list[int]:
        """Pids of the worker processes that acknowledged ``job_id``, oldest run first (from the registry)."""
        store = self.store

        async def read():
            events = sorted((e for e in await store.events(job_id) if e.event == "acknowledged"),
                            key=lambda e: e.sort_key)
            entries = {e["instance"]: e["pid"] for e in await self.client.registry.entries()}
            pids = []
            for event in events:
                got = await store.kv("jobs").get(f"status.{job_id}.{event.event}.{event.host}.{event.nanos}")
                pids.append(entries.get(json.loads(got.value).get("instance")))
            return pids

        return self.call(read())

    def wait_workers(self, hostnames: list[str], timeout: float = 30.0) -> dict:
        """Until the registry lists exactly these hosts, a hostname repeated once per process (twins)."""
        want = {h: hostnames.count(h) for h in hostnames}
        return wait_for(lambda: (lambda w: w if {x["hostname"]: x["processes"] for x in w["workers"]} == want
                                 else None)(self.call(self.client.workers())), timeout,
                        what=f"registry listing {sorted(hostnames)}")

    def wait_status(self, job_id: str, statuses, timeout: float = 30.0) -> dict:
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        return wait_for(lambda: (lambda j: j if j["status"] in statuses else None)(self.call(self.client.get(job_id))),
                        timeout, what=f"job {job_id} reaching {statuses}")

