"""Start-up: how long one CLI command takes from exec to exit.

``python3 osapi.pyz client system hostname`` (a real call to a running
appliance) next to a hello-world pyz (a plain shiv pyz whose one module prints
"hi"; osapi.pyz adds ``pyzboot`` to shiv's bootstrap), both run by the same
interpreter, interleaved, with and without ``PYTHONDONTWRITEBYTECODE=1`` (set on
many machines and containers: Python then writes no ``.pyc``, so only what the
pyz compiled when it unpacked is cached). Also ``python3 osapi.pyz --version``
and ``python3 -c pass``. One untimed run of each first: a pyz unpacks (and
compiles) once, to a cache keyed by content.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench.appliance import base_env
from bench.report import Section
from bench.stats import median, ms

TITLE = "Start-up"
GOAL_MS = 120.0
HELLO_RATIO = 1.5


def _time(argv: list[str], env: dict | None, runs: int, cwd=None) -> tuple[list[float], subprocess.CompletedProcess]:
    last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
        times.append(time.perf_counter() - start)
    return times, last


def hello_pyz(outdir: Path) -> Path:
    """A plain shiv pyz that prints "hi": shiv's bootstrap (compiling at unpacking, like osapi.pyz), one module."""
    import zipfile

    import build_pyz

    shiv = build_pyz.load_shiv(build_pyz.read_pins()[1][build_pyz.SHIV_DIST], outdir)
    env = shiv.bootstrap.environment.Environment(built_at="1980-01-01 00:00:00", shiv_version=shiv.__version__,
                                                 build_id=f"hello-{shiv.__version__}", entry_point="hello:main",
                                                 compile_pyc=True)
    target = outdir / "hello.pyz"
    outdir.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw:
        raw.write(build_pyz.SHEBANG)
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("site-packages/hello/__init__.py", "def main():\n    print('hi')\n")
            for name, data in build_pyz.shiv_bootstrap_files(shiv):
                zf.writestr(name, data)
            zf.writestr("environment.json", env.to_json())
            zf.writestr("__main__.py", "import _bootstrap\n_bootstrap.bootstrap()\n")
    return target


def interleaved(commands: dict[str, tuple[list[str], dict]], runs: int, cwd=None) -> dict[str, list[float]]:
    """Each command once untimed, then ``runs`` rounds of all of them, one after the other."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, (argv, env) in commands.items():
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
            times[name].append(time.perf_counter() - start)
    return times


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
        hello = hello_pyz(ctx.workdir / "hello") if ctx.mode == "pyz" else None
        with ctx.appliance("startup") as app:
            env = app.env()
            dwb = dict(env, PYTHONDONTWRITEBYTECODE="1")
            # a few calls so the first job's one-time costs are not measured
            for _ in range(3):
                app.request("GET", "/api/v1/system/hostname")
            client = ctx.osapi_argv("client", "system", "hostname")
            commands = {"client": (client, env), "client, no .pyc writes": (client, dwb)}
            if hello is not None:  # unpacked into the bench's work dir
                shiv_root = str(ctx.workdir / "hello" / "cache")
                commands["hello"] = ([ctx.python3, str(hello)], dict(env, SHIV_ROOT=shiv_root))
                commands["hello, no .pyc writes"] = ([ctx.python3, str(hello)], dict(dwb, SHIV_ROOT=shiv_root))
            times = interleaved(commands, runs, cwd=ctx.workdir)
        value = ms(median(times["client"]))
        section.add(f"`{what} client system hostname`, median of {runs}", value, "ms",
                    "`python3 -c pass`", base_ms, goal=f"≤ {GOAL_MS:.0f} ms", met=value <= GOAL_MS)
        if hello is not None:
            for suffix in ("", ", no .pyc writes"):
                mine, ref = ms(median(times["client" + suffix])), ms(median(times["hello" + suffix]))
                label = " with `PYTHONDONTWRITEBYTECODE=1`" if suffix else ""
                section.add(f"`{what} client system hostname`{label}, median of {runs}", mine, "ms",
                            f"hello-world pyz{label}", ref, goal=f"≤ {HELLO_RATIO:g}× hello pyz",
                            met=mine <= HELLO_RATIO * ref)
        section.note("the client command makes a real HTTP call to a running appliance "
                     "(API → NATS → worker → back); its time includes that round trip")
        section.note("hello-world pyz: a plain shiv pyz (shiv's bootstrap, compiling at unpacking) around one "
                     "module that prints \"hi\", built in this run, run by the same interpreter, interleaved "
                     "with the client")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, never fails
        section.error = f"client command not measured: {exc}"
    return section
