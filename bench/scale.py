"""Scale: 500 simulated worker hosts answering one ``_all`` query; listing 10,000 jobs.

Part 1 -- 500 hosts. Each simulated host is a real NATS connection in one
asyncio process (``bench/simworkers.py``) running osapi's own worker code; the
API's broadcast must come back with exactly 500 answers, as soon as the last
one is in.

Part 2 -- ``GET /api/v1/jobs?limit=100`` with 10,000 jobs stored (submitted
through the API, no worker running so they stay stored): p50 over sequential
calls. Listing one page must not read every job.
"""

from __future__ import annotations

import asyncio
import json
import time

from bench.httpclient import Connection
from bench.load import submit_jobs
from bench.report import Section
from bench.stats import ms, percentile

TITLE = "Scale"
LIST_GOAL_MS = 50.0


def _list_jobs(ctx, section: Section) -> None:
    stored = ctx.count(10000, 500)
    calls = ctx.count(50, 10)
    with ctx.appliance("scale-list", workers=0) as app:
        start = time.perf_counter()
        sub = asyncio.run(submit_jobs(app.api_port, app.token, concurrency=16, total=stored))
        fill = time.perf_counter() - start
        conn = Connection(app.api_port, app.token)
        times, total_items, wrong = [], None, 0
        try:
            for i in range(3 + calls):
                t0 = time.perf_counter()
                status, body = conn.request("GET", "/api/v1/jobs?limit=100")
                elapsed = time.perf_counter() - t0
                page = json.loads(body) if status == 200 else {}
                total_items = page.get("total_items")
                if status != 200 or len(page.get("items", [])) != 100:
                    wrong += 1
                if i >= 3:
                    times.append(elapsed)
            # the last page and the statistics are the other places that could read everything
            t0 = time.perf_counter()
            status_deep, _ = conn.request("GET", f"/api/v1/jobs?limit=100&offset={max(0, stored - 100)}")
            deep = time.perf_counter() - t0
            t0 = time.perf_counter()
            status_stats, _ = conn.request("GET", "/api/v1/jobs/status")
            stats = time.perf_counter() - t0
        finally:
            conn.close()
    p50 = ms(percentile(times, 50))
    section.add(f"`GET /jobs?limit=100` p50, {len(sub.job_ids)} jobs stored", p50, "ms",
                goal=f"≤ {LIST_GOAL_MS:.0f} ms", met=p50 <= LIST_GOAL_MS)
    section.add(f"`GET /jobs?limit=100&offset={max(0, stored - 100)}` (last page), once", ms(deep), "ms",
                "first page p50", p50)
    section.add("`GET /jobs/status` with the same store, once", ms(stats), "ms")
    section.note(f"stored {len(sub.job_ids)} jobs through POST /jobs in {fill:.1f} s "
                 f"(HTTP statuses {sub.statuses}); list reported total_items={total_items}; "
                 f"{wrong} pages were not 200 with 100 items; last page HTTP {status_deep}, "
                 f"statistics HTTP {status_stats}")


def run(ctx) -> Section:
    section = Section("scale", TITLE)
    errors = []
    try:
        from bench import simworkers

        simworkers.run(ctx, section)
    except Exception as exc:  # noqa: BLE001 - report and go on to part 2
        errors.append(f"500 simulated workers: {type(exc).__name__}: {exc}")
    try:
        _list_jobs(ctx, section)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"job listing: {type(exc).__name__}: {exc}")
    if errors:
        section.error = "; ".join(errors)
    return section
