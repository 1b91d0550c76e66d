"""Throughput: jobs/s completed for ``POST /api/v1/jobs`` with 16 concurrent clients.

Once with 1 and once with 4 worker processes of one host. The clock runs from
the first POST to the moment the last submitted job's ``completed`` event is
seen (``bench.load.CompletionWatch``). The load generator runs on the same two
cores; its own CPU time is reported so the figure can be read honestly.
"""

from __future__ import annotations

import asyncio
import resource

from bench.load import CompletionWatch, submit_jobs
from bench.report import Section

TITLE = "Throughput"
CLIENTS = 16
GOAL = 500.0


def tree_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process of the appliance, by role."""
    import psutil

    out: dict[str, float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = ("nats-server" if "nats-server" in cmd or proc.name().startswith("nats") else
                "api" if "api server start" in cmd else
                "worker" if "worker start" in cmd else
                "supervise" if "supervise" in cmd else proc.name())
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(app, total: int, warmup: int) -> dict:
    watch = await CompletionWatch(app.nats_url, app.nats_token).start()
    try:
        warm = await submit_jobs(app.api_port, app.token, concurrency=CLIENTS, total=warmup)
        await watch.wait_for(warm.job_ids, 60)
        cpu0 = _cpu_seconds()
        pids = app.pids()
        tree0 = tree_cpu(pids)
        sub = await submit_jobs(app.api_port, app.token, concurrency=CLIENTS, total=total)
        finished = await watch.wait_for(sub.job_ids, 120 + total / 50)
        cpu = _cpu_seconds() - cpu0
        tree1 = tree_cpu(pids)
        done = [watch.done[j] for j in sub.job_ids if j in watch.done]
        end = max(done) if done else sub.last
        failed = sum(1 for j in sub.job_ids if watch.final_status.get(j) == "failed")
        return {
            "submitted": len(sub.job_ids), "statuses": sub.statuses, "errors": sub.errors,
            "completed": len(done), "failed": failed, "all_finished": finished,
            "seconds": end - sub.first, "submit_seconds": sub.last - sub.first, "driver_cpu": cpu,
            "tree_cpu": {k: tree1.get(k, 0.0) - v for k, v in tree0.items()},
        }
    finally:
        await watch.close()


def run(ctx) -> Section:
    section = Section("throughput", TITLE)
    total = ctx.count(3000, 150)
    warmup = ctx.count(200, 20)
    results = {}
    for workers in (1, 4):
        with ctx.appliance(f"throughput-{workers}", workers=workers) as app:
            results[workers] = r = asyncio.run(_measure(app, total, warmup))
        rate = r["completed"] / r["seconds"] if r["seconds"] > 0 else 0.0
        r["rate"] = rate
        section.note(
            f"{workers} worker process(es): {r['submitted']} jobs accepted of {total} POSTs "
            f"(HTTP statuses {r['statuses']}), {r['completed']} finished ({r['failed']} failed) in "
            f"{r['seconds']:.2f} s; POSTs alone took {r['submit_seconds']:.2f} s "
            f"({r['submitted'] / r['submit_seconds']:.0f}/s); load generator used "
            f"{r['driver_cpu']:.1f} s CPU ({100 * r['driver_cpu'] / r['seconds']:.0f}% of one core)"
            + ("" if r["all_finished"] else " — **not every job finished in time**")
        )
        per_job = ", ".join(f"{role} {1000 * sec / max(1, r['completed']):.2f} ms"
                            for role, sec in sorted(r["tree_cpu"].items(), key=lambda kv: -kv[1]))
        section.note(f"{workers} worker process(es), CPU per job by process (user+system): {per_job}; "
                     f"load generator {1000 * r['driver_cpu'] / max(1, r['completed']):.2f} ms")
        if r["errors"]:
            section.note(f"{workers} worker(s), first errors: {r['errors'][:3]}")
    one, four = results[1]["rate"], results[4]["rate"]
    section.add(f"jobs/s, {CLIENTS} clients, 1 worker process", one, "jobs/s")
    section.add(f"jobs/s, {CLIENTS} clients, 4 worker processes", four, "jobs/s",
                "1 worker process", one, goal=f"≥ {GOAL:.0f} jobs/s (on 2 cores)", met=four >= GOAL)
    return section
