"""The floor of a broadcast: the least any host must do per ``_all``, in raw nats-py, no osapi code.

The reference for bench/fleet.py's `_all` figure, measured in the same run on a
cluster of the same shape (three members on loopback, streams at replicas 3,
one host consumer per host at one copy, one connection per host, hosts split
over the same number of processes). Per host and broadcast it does what
CONTRACT-level storage asks of every host and nothing else:

* the delivery from its own pull consumer (and the next pull, 10 s expiry);
* one direct get of the job body (which lists the expected hosts, as osapi's does);
* ``acknowledged`` and ``started`` written together, then the response, then
  ``completed`` (replicated KV writes, each acknowledged by the stream);
* the ack of the delivery.

No heartbeat, no registry, no API: the driver writes the body and publishes the
notification itself, and times until every host's response arrived on a core
subscription (as osapi's API collects them). What osapi adds on top of this
(the API and its HTTP, the registry read, the `submitted` event, heartbeats,
the checks a worker makes) is the difference between the two figures.

    python bench/fleetfloor.py hosts URLS TOKEN FIRST COUNT   # one process of hosts (run by ``measure``)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

STREAM, JOBS_KV, RESPONSES_KV = "FLOOR_JOBS", "floor-jobs", "floor-responses"
POLL = 10.0


async def _hosts(urls: list[str], token: str, first: int, count: int) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    conns = []
    for i in range(first, first + count):
        conns.append(await nats.connect(servers=urls, token=token, ping_interval=2, max_outstanding_pings=2))
        if i % 25 == 24:
            await asyncio.sleep(0.02)  # do not open 250 connections in the same millisecond
    js0 = conns[0].jetstream()
    for i in range(first, first + count):
        await js0.add_consumer(STREAM, ConsumerConfig(
            durable_name=f"floor-h{i}", filter_subjects=["jobs.query._all", f"jobs.query.host.h{i}"],
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW, num_replicas=1, ack_wait=120))

    async def host(i: int, nc) -> None:
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind(f"floor-h{i}", STREAM)
        while True:
            try:
                msgs = await sub.fetch(1, timeout=POLL)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                try:
                    await _answer(nc, js, msg, i)
                except Exception as exc:  # noqa: BLE001 - said, and the job is redelivered after ack_wait
                    print(f"h{i}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    tasks = [asyncio.ensure_future(host(i, nc)) for i, nc in zip(range(first, first + count), conns)]
    print("ready", flush=True)
    await asyncio.gather(*tasks)


async def _answer(nc, js, msg, i: int) -> None:
    """One host's answer to one delivery (see the module docstring)."""
    job_id = msg.data.decode()
    events = f"$KV.{JOBS_KV}.status"
    reply = await nc.request(f"$JS.API.DIRECT.GET.KV_{JOBS_KV}.$KV.{JOBS_KV}.jobs.{job_id}", b"", timeout=5)
    json.loads(reply.data)
    now = time.time_ns()
    await asyncio.gather(js.publish(f"{events}.{job_id}.acknowledged.h{i}.{now}", b'{"delivery":1}'),
                         js.publish(f"{events}.{job_id}.started.h{i}.{now + 1}", b'{"delivery":1}'))
    await js.publish(f"$KV.{RESPONSES_KV}.{job_id}.h{i}",
                     json.dumps({"status": "ok", "data": {"hostname": f"h{i}"}}).encode())
    await js.publish(f"{events}.{job_id}.completed.h{i}.{time.time_ns()}", b"{}")
    await msg.ack()


async def _drive(cluster, count: int, procs: int, calls: int, log) -> dict:
    import nats
    import psutil
    from nats.js.api import StreamConfig

    from testkit import stop_all

    nc = await nats.connect(servers=cluster.urls, token=cluster.token)
    hosts: list[subprocess.Popen] = []
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["jobs.>"], num_replicas=3, max_consumers=count + 100))
        for bucket in (JOBS_KV, RESPONSES_KV):
            await js.add_stream(StreamConfig(name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], num_replicas=3,
                                             allow_direct=True, max_msgs_per_subject=1))
        per = -(-count // procs)
        for first in range(0, count, per):
            hosts.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "hosts", ",".join(cluster.urls), cluster.token,
                 str(first), str(min(per, count - first))],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True))
        for proc in hosts:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 600)
            if line.strip() != "ready":
                raise RuntimeError(f"a floor host process did not start (exit {proc.poll()})")
        await asyncio.sleep(3)
        watched = [psutil.Process(p.pid) for p in [*cluster.procs, *hosts]]
        cpu0 = [sum(p.cpu_times()[:2]) for p in watched]
        expected = [f"h{i}" for i in range(count)]
        times = []
        for call in range(calls + 1):
            job_id = f"floor{call}"
            answered: set[str] = set()
            done = asyncio.Event()

            async def on_response(msg, answered=answered, done=done) -> None:
                answered.add(msg.subject.rsplit(".", 1)[1])
                if len(answered) == count:
                    done.set()

            sub = await nc.subscribe(f"$KV.{RESPONSES_KV}.{job_id}.>", cb=on_response)
            t0 = time.perf_counter()
            await js.publish(f"$KV.{JOBS_KV}.jobs.{job_id}", json.dumps({"id": job_id, "expected_hosts": expected}).encode())
            await js.publish("jobs.query._all", job_id.encode())
            try:
                await asyncio.wait_for(done.wait(), 120)
            except asyncio.TimeoutError:
                raise TimeoutError(f"call {call}: {len(answered)} of {count} floor hosts answered in 120 s") from None
            times.append(time.perf_counter() - t0)
            await sub.unsubscribe()
        cpu1 = [sum(p.cpu_times()[:2]) for p in watched]
        spent = [(b - a) / len(times) for a, b in zip(cpu0, cpu1)]
        n = len(cluster.procs)
        return {"times": times, "nats_cpu": sum(spent[:n]), "hosts_cpu": sum(spent[n:])}
    finally:
        stop_all(hosts, timeout=10)  # by pid, all signalled first
        await nc.close()


def measure(workdir: Path, count: int, procs: int, calls: int) -> dict:
    """``{times, nats_cpu, hosts_cpu}`` (seconds; CPU per call, summed) of ``calls`` + 1 sequential
    broadcasts over ``count`` raw hosts on a fresh 3-node cluster in ``workdir``."""
    from testkit.cluster import NatsCluster

    cluster = NatsCluster(Path(workdir))
    try:
        cluster.start()
        cluster.wait_ready(120)
        with open(Path(workdir) / "floor-hosts.log", "ab") as log:
            return asyncio.run(_drive(cluster, count, procs, calls, log))
    finally:
        cluster.stop()


if __name__ == "__main__":
    # run as a script: bench/ itself must not shadow the standard library (bench/profile.py)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    if len(sys.argv) == 6 and sys.argv[1] == "hosts":
        asyncio.run(_hosts(sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    else:
        sys.exit(__doc__.rsplit("\n\n", 1)[-1])
