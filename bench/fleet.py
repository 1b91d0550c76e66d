"""Fleet: 1,000 simulated hosts on a 3-node loopback JetStream cluster.

A real three-node nats-server cluster on loopback (``testkit/cluster.py``:
configurations rendered by ``osapi.natsd.render_config``), every stream and
bucket at replicas 3, one API process whose ``nats.url`` lists every member, and
1,000 simulated hosts split over several processes (``bench/simworkers.py``:
each host a real ``osapi.worker.worker.Worker`` with its own connection, host
consumer, registry entry and results; connections spread over the members by
the client's random server order).

First the floor (``bench/fleetfloor.py``): the same cluster shape and host count,
hosts in raw nats-py doing only what any host must per broadcast; it is the
reference of the `_all` figure, so that its ratio holds on a noisy machine
(``BENCH_FLEET_FLOOR=0`` skips it). Then osapi, measured once with each host
consumer at replicas 3 and once at replicas 1, each on a fresh cluster:

* ``GET /system/hostname?target_hostname=_all``: each of the hosts answers
  exactly once (distinct hostnames, no duplicate, no stranger), p50/p99 of
  sequential calls after one warm-up call;
* idle cost with the hosts connected: CPU % (user+system over a window) and RSS
  of each nats-server, the API and the simulated-host processes;
* where the host consumers live (their leader, by node);
* a node loss: kill -9 of the member holding the most host consumers, one
  ``_all`` job submitted (``POST /jobs``), its answers counted after a while,
  the member started again, the answers counted again.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import fleetfloor
from bench.appliance import REPO, base_env
from bench.report import Section
from bench.stats import mib, ms, percentile
from testkit import free_port, stop_all, wait_for_port
from testkit.cluster import NatsCluster

TITLE = "Fleet"
GOAL_MS = 1000.0
REPLICAS_ENV = {"OSAPI_JOB_STREAM_REPLICAS": "3", "OSAPI_JOB_KV_REPLICAS": "3", "OSAPI_JOB_DLQ_REPLICAS": "3",
                "OSAPI_AUDIT_REPLICAS": "3"}


class Fleet:
    """A 3-node cluster, one API on all members, ``count`` simulated hosts in ``procs`` processes."""

    def __init__(self, ctx, workdir: Path, count: int, procs: int, consumer_replicas: int):
        self.ctx = ctx
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.count, self.nprocs, self.consumer_replicas = count, procs, consumer_replicas
        self.cluster = NatsCluster(self.workdir / "cluster")
        self.api_port = free_port()
        self.api: subprocess.Popen | None = None
        self.sims: list[subprocess.Popen] = []
        self.token = ""
        self.names = {f"sim-{i:04d}" for i in range(count)}

    def env(self, **more: str) -> dict:
        env = base_env()
        env.update(self.cluster.env())
        env.update(REPLICAS_ENV)
        env.update(more)
        return env

    def start(self) -> "Fleet":
        from osapi import authtoken

        try:
            self.cluster.start()
            self.cluster.wait_ready(120)
            key = secrets.token_hex(32)
            self.token = authtoken.generate(key, ["admin"], "bench", 86400)
            env = self.env(OSAPI_SUPERVISE_STATE_DIR=str(self.workdir / "state"),
                           OSAPI_API_SERVER_PORT=str(self.api_port),
                           OSAPI_API_SERVER_SECURITY_SIGNING_KEY=key,
                           OSAPI_API_SERVER_JOB_TIMEOUT="60s")
            with open(self.workdir / "logs" / "api.log", "ab") as log:
                self.api = subprocess.Popen(self.ctx.osapi_argv("api", "server", "start"), env=env, stdout=log,
                                            stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir)
            wait_for_port("127.0.0.1", self.api_port, 60, self.api)
            self._wait_ready(60)
            per = -(-self.count // self.nprocs)
            for first in range(0, self.count, per):
                env = self.env(PYTHONPATH=str(REPO), BENCH_HOST_CONSUMER_REPLICAS=str(self.consumer_replicas))
                with open(self.workdir / "logs" / f"sim-{first}.log", "ab") as log:
                    self.sims.append(subprocess.Popen(
                        [sys.executable, str(REPO / "bench" / "simworkers.py"), str(min(per, self.count - first)),
                         str(first)], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir))
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_all([*self.sims, self.api], timeout=60)  # by pid, all signalled first; then the cluster
        self.cluster.stop()

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, body=None, timeout: float = 120.0):
        from bench.httpclient import Connection

        conn = Connection(self.api_port, self.token, timeout=timeout)
        try:
            status, raw = conn.request(method, path, body)
        finally:
            conn.close()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status, body = self.request("GET", "/health/ready", timeout=5)
                if status == 200:
                    return
                last = f"{status} {body}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"API /health/ready not 200 within {timeout}s: {last}")

    def wait_hosts(self, timeout: float) -> float:
        """Seconds until every simulated host is in GET /jobs/workers."""
        t0 = time.monotonic()
        seen: set = set()
        while time.monotonic() - t0 < timeout:
            for proc in self.sims:
                if proc.poll() is not None:
                    raise RuntimeError(f"a simulated-host process exited with {proc.returncode}")
            status, body = self.request("GET", "/api/v1/jobs/workers", timeout=30)
            if status == 200:
                seen = {w.get("hostname") for w in body.get("workers", [])}
                if self.names <= seen:
                    return time.monotonic() - t0
            time.sleep(1.0)
        raise TimeoutError(f"{len(self.names - seen)} of {self.count} hosts not registered within {timeout:.0f}s")

    # ------------------------------------------------------------ processes

    def roles(self) -> dict[str, int]:
        out = {f"nats-server n{i}": p.pid for i, p in enumerate(self.cluster.procs) if p.poll() is None}
        if self.api is not None:
            out["API"] = self.api.pid
        for i, proc in enumerate(self.sims):
            out[f"sim process {i + 1}"] = proc.pid
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user+system) so far by role."""
        import psutil

        return {role: sum(psutil.Process(pid).cpu_times()[:2]) for role, pid in self.roles().items()}

    def idle(self, seconds: float) -> dict[str, tuple[float, float]]:
        """{role: (CPU % of one core over ``seconds``, RSS MiB at the end)}."""
        import psutil

        procs = {role: psutil.Process(pid) for role, pid in self.roles().items()}
        before = {role: sum(p.cpu_times()[:2]) for role, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        return {role: (100.0 * (sum(p.cpu_times()[:2]) - before[role]) / wall, mib(p.memory_info().rss))
                for role, p in procs.items()}

    def consumer_leaders(self) -> dict[str, int]:
        """Host consumers by the node that leads them (``?`` when a consumer has no leader now)."""
        return asyncio.run(self._consumer_leaders())

    async def _consumer_leaders(self) -> dict[str, int]:
        import nats

        nc = await nats.connect(self.cluster.urls, token=self.cluster.token, connect_timeout=5)
        try:
            found: dict[str, int] = {}
            offset = 0
            while True:
                reply = json.loads((await nc.request("$JS.API.CONSUMER.LIST.JOBS",
                                                     json.dumps({"offset": offset}).encode(), timeout=30)).data)
                page = reply.get("consumers") or []
                for info in page:
                    if "-host-" not in info.get("name", ""):
                        continue
                    leader = (info.get("cluster") or {}).get("leader") or "?"
                    found[leader] = found.get(leader, 0) + 1
                offset += len(page)
                if not page or offset >= reply.get("total", 0):
                    break
            return dict(sorted(found.items()))
        finally:
            await nc.close()

    def kill_node(self, index: int) -> None:
        proc = self.cluster.procs[index]
        proc.kill()
        proc.wait(timeout=30)

    def restart_node(self, index: int) -> None:
        from osapi import natsd

        member = self.cluster.workdir / f"n{index}"
        with open(member / "nats.log", "ab") as log:
            self.cluster.procs[index] = subprocess.Popen([str(natsd.find_binary()), "-c", str(member / "nats.conf")],
                                                         stdout=log, stderr=log)
        wait_for_port("127.0.0.1", self.cluster.ports[index], 30, self.cluster.procs[index])


# ---------------------------------------------------------------- the measurement


def _broadcasts(fleet: Fleet, calls: int) -> tuple[list[float], list[str]]:
    """``calls`` + 1 sequential `_all` calls: their times and, per call, what was wrong ('' when exact)."""
    from bench.httpclient import Connection

    conn = Connection(fleet.api_port, fleet.token, timeout=120)
    times, wrong = [], []
    try:
        for _ in range(calls + 1):
            t0 = time.perf_counter()
            status, raw = conn.request("GET", "/api/v1/system/hostname?target_hostname=_all")
            times.append(time.perf_counter() - t0)
            results = json.loads(raw).get("results", []) if status == 200 else []
            ok = [r.get("hostname") for r in results if r.get("status") not in ("failed", "no_response")]
            problems = []
            if status != 200:
                problems.append(f"HTTP {status}")
            if len(ok) != len(set(ok)):
                problems.append(f"{len(ok) - len(set(ok))} duplicates")
            if set(ok) - fleet.names:
                problems.append(f"{len(set(ok) - fleet.names)} strangers")
            if fleet.names - set(ok):
                problems.append(f"{len(fleet.names - set(ok))} missing")
            wrong.append(", ".join(problems))
    finally:
        conn.close()
    return times, wrong


def _answered(fleet: Fleet, job_id: str) -> int:
    status, body = fleet.request("GET", f"/api/v1/jobs/{job_id}", timeout=60)
    if status != 200 or not isinstance(body, dict):
        return -1
    responses = body.get("responses") or {}
    if isinstance(responses, dict):
        return sum(1 for r in responses.values() if isinstance(r, dict) and r.get("status") == "ok")
    return sum(1 for r in responses if isinstance(r, dict) and r.get("status") == "ok")


def _node_loss(fleet: Fleet, leaders: dict[str, int], wait: float) -> str:
    """Kill -9 the member leading the most host consumers, submit one `_all` job, count, restart, count."""
    node = max((n for n in leaders if n.startswith("n")), key=lambda n: leaders[n], default="n0")
    index = int(node[1:])
    fleet.kill_node(index)
    t0 = time.monotonic()
    status, body = None, None
    while time.monotonic() - t0 < 30:  # the API may answer 503 while it fails over
        status, body = fleet.request("POST", "/api/v1/jobs", {"operation": {"type": "system.hostname.get", "data": {}},
                                                              "target_hostname": "_all"}, timeout=30)
        if status == 201:
            break
        time.sleep(1)
    if status != 201:
        fleet.restart_node(index)
        return f"node loss: the job was not accepted with {node} down (HTTP {status} {str(body)[:200]})"
    job_id, submitted = body["job_id"], time.monotonic() - t0
    time.sleep(wait)
    down = _answered(fleet, job_id)
    fleet.restart_node(index)
    t1 = time.monotonic()
    after = down
    while time.monotonic() - t1 < 90 and after < fleet.count:
        time.sleep(2)
        after = _answered(fleet, job_id)
    return (f"node loss: kill -9 of {node} (leader of {leaders.get(node, 0)} host consumers), one `_all` job "
            f"accepted {submitted:.1f} s later: {down} of "
            f"{fleet.count} hosts had answered {wait:.0f} s after; {node} started again: {after} of "
            f"{fleet.count} {time.monotonic() - t1:.0f} s after its restart")


def _variant(ctx, section: Section, count: int, procs: int, calls: int, idle_s: float, replicas: int,
             floor_p50: float | None = None) -> dict:
    out: dict = {}
    with Fleet(ctx, ctx.workdir / f"fleet-r{replicas}", count, procs, replicas) as fleet:
        registered = fleet.wait_hosts(ctx.count(900, 300))
        profiling = bool(os.environ.get("BENCH_SIM_PROFILE"))  # bench/simworkers.py: profile the timed calls only
        if profiling:
            for proc in fleet.sims:
                proc.send_signal(signal.SIGUSR1)
        cpu0 = fleet.cpu()
        times, wrong = _broadcasts(fleet, calls)
        cpu1 = fleet.cpu()
        if profiling:
            for proc in fleet.sims:
                proc.send_signal(signal.SIGUSR2)
        rest = times[1:]
        p50, p99 = ms(percentile(rest, 50)), ms(percentile(rest, 99))
        exact = not any(wrong)
        label = f"host consumers at replicas {replicas}"
        section.add(f"`_all` over {count} hosts, 3-node cluster, {label}: p50 of {calls}", p50, "ms",
                    reference="floor p50: raw nats-py hosts, bench/fleetfloor.py" if floor_p50 else "",
                    reference_value=floor_p50, ratio_of="floor",
                    goal=f"< {GOAL_MS:.0f} ms, each host exactly once", met=exact and p50 < GOAL_MS)
        section.add(f"`_all` over {count} hosts, 3-node cluster, {label}: p99 of {calls}", p99, "ms")
        time.sleep(5)  # let the last broadcast's writes settle
        idle = fleet.idle(idle_s)
        for role, (cpu, rss) in idle.items():
            if role.startswith("nats-server"):
                section.add(f"idle, {count} hosts connected, {label}: {role} CPU", round(cpu, 1), "% of a core")
                section.add(f"idle, {count} hosts connected, {label}: {role} RSS", round(rss, 1), "MiB")
        leaders = fleet.consumer_leaders()
        section.note(f"{label}: {count} hosts in {procs} processes registered {registered:.1f} s after start; "
                     f"first `_all` call {ms(times[0]):.0f} ms; calls not exact: "
                     f"{[w for w in wrong if w] or 'none'}; every call's times (ms): "
                     f"{[round(ms(t)) for t in rest]}")
        section.note(f"{label}: idle over {idle_s:.0f} s, CPU % of one core / RSS MiB: "
                     + ", ".join(f"{role} {cpu:.1f} % / {rss:.0f}" for role, (cpu, rss) in idle.items()))
        section.note(f"{label}: host consumers by leader node: {leaders}")
        section.note(f"{label}: CPU per `_all` call (user+system, ms): "
                     + ", ".join(f"{role} {1000 * (cpu1[role] - cpu0[role]) / len(times):.0f}" for role in cpu0
                                 if role in cpu1))
        out.update(p50=p50, idle=idle, leaders=leaders)
        if os.environ.get("BENCH_FLEET_NODE_LOSS", "1") != "0":
            section.note(f"{label}: " + _node_loss(fleet, leaders, ctx.count(15, 10)))
    return out


def run(ctx) -> Section:
    section = Section("fleet", TITLE)
    ctx.require("api", "job")
    count = int(os.environ.get("BENCH_FLEET_HOSTS") or ctx.count(1000, 50))
    procs = ctx.count(4, 2)
    calls = ctx.count(10, 3)
    idle_s = ctx.count(30, 5)
    variants = [int(r) for r in (os.environ.get("BENCH_FLEET_REPLICAS") or "3,1").split(",")]
    errors = []
    floor_p50 = None
    if os.environ.get("BENCH_FLEET_FLOOR", "1") != "0":
        try:
            floor = fleetfloor.measure(ctx.workdir / "fleet-floor", count, procs, calls)
            floor_p50 = ms(percentile(floor["times"][1:], 50))
            section.add(f"`_all` floor over {count} raw nats-py hosts (bench/fleetfloor.py), 3-node cluster: "
                        f"p50 of {calls}", floor_p50, "ms")
            section.note(f"floor: {count} hosts doing only what every host must (delivery, body read, "
                         f"acknowledged+started, response, completed, ack) in raw nats-py, {procs} processes, "
                         f"no API, registry or heartbeat: every call's times (ms) "
                         f"{[round(ms(t)) for t in floor['times'][1:]]}; CPU per call: nats-server (3 nodes) "
                         f"{1000 * floor['nats_cpu']:.0f} ms, hosts {1000 * floor['hosts_cpu']:.0f} ms")
        except Exception as exc:  # noqa: BLE001 - report and go on to osapi's own figures
            errors.append(f"floor: {type(exc).__name__}: {exc}")
    for replicas in variants:
        try:
            _variant(ctx, section, count, procs, calls, idle_s, replicas, floor_p50)
        except Exception as exc:  # noqa: BLE001 - report and go on to the other variant
            errors.append(f"host consumers at replicas {replicas}: {type(exc).__name__}: {exc}")
    section.note(f"{count} simulated hosts: real `osapi.worker.worker.Worker` objects, one NATS connection each, "
                 f"{procs} processes; one API process with `nats.url` listing the 3 members; streams and "
                 f"buckets at replicas 3; the cluster, the API and the hosts share this machine's cores")
    if errors:
        section.error = "; ".join(errors)
    return section
