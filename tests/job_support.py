"""Helpers for the job-system tests: real worker processes and an in-process JobClient.

``Fleet`` starts ``python -m osapi job worker start`` subprocesses against one
``NatsServer`` with distinct ``OSAPI_JOB_WORKER_HOSTNAME`` / ``_LABELS`` and the
test-only operations on (``OSAPITEST_HOOKS=1``, see ``tests/testhooks.py``).
``Bridge`` runs a ``JobClient`` on its own event loop thread (as the API does),
so synchronous tests call ``bridge.call(client.run(job_request(...), ...))``
(``job_request``: a job from plain values, through ``JobClient.prepare``); ``with_test_operations()``
registers the test-only operations in the test process itself. Every process
is stopped by pid; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import REPO, NatsServer, stop_process

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
    """The process environment without the developer's OSAPI_* variables, pointed at ``server``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env.update(server.env())
    env["OSAPI_SUPERVISE_STATE_DIR"] = str(state_dir)
    env["PYTHONPATH"] = str(REPO)
    env.update(HOOKS_ENV)
    env.update(extra or {})
    return env


class WorkerProc:
    """One worker process with a hostname and labels; its log in ``workdir``."""

    def __init__(self, fleet: "Fleet", hostname: str, labels: str = "", env: dict | None = None, name: str = "",
                 grace: str = "15s", heartbeat: str = "1s"):
        self.fleet = fleet
        self.grace = grace
        self.heartbeat = heartbeat
        self.hostname = hostname
        self.labels = labels
        self.extra = env or {}
        self.name = name or hostname
        self.log_path = fleet.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProc":
        env = base_env(self.fleet.server, self.fleet.workdir / "state", {**self.fleet.env, **self.extra})
        env["OSAPI_JOB_WORKER_HOSTNAME"] = self.hostname
        if self.labels:
            env["OSAPI_JOB_WORKER_LABELS"] = self.labels
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "osapi", "job", "worker", "start", "--heartbeat", self.heartbeat,
                 "--grace", self.grace],
                cwd=self.fleet.workdir, env=env, stdout=log, stderr=log,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        return stop_process(self.proc, timeout=timeout) if self.proc is not None else None

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Fleet:
    """Worker processes sharing one server; ``stop_all`` stops each by pid."""

    def __init__(self, server: NatsServer, workdir: Path, env: dict | None = None):
        self.server = server
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.workers: list[WorkerProc] = []

    def add(self, hostname: str, labels: str = "", env: dict | None = None, name: str = "",
            grace: str = "15s", heartbeat: str = "1s") -> WorkerProc:
        worker = WorkerProc(self, hostname, labels, env, name or f"{hostname}-{len(self.workers)}", grace, heartbeat)
        self.workers.append(worker)
        return worker.start()

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every live worker at once, then wait for each (KILL after 20 s). Exit codes by name."""
        for worker in self.workers:
            if worker.alive():
                try:
                    os.kill(worker.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        codes = {}
        for worker in self.workers:
            try:
                codes[worker.name] = worker.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                worker.kill()
                codes[worker.name] = None
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers)


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


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until truthy (bounded in time); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
