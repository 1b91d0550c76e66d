"""Footprint: RSS of the whole appliance tree, idle and under load; size of osapi.pyz.

The tree is ``osapi supervise`` and every descendant (supervisord, nats-server,
api, worker) -- or, from the source tree, the processes started one by one.
RSS counts pages shared between processes once per process; PSS (proportional
set size) splits them, so both are given.
"""

from __future__ import annotations

import asyncio
import threading
import time

from bench.load import submit_jobs
from bench.report import Section
from bench.stats import mib

TITLE = "Footprint"
IDLE_GOAL_MB = 120.0
PYZ_GOAL_MB = 12.0


def tree_memory(pids: list[int]) -> tuple[int, int, dict[str, int]]:
    """(RSS sum, PSS sum, RSS by process name) in bytes."""
    import psutil

    rss = pss = 0
    by_name: dict[str, int] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            info = proc.memory_full_info()
            name = " ".join(proc.cmdline()[1:5]) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        by_name[f"{pid} {name}"[:80]] = info.rss
    return rss, pss, by_name


def run(ctx) -> Section:
    section = Section("footprint", TITLE)
    seconds = ctx.count(15, 3)
    with ctx.appliance("footprint", workers=1) as app:
        for _ in range(5):   # every code path loaded once: what "idle" means after first use
            app.request("GET", "/api/v1/system/hostname")
        time.sleep(ctx.count(5, 1))
        idle_rss, idle_pss, by_name = tree_memory(app.pids())
        peak = [0, 0]
        peak_by_name: dict[str, int] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss, pss, names = tree_memory(app.pids())
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
                for name, value in names.items():
                    peak_by_name[name] = max(peak_by_name.get(name, 0), value)
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            sub = asyncio.run(submit_jobs(app.api_port, app.token, concurrency=16, seconds=seconds))
        finally:
            stop.set()
            sampler.join(10)
    idle = mib(idle_rss)
    section.add("RSS of the whole tree, idle, 1 worker", idle, "MiB", goal=f"≤ {IDLE_GOAL_MB:.0f} MiB",
                met=idle <= IDLE_GOAL_MB)
    section.add("PSS of the whole tree, idle, 1 worker", mib(idle_pss), "MiB")
    section.add(f"peak RSS under load (16 clients, {seconds} s)", mib(peak[0]), "MiB", "idle RSS", idle)
    section.note(f"under load: {len(sub.job_ids)} jobs accepted, HTTP statuses {sub.statuses}; "
                 f"peak PSS {mib(peak[1]):.1f} MiB")
    section.note("idle RSS by process: " + "; ".join(f"`{k}` {mib(v):.1f} MiB" for k, v in by_name.items()))
    section.note("peak RSS by process under load: "
                 + "; ".join(f"`{k}` {mib(v):.1f} MiB" for k, v in peak_by_name.items()))
    if ctx.pyz is not None:
        size = mib(ctx.pyz.stat().st_size)
        section.add("size of osapi.pyz", size, "MiB", goal=f"≤ {PYZ_GOAL_MB:.0f} MiB", met=size <= PYZ_GOAL_MB)
    else:
        section.note("osapi.pyz not built in this run (build_pyz.py or supervise not there): size not measured")
    return section
