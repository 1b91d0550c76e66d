"""500 simulated worker hosts in one asyncio process, running osapi's own worker code.

Each simulated host is a real ``osapi.worker.worker.Worker`` with its own hostname
and its own NATS connection, all in one process and one event loop (this file
run as a script). Nothing is stubbed: each one sets up its host consumer, pulls
with the real loops, heartbeats into the registry, runs the real provider
(``system.hostname.get``) in its thread pool and writes its result and events
the way a real worker does. Only logging is turned down to WARNING so the
process does not spend its time writing 500 lines per broadcast.

The benchmark (``run``) starts an appliance without a worker, starts this
fleet as a subprocess, waits until all hosts are in the registry, then times
``GET /system/hostname?target_hostname=_all`` and counts the answers.

    python bench/simworkers.py COUNT [FIRST]   # with OSAPI_NATS_URL / OSAPI_NATS_TOKEN set

``FIRST`` numbers the hosts from there (``sim-FIRST`` …), so that several such
processes make one fleet (``bench/fleet.py``). ``BENCH_HOST_CONSUMER_REPLICAS``
(bench only) overrides the replicas of each host's consumer, to measure what
the choice costs; the worker code is otherwise untouched.

Each host acts as an enrolled fleet host (``_enrolled_host_class``: no dead-letter
loop, no advisories; ``BENCH_SIM_ENROLLED=0`` for a control-plane worker).
``BENCH_SIM_HEARTBEAT`` (seconds) sets the heartbeat interval, to isolate what
heartbeats cost; ``BENCH_SIM_PROFILE`` profiles the process between SIGUSR1 and
SIGUSR2 (``_profiling``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TITLE = "Scale"


def _override_host_consumer_replicas(replicas: int) -> None:
    """Every host consumer this process creates gets ``replicas`` (the measurement of bench/fleet.py)."""
    from osapi.worker import worker

    made = worker.host_consumer_config

    def host_consumer_config(cfg, hostname, labels):
        config = made(cfg, hostname, labels)
        config.num_replicas = replicas
        return config

    worker.host_consumer_config = host_consumer_config


def _enrolled_host_class():
    """``Worker`` acting as an enrolled fleet host does (``Worker.fleet_host``): no dead-letter loop,
    no JetStream advisories. Its consumer is still made here, as the control plane makes it at
    enrollment; it connects with the control plane's token (enrolling 1,000 hosts would spend
    minutes in bcrypt and users reloads before the measurement)."""
    from osapi.worker.worker import Worker

    class EnrolledHost(Worker):
        async def _setup(self) -> None:
            self.fleet_host = False
            try:
                await super()._setup()
            finally:
                self.fleet_host = True

    return EnrolledHost


async def fleet(count: int, first: int = 0) -> None:
    from osapi import config
    from osapi.worker.worker import Worker

    cfg = config.load(None, os.environ)
    if os.environ.get("BENCH_HOST_CONSUMER_REPLICAS"):
        _override_host_consumer_replicas(int(os.environ["BENCH_HOST_CONSUMER_REPLICAS"]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    beat = float(os.environ.get("BENCH_SIM_HEARTBEAT") or 5.0)  # bench only: isolate what heartbeats cost
    host_class = _enrolled_host_class() if os.environ.get("BENCH_SIM_ENROLLED", "1") != "0" else Worker
    workers = [host_class(cfg, hostname=f"sim-{i:04d}", labels={"fleet": "sim"}, heartbeat=beat)
               for i in range(first, first + count)]
    tasks = []
    for i, worker in enumerate(workers):
        tasks.append(asyncio.create_task(worker.serve(stop)))
        if i % 25 == 24:
            await asyncio.sleep(0.05)   # do not open 500 connections in the same millisecond
    print(f"started {count}", flush=True)
    await stop.wait()
    await asyncio.wait(tasks, timeout=30)


def run(ctx, section) -> None:
    from bench.httpclient import Connection
    from bench.stats import ms, percentile

    count = ctx.count(500, 50)
    calls = ctx.count(10, 3)
    with ctx.appliance("scale-fleet", workers=0, extra_env={"OSAPI_API_SERVER_JOB_TIMEOUT": "60s"}) as app:
        env = app.env(OSAPI_NATS_URL=app.nats_url, OSAPI_NATS_TOKEN=app.nats_token)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        log = open(app.workdir / "logs" / "simworkers.log", "ab")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(count)], env=env,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=app.workdir)
        app.procs.append(proc)   # stopped with the appliance, first
        log.close()
        names = {f"sim-{i:04d}" for i in range(count)}
        app.wait_workers(names, 300)
        registered = time.perf_counter() - t0
        conn = Connection(app.api_port, app.token, timeout=120)
        times, answers, statuses = [], [], []
        import psutil

        from bench.throughput import tree_cpu

        pids = [p for p in app.pids() if p != proc.pid]
        cpu0, sim0 = tree_cpu(pids), sum(psutil.Process(proc.pid).cpu_times()[:2])
        try:
            for _ in range(calls + 1):
                start = time.perf_counter()
                status, body = conn.request("GET", "/api/v1/system/hostname?target_hostname=_all")
                times.append(time.perf_counter() - start)
                statuses.append(status)
                results = json.loads(body).get("results", []) if status == 200 else []
                answers.append(len({r.get("hostname") for r in results if r.get("status") != "failed"}))
        finally:
            conn.close()
        cpu1, sim1 = tree_cpu(pids), sum(psutil.Process(proc.pid).cpu_times()[:2])
        sim_rss = psutil.Process(proc.pid).memory_info().rss
    first, rest = times[0], times[1:]
    p50 = ms(percentile(rest, 50))
    exact = all(a == count for a in answers)
    section.add(f"`_all` over {count} simulated hosts, p50 of {calls}", p50, "ms",
                goal=f"exactly {count} answers", met=exact)
    section.add(f"`_all` over {count} simulated hosts, first call", ms(first), "ms")
    section.note(f"{count} simulated hosts: real `osapi.worker.worker.Worker` objects, one NATS connection "
                 f"each, in one asyncio process ({sim_rss / 1048576:.0f} MiB RSS); all registered "
                 f"{registered:.1f} s after start")
    section.note(f"answers per call (distinct ok hosts): {answers}; HTTP statuses {statuses}")
    per_call = {role: (cpu1.get(role, 0.0) - sec) / len(times) for role, sec in cpu0.items()}
    per_call["simulated fleet"] = (sim1 - sim0) / len(times)
    section.note("CPU per `_all` call by process (user+system): "
                 + ", ".join(f"{role} {1000 * sec:.0f} ms" for role, sec in
                             sorted(per_call.items(), key=lambda kv: -kv[1]))
                 + " — the 500 simulated hosts share one Python process, where 500 real hosts "
                   "would each use their own CPU")


def _profiling(path: str) -> None:
    """``BENCH_SIM_PROFILE``: cProfile of this process between SIGUSR1 (start) and SIGUSR2 (stop, written
    to ``path.FIRST.PID``), so that bench/fleet.py profiles only its timed calls (not start-up, not idle)."""
    import cProfile

    profiler = cProfile.Profile()
    first = sys.argv[2] if len(sys.argv) > 2 else "0"
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())

    def stop(*_):
        profiler.disable()
        profiler.dump_stats(f"{path}.{first}.{os.getpid()}")  # a file per process and variant

    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # run as a script: bench/ itself must not shadow the standard library (bench/profile.py)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    if os.environ.get("BENCH_SIM_PROFILE"):
        _profiling(os.environ["BENCH_SIM_PROFILE"])
    asyncio.run(fleet(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
