"""Start-up: how long one CLI command takes from exec to exit.

``python3 osapi.pyz client system hostname`` (a real call to a running
appliance) and ``python3 osapi.pyz --version``, median of N runs, next to
``python3 -c pass`` with the same interpreter. One untimed run first: the pyz
unpacks its native parts once, to a cache keyed by content.
"""

from __future__ import annotations

import subprocess
import time

from bench.appliance import base_env
from bench.report import Section
from bench.stats import median, ms

TITLE = "Start-up"
GOAL_MS = 120.0


def _time(argv: list[str], env: dict | None, runs: int, cwd=None) -> tuple[list[float], subprocess.CompletedProcess]:
    last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
        times.append(time.perf_counter() - start)
    return times, last


def run(ctx) -> Section:
    section = Section("startup", TITLE)
    runs = ctx.count(10, 3)
    base, _ = _time([ctx.interpreter, "-c", "pass"], base_env(), runs)
    base_ms = ms(median(base))
    what = "python3 osapi.pyz" if ctx.mode == "pyz" else "python -m osapi (source tree)"
    version, proc = _time(ctx.osapi_argv("--version"), base_env(), runs, cwd=ctx.workdir)
    if proc.returncode != 0:
        section.error = f"`{what} --version` failed: {proc.stderr.strip()[-300:]}"
    section.add(f"`{what} --version`, median of {runs}", ms(median(version)), "ms",
                "`python3 -c pass`", base_ms)
    section.note(f"`{ctx.interpreter} -c pass` median {base_ms:.1f} ms; `--version` printed "
                 f"{proc.stdout.strip()!r}")
    try:
        ctx.require("client")
        with ctx.appliance("startup") as app:
            env = app.env()
            # a few calls so the first job's one-time costs are not measured
            for _ in range(3):
                app.request("GET", "/api/v1/system/hostname")
            times, proc = _time(ctx.osapi_argv("client", "system", "hostname"), env, runs, cwd=ctx.workdir)
        if proc.returncode != 0:
            raise RuntimeError(f"`client system hostname` exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        value = ms(median(times))
        section.add(f"`{what} client system hostname`, median of {runs}", value, "ms",
                    "`python3 -c pass`", base_ms, goal=f"≤ {GOAL_MS:.0f} ms", met=value <= GOAL_MS)
        section.note("the client command makes a real HTTP call to a running appliance "
                     "(API → NATS → worker → back); its time includes that round trip")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, never fails
        section.error = f"client command not measured: {exc}"
    return section
