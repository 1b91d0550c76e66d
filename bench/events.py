"""Live job events: ``GET /jobs/{id}/events`` latency, and ``/health`` with 200 streams open.

1. Latency, store -> client: three worker hosts; each round submits a ``_all``
   job (``test.sleep`` of 0.25 s, so that its stream is open before the hosts
   finish: the test-only operations are on, ``OSAPITEST_HOOKS=1``), opens its
   event stream and notes when each event arrives. An event's
   latency is its arrival time less its ``timestamp`` (taken by the writer just
   before it stored the event; millisecond precision, so a figure may be up to
   1 ms high). Events stored before the stream was open are replays, not counted.
2. Open streams: 200 streams (each its own connection) on a job for a host that
   does not exist (it stays ``submitted``: the streams stay open and idle); once
   each has its first event, ``GET /health`` is timed on a new connection each
   time, and a call to a real host once, while the streams stay open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

from bench.appliance import REPO
from bench.httpclient import AsyncConnection
from bench.report import Section
from bench.stats import mib, ms, percentile

TITLE = "Live job events"
HOSTS = ("bench-e0", "bench-e1", "bench-e2")
LATENCY_GOAL_MS = 200.0  # the contract: each new event within 200 ms of being stored
HEALTH_GOAL_MS = 100.0
READ_TIMEOUT = 30.0
SLEEP = {"type": "test.sleep", "data": {"seconds": 0.25}}


class SseStream:
    """One event stream on its own connection (asyncio), read event by event."""

    def __init__(self, port: int, token: str, job_id: str):
        self.port, self.token, self.job_id = port, token, job_id
        self.reader = self.writer = None
        self.text = ""
        self.status = None

    async def open(self) -> "SseStream":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write((f"GET /api/v1/jobs/{self.job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        return self

    async def next_event(self) -> tuple[str, dict, float] | None:
        """(event, data, arrival wall-clock time) of the next event; None at the end of the stream."""
        while True:
            while "\n\n" in self.text:
                block, _, self.text = self.text.partition("\n\n")
                fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and
                              not line.startswith(":"))
                if "event" in fields:
                    return fields["event"], json.loads(fields.get("data", "null")), time.time()
            size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), READ_TIMEOUT)).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return None
            self.text += chunk[:-2].decode()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def _stamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


async def _submit(port: int, token: str, target: str, operation: dict | None = None) -> str:
    conn = AsyncConnection(port, token)
    try:
        status, body = await conn.request("POST", "/api/v1/jobs", {
            "operation": operation or {"type": "system.hostname.get", "data": {}}, "target_hostname": target})
    finally:
        await conn.close()
    if status != 201:
        raise RuntimeError(f"POST /jobs answered {status}: {body[:200]!r}")
    return json.loads(body)["job_id"]


async def _latency(port: int, token: str, rounds: int) -> tuple[list[float], int, int]:
    latencies, replayed, ends = [], 0, 0
    for _ in range(rounds):
        job_id = await _submit(port, token, "_all", SLEEP)
        stream = await SseStream(port, token, job_id).open()
        opened = time.time()
        try:
            while (got := await stream.next_event()) is not None:
                event, data, arrived = got
                if event == "end":
                    ends += 1
                    break
                stored = _stamp(data["timestamp"])
                if stored < opened:
                    replayed += 1
                else:
                    latencies.append(max(0.0, arrived - stored))
        finally:
            await stream.close()
    return latencies, replayed, ends


async def _probe(port: int, token: str, path: str) -> tuple[int | None, float]:
    conn = AsyncConnection(port, token)
    start = time.perf_counter()
    try:
        status, _ = await asyncio.wait_for(conn.request("GET", path), 5.0)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
        status = None
    finally:
        await conn.close()
    return status, time.perf_counter() - start


async def _open_streams(port: int, token: str, count: int, probes: int, rss) -> dict:
    job_id = await _submit(port, token, "bench-nobody")
    streams = [SseStream(port, token, job_id) for _ in range(count)]
    opened = await asyncio.gather(*(s.open() for s in streams), return_exceptions=True)
    live = [s for s, r in zip(streams, opened) if not isinstance(r, BaseException) and s.status == 200]
    firsts = await asyncio.gather(*(s.next_event() for s in live), return_exceptions=True)
    ready = sum(1 for f in firsts if not isinstance(f, BaseException) and f and f[0] == "submitted")
    try:
        health = [await _probe(port, token, "/health") for _ in range(probes)]
        other = await _probe(port, token, f"/api/v1/system/hostname?target_hostname={HOSTS[0]}")
        rss_open = rss()
    finally:
        await asyncio.gather(*(s.close() for s in streams))
    return {"ready": ready, "health": health, "other": other, "rss_open": rss_open}


def run(ctx) -> Section:
    section = Section("events", TITLE)
    rounds = ctx.count(50, 5)
    count = ctx.count(200, 20)
    probes = ctx.count(200, 20)
    # test.sleep is the test stack's (tests/testhooks.py, never in osapi.pyz): a path that holds only the
    # checkout's tests/, so that a pyz's processes still run the pyz's own osapi
    hooks = ctx.workdir / "testhooks-path"
    hooks.mkdir(parents=True, exist_ok=True)
    if not (hooks / "tests").exists():
        (hooks / "tests").symlink_to(REPO / "tests")
    with ctx.appliance("events", workers=1, hostname=HOSTS[0],
                       extra_env={"OSAPITEST_HOOKS": "1", "PYTHONPATH": str(hooks)}) as app:
        app.add_workers(list(HOSTS[1:]))
        app.wait_workers(set(HOSTS), 60)
        latencies, replayed, ends = asyncio.run(_latency(app.api_port, app.token, rounds))
        rss_idle = app.api_rss()
        got = asyncio.run(_open_streams(app.api_port, app.token, count, probes, app.api_rss))
    if latencies:
        p50, p99 = ms(percentile(latencies, 50)), ms(percentile(latencies, 99))
        section.add("event latency, stored -> client, p50", p50, "ms")
        section.add("event latency, stored -> client, p99", p99, "ms", goal=f"≤ {LATENCY_GOAL_MS:.0f} ms",
                    met=p99 <= LATENCY_GOAL_MS)
    else:
        section.add("event latency, stored -> client, p99", None, "ms", goal=f"≤ {LATENCY_GOAL_MS:.0f} ms", met=False)
    section.add("streams that ended with `end`", ends, "", goal=str(rounds), met=ends == rounds)
    health_ok = [s for status, s in got["health"] if status == 200]
    label = f"`GET /health` p50, {count} event streams open"
    if health_ok:
        section.add(label, ms(percentile(health_ok, 50)), "ms")
        section.add(label.replace(" p50,", " p99,"), ms(percentile(health_ok, 99)), "ms",
                    goal=f"≤ {HEALTH_GOAL_MS:.0f} ms", met=(ms(percentile(health_ok, 99)) <= HEALTH_GOAL_MS
                                                            and len(health_ok) == len(got["health"])))
    section.add(f"streams open and live (first event received) of {count}", got["ready"], "",
                goal=str(count), met=got["ready"] == count)
    other_status, other_s = got["other"]
    section.add(f"`GET /system/hostname` to a worker with {count} streams open", ms(other_s) if other_status == 200
                else None, "ms", goal="200 OK", met=other_status == 200)
    if rss_idle and got["rss_open"]:
        section.add("RSS of the API process, idle", mib(rss_idle), "MiB")
        section.add(f"RSS of the API process, {count} streams open", mib(got["rss_open"]), "MiB", "idle",
                    mib(rss_idle))
    section.note(f"latency: {rounds} `_all` jobs over {len(HOSTS)} hosts, {len(latencies)} live events timed, "
                 f"{replayed} stored before their stream opened (replays, not timed); timestamps have "
                 "millisecond precision")
    section.note(f"{len(got['health'])} `/health` probes, each on a new connection, while {got['ready']} streams "
                 "stayed open on one job that never finishes")
    return section
