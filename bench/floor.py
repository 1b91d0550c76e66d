"""The floor of the design: the least a job round trip on NATS can cost.

A minimal nats-py program doing exactly what one osapi query does, and nothing
else: the client puts the job in a KV bucket, publishes the notification on a
JetStream stream, a responder is delivered the notification, reads the job from
KV and writes its result to a second KV bucket, and the client sees the result
through a KV watch. No HTTP, no validation, no events. Two variants:

* ``measure_one_process`` -- the floor of record: requester and responder in one
  process, one connection, one event loop (the leanest program that does it);
* ``measure`` -- the responder in a separate process, like a worker (it adds the
  wake-ups of a second process, which hide part of what osapi costs).

osapi's round trip is quoted as a multiple of both.

``python bench/floor.py responder URL TOKEN`` is the responder process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

STREAM = "FLOOR"
SUBJECT = "floor.jobs"  # the two-process variant
SUBJECT_1P = "floor.jobs1p"  # the one-process variant: its own consumer never sees the other's jobs
JOBS = "floor-jobs"
RESPONSES = "floor-responses"


async def _connect(url: str, token: str | None):
    import nats

    return await nats.connect(url, token=token or None, name="osapi-bench-floor", connect_timeout=5)


async def setup(url: str, token: str | None) -> None:
    """Stream and buckets with the same storage as osapi's defaults (file)."""
    from nats.js.api import KeyValueConfig, StorageType, StreamConfig

    nc = await _connect(url, token)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["floor.>"], storage=StorageType.FILE))
        await js.create_key_value(KeyValueConfig(bucket=JOBS, storage=StorageType.FILE))
        await js.create_key_value(KeyValueConfig(bucket=RESPONSES, storage=StorageType.FILE))
    finally:
        await nc.close()


async def responder(url: str, token: str | None) -> None:
    nc = await _connect(url, token)
    await _serve(nc, "floor-responder")
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()


async def _serve(nc, durable: str, subject: str = SUBJECT, host: str = "floor-host"):
    """The responder's subscription on ``nc``: read the job, write the result, ack."""
    js = nc.jetstream()
    jobs = await js.key_value(JOBS)
    responses = await js.key_value(RESPONSES)

    async def handle(msg) -> None:
        job_id = msg.data.decode()
        job = json.loads((await jobs.get(f"jobs.{job_id}")).value)
        result = {"hostname": host, "type": job["type"]}
        await responses.put(f"{job_id}.{host}", json.dumps({"status": "ok", "data": result}).encode())
        await msg.ack()

    return await js.subscribe(subject, durable=durable, cb=handle, manual_ack=True)


async def round_trips(url: str, token: str | None, count: int, warmup: int, nc=None,
                      subject: str = SUBJECT) -> list[float]:
    """Timed round trips from a requester; on ``nc`` when given (it is not closed), else its own connection."""
    own = nc is None
    if own:
        nc = await _connect(url, token)
    try:
        js = nc.jetstream()
        jobs = await js.key_value(JOBS)
        responses = await js.key_value(RESPONSES)
        times: list[float] = []
        for i in range(warmup + count):
            job_id = str(uuid.uuid4())
            start = time.perf_counter()
            # the server drops the watch's consumer a second after it stops (not the default five
            # minutes: a run of thousands of round trips would reach the consumer limit)
            watcher = await responses.watch(f"{job_id}.>", inactive_threshold=1.0)
            await jobs.put(f"jobs.{job_id}", json.dumps({"type": "system.hostname.get", "data": {}}).encode())
            await js.publish(subject, job_id.encode())
            while True:
                entry = await watcher.updates(timeout=10)
                if entry is not None and entry.value:
                    break
            elapsed = time.perf_counter() - start
            await watcher.stop()
            if i >= warmup:
                times.append(elapsed)
        return times
    finally:
        if own:
            await nc.close()


async def _one_process(url: str, token: str | None, count: int, warmup: int) -> list[float]:
    nc = await _connect(url, token)
    try:
        sub = await _serve(nc, "floor-responder-1p", SUBJECT_1P)
        try:
            return await round_trips(url, token, count, warmup, nc=nc, subject=SUBJECT_1P)
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


def measure_one_process(url: str, token: str | None, count: int, warmup: int = 20) -> list[float]:
    """Round-trip times in seconds, requester and responder on one connection in this process."""
    asyncio.run(setup(url, token))
    return asyncio.run(_one_process(url, token, count, warmup))


def measure(url: str, token: str | None, count: int, warmup: int = 20) -> list[float]:
    """Round-trip times in seconds; runs its own responder process and stops it."""
    asyncio.run(setup(url, token))
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "responder", url, token or ""],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"floor responder did not start (exit {proc.poll()})")
        return asyncio.run(round_trips(url, token, count, warmup))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "responder":
        asyncio.run(responder(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    else:
        sys.exit("usage: floor.py responder URL TOKEN")
