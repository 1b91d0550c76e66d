"""Round trip: sequential ``GET /api/v1/system/hostname`` to one host, next to the floor.

The floor (``bench/floor.py``) runs on the same nats-server, in the same run:
KV put, stream publish, a responder process reads the job and writes the
result, the client sees it through a KV watch. The API call does the same plus
HTTP, JWT, validation, events and the registry; the goal is p50 ≤ 3× the floor.
One keep-alive HTTP connection, like any API client that reuses connections.
"""

from __future__ import annotations

import json
import time

from bench import floor
from bench.appliance import Appliance, NotAvailable
from bench.httpclient import Connection
from bench.report import Section
from bench.stats import ms, percentile

TITLE = "Round trip"
RATIO_GOAL = 3.0


def run(ctx) -> Section:
    section = Section("roundtrip", TITLE)
    calls = ctx.count(500, 30)
    warmup = ctx.count(20, 5)
    try:
        ctx.require("api", "job")
    except NotAvailable as exc:
        section.error = f"API round trip not measured: {exc}"
        with Appliance(ctx.workdir / "floor", mode="source", api=False, workers=0) as nats_only:
            floor_times = floor.measure(nats_only.nats_url, nats_only.nats_token, calls, warmup)
        f50, f99 = ms(percentile(floor_times, 50)), ms(percentile(floor_times, 99))
        section.add("floor p50 (reference alone)", f50, "ms")
        section.add("floor p99 (reference alone)", f99, "ms")
        return section
    with ctx.appliance("roundtrip") as app:
        conn = Connection(app.api_port, app.token)
        times = []
        bad = 0
        try:
            for i in range(warmup + calls):
                start = time.perf_counter()
                status, body = conn.request("GET", "/api/v1/system/hostname")
                elapsed = time.perf_counter() - start
                if status != 200 or len(json.loads(body)["results"]) != 1:
                    bad += 1
                if i >= warmup:
                    times.append(elapsed)
        finally:
            conn.close()
        floor_times = floor.measure(app.nats_url, app.nats_token, calls, warmup)
    f50, f99 = ms(percentile(floor_times, 50)), ms(percentile(floor_times, 99))
    p50, p99 = ms(percentile(times, 50)), ms(percentile(times, 99))
    section.add(f"p50 of {calls} sequential calls", p50, "ms", "floor p50", f50,
                goal=f"≤ {RATIO_GOAL:.0f}× floor", met=p50 <= RATIO_GOAL * f50)
    section.add(f"p99 of {calls} sequential calls", p99, "ms", "floor p99", f99)
    section.note(f"{calls} calls after {warmup} warm-up calls; {bad} answers were not 200 with one result")
    section.note("floor: minimal nats-py client + responder process on the same nats-server "
                 f"(p50 {f50:.2f} ms, p99 {f99:.2f} ms)")
    return section
