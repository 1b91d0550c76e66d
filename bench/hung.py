"""Hung host: 200 synchronous calls wait on a SIGSTOPped worker host; the API must still answer.

Two worker hosts on one appliance: ``bench-ok`` and ``bench-hung``. After one
answered call, ``bench-hung`` is stopped with SIGSTOP (it stays in the registry:
its heartbeat is long) and 200 concurrent ``GET /system/hostname?target_hostname=
bench-hung`` calls are sent, each on its own connection. Once the job store holds
all 200 jobs (every call is inside the API, waiting), ``GET /health`` and
``GET /system/hostname?target_hostname=bench-ok`` are timed in turn, each on a new
connection as a liveness probe opens it. Then the waiting calls must end with
their own 504 at ``job_timeout``; any other 5xx is counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from bench.httpclient import AsyncConnection
from bench.report import Section
from bench.stats import mib, ms, percentile

TITLE = "Hung host"
GOAL_MS = 100.0
JOB_TIMEOUT = 20.0  # seconds; the window in which the probes run
PROBE_TIMEOUT = 5.0  # seconds one probe may take before it counts as unanswered
HUNG, HEALTHY = "bench-hung", "bench-ok"


async def _call(port: int, token: str, path: str, timeout: float) -> tuple[int | None, float]:
    """One request on a new connection: (status or None when it did not answer in time, seconds)."""
    conn = AsyncConnection(port, token)
    start = time.perf_counter()
    try:
        status, _ = await asyncio.wait_for(conn.request("GET", path), timeout)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
        status = None
    finally:
        await conn.close()
    return status, time.perf_counter() - start


async def _total_jobs(port: int, token: str) -> int | None:
    conn = AsyncConnection(port, token)
    try:
        status, body = await asyncio.wait_for(conn.request("GET", "/api/v1/jobs/status"), PROBE_TIMEOUT)
        return json.loads(body)["total_jobs"] if status == 200 else None
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, KeyError):
        return None
    finally:
        await conn.close()


async def _measure(port: int, token: str, waiting: int, probes: int, rss) -> dict:
    before = await _total_jobs(port, token) or 0
    started = time.monotonic()
    hung = [asyncio.ensure_future(_call(port, token, f"/api/v1/system/hostname?target_hostname={HUNG}",
                                        JOB_TIMEOUT + 30)) for _ in range(waiting)]
    # every call is inside the API once its job is stored (bounded: the old API never got there)
    in_flight = 0
    while time.monotonic() - started < JOB_TIMEOUT / 2:
        total = await _total_jobs(port, token)
        if total is not None:
            in_flight = total - before
        if in_flight >= waiting:
            break
        await asyncio.sleep(0.2)
    settled = time.monotonic() - started
    health, other = [], []
    window_end = started + JOB_TIMEOUT - 2.0  # the probes must run while the calls still wait
    for _ in range(probes):
        if time.monotonic() >= window_end:
            break
        health.append(await _call(port, token, "/health", PROBE_TIMEOUT))
        other.append(await _call(port, token, f"/api/v1/system/hostname?target_hostname={HEALTHY}",
                                 PROBE_TIMEOUT))
    rss_waiting = rss()
    ended = await asyncio.gather(*hung)
    return {"rss_waiting": rss_waiting, "in_flight": in_flight, "settled": settled, "health": health, "other": other,
            "hung": [status for status, _ in ended], "hung_seconds": [s for _, s in ended]}


def _statuses(results) -> dict:
    counts: dict = {}
    for status in results:
        key = status if status is not None else "no answer"
        counts[key] = counts.get(key, 0) + 1
    return counts


def run(ctx) -> Section:
    section = Section("hung", TITLE)
    waiting = ctx.count(200, 40)
    probes = ctx.count(200, 20)
    env = {"OSAPI_API_SERVER_JOB_TIMEOUT": f"{JOB_TIMEOUT:g}s"}
    with ctx.appliance("hung", workers=1, hostname=HEALTHY, extra_env=env) as app:
        # a long heartbeat keeps the stopped host in the registry for the whole run
        (stopped,) = app.add_workers([HUNG], args=("--heartbeat", "60s"))
        app.wait_workers({HEALTHY, HUNG}, 60)
        status, _ = app.request("GET", f"/api/v1/system/hostname?target_hostname={HUNG}")
        if status != 200:
            raise RuntimeError(f"{HUNG} did not answer before it was stopped: HTTP {status}")
        rss_idle = app.api_rss()
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            got = asyncio.run(_measure(app.api_port, app.token, waiting, probes, app.api_rss))
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
    health_ok = [s for status, s in got["health"] if status == 200]
    other_ok = [s for status, s in got["other"] if status == 200]
    probe_statuses = [status for status, _ in got["health"] + got["other"]]
    bad = sum(1 for status in probe_statuses if status is None or status >= 500)
    hung_other_5xx = sum(1 for status in got["hung"] if status is not None and status >= 500 and status != 504)
    for name, times, sent in (("`GET /health`", health_ok, got["health"]),
                              ("`GET /system/hostname` to another host", other_ok, got["other"])):
        label = f"{name} p50, {waiting} calls waiting on a hung host"
        if not times:
            section.add(label, None, "ms", goal=f"p99 ≤ {GOAL_MS:.0f} ms", met=False)
            continue
        p50, p99 = ms(percentile(times, 50)), ms(percentile(times, 99))
        section.add(label, p50, "ms")
        section.add(label.replace(" p50,", " p99,"), p99, "ms", goal=f"≤ {GOAL_MS:.0f} ms",
                    met=p99 <= GOAL_MS and len(times) == len(sent))
    section.add("probes answered 5xx or not at all", bad, "", goal="0", met=bad == 0)
    section.add("waiting calls that ended with a 5xx other than 504", hung_other_5xx, "", goal="0",
                met=hung_other_5xx == 0)
    if rss_idle and got["rss_waiting"]:
        section.add("RSS of the API process, idle", mib(rss_idle), "MiB")
        section.add(f"RSS of the API process, {waiting} calls waiting", mib(got["rss_waiting"]), "MiB",
                    "idle", mib(rss_idle))
    section.note(f"{waiting} concurrent `GET /system/hostname?target_hostname={HUNG}` on their own connections; "
                 f"{got['in_flight']} of them were stored jobs {got['settled']:.1f} s after they were sent "
                 f"(the probes start then)")
    section.note(f"probes, each on a new connection: {len(got['health'])} × `/health` "
                 f"{_statuses(s for s, _ in got['health'])}, {len(got['other'])} × hostname of {HEALTHY} "
                 f"{_statuses(s for s, _ in got['other'])}; a probe unanswered after {PROBE_TIMEOUT:g} s "
                 "counts as not answered")
    section.note(f"the waiting calls ended with {_statuses(got['hung'])} after "
                 f"{min(got['hung_seconds']):.1f}–{max(got['hung_seconds']):.1f} s "
                 f"(job_timeout {JOB_TIMEOUT:g} s)")
    return section
