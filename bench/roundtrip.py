"""Round trip: sequential ``GET /api/v1/system/hostname`` to one host, next to the floors.

Two ways to call, both sequential: a new HTTP connection per call (as
``osapi client`` makes them: the figure the goal is about) and one keep-alive
connection (as an API client that reuses connections). Two floors
(``bench/floor.py``) on the same nats-server: the one-process floor (the floor
of record: requester and responder in one program) and the two-process one
(the responder in its own process, like a worker). The API call does what the
floor does plus HTTP, JWT, validation, events and the registry; the goal is
p50 ≤ 3× and p99 ≤ 4× the one-process floor.

All four are measured in the same run, interleaved in blocks (API, floors, API,
floors, …), so that load from other work on the machine falls on each alike.
"""

from __future__ import annotations

import http.client
import json
import time

from bench import floor
from bench.appliance import Appliance, NotAvailable
from bench.httpclient import Connection
from bench.report import Section
from bench.stats import ms, percentile

TITLE = "Round trip"
RATIO_GOAL = 3.0
P99_GOAL = 4.0
PATH = "/api/v1/system/hostname"


def _ok(status: int, body: bytes) -> bool:
    try:
        return status == 200 and len(json.loads(body)["results"]) == 1
    except (ValueError, KeyError, TypeError):
        return False


def per_connection(port: int, token: str, count: int) -> tuple[list[float], int]:
    """``count`` calls, each on a new connection closed afterwards; (times, bad answers)."""
    times, bad = [], 0
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    for _ in range(count):
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", PATH, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        times.append(time.perf_counter() - start)
        bad += not _ok(resp.status, body)
    return times, bad


def kept_alive(conn: Connection, count: int) -> tuple[list[float], int]:
    times, bad = [], 0
    for _ in range(count):
        start = time.perf_counter()
        status, body = conn.request("GET", PATH)
        times.append(time.perf_counter() - start)
        bad += not _ok(status, body)
    return times, bad


def _floor_only(section: Section, ctx, calls: int, warmup: int) -> Section:
    with Appliance(ctx.workdir / "floor", mode="source", api=False, workers=0) as nats_only:
        one = floor.measure_one_process(nats_only.nats_url, nats_only.nats_token, calls, warmup)
        two = floor.measure(nats_only.nats_url, nats_only.nats_token, calls, warmup)
    section.add("floor p50, one process (reference alone)", ms(percentile(one, 50)), "ms")
    section.add("floor p50, two processes (reference alone)", ms(percentile(two, 50)), "ms")
    return section


def run(ctx) -> Section:
    section = Section("roundtrip", TITLE)
    calls = ctx.count(500, 30)
    warmup = ctx.count(20, 5)
    blocks = ctx.count(5, 1)
    each = max(1, calls // blocks)
    try:
        ctx.require("api", "job")
    except NotAvailable as exc:
        section.error = f"API round trip not measured: {exc}"
        return _floor_only(section, ctx, calls, warmup)
    fresh: list[float] = []
    alive: list[float] = []
    one: list[float] = []
    two: list[float] = []
    bad = 0
    with ctx.appliance("roundtrip") as app:
        conn = Connection(app.api_port, app.token)
        try:
            per_connection(app.api_port, app.token, warmup)
            kept_alive(conn, warmup)
            for _ in range(blocks):
                times, wrong = per_connection(app.api_port, app.token, each)
                fresh += times
                bad += wrong
                times, wrong = kept_alive(conn, each)
                alive += times
                bad += wrong
                one += floor.measure_one_process(app.nats_url, app.nats_token, each, warmup)
                two += floor.measure(app.nats_url, app.nats_token, each, warmup)
        finally:
            conn.close()
    f50, f99 = ms(percentile(one, 50)), ms(percentile(one, 99))
    t50, t99 = ms(percentile(two, 50)), ms(percentile(two, 99))
    p50, p99 = ms(percentile(fresh, 50)), ms(percentile(fresh, 99))
    k50, k99 = ms(percentile(alive, 50)), ms(percentile(alive, 99))
    n = len(fresh)
    section.add(f"p50 of {n} sequential calls, a connection each", p50, "ms", "floor p50, one process", f50,
                goal=f"≤ {RATIO_GOAL:.0f}× floor", met=p50 <= RATIO_GOAL * f50)
    section.add(f"p99 of {n} sequential calls, a connection each", p99, "ms", "floor p99, one process", f99,
                goal=f"≤ {P99_GOAL:.0f}× floor", met=p99 <= P99_GOAL * f99)
    section.add(f"p50 of {n} sequential calls, a connection each", p50, "ms", "floor p50, two processes", t50)
    section.add(f"p50 of {len(alive)} sequential calls, one keep-alive connection", k50, "ms",
                "floor p50, one process", f50)
    section.add(f"p99 of {len(alive)} sequential calls, one keep-alive connection", k99, "ms",
                "floor p99, one process", f99)
    section.note(f"{blocks} interleaved blocks of {each} calls per kind, after {warmup} warm-up calls each; "
                 f"{bad} answers were not 200 with one result")
    section.note(f"floor of record: minimal nats-py requester + responder in one process, one connection "
                 f"(p50 {f50:.2f} ms, p99 {f99:.2f} ms); with the responder in its own process "
                 f"p50 {t50:.2f} ms, p99 {t99:.2f} ms")
    section.note(f"keep-alive: p50 {k50:.2f} ms, p99 {k99:.2f} ms; a connection each: "
                 f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return section
