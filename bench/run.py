#!/usr/bin/env python3
"""Run osapi's benchmarks against a real appliance on loopback; write bench/results.md.

    python3 bench/run.py            # everything, full counts (several minutes)
    python3 bench/run.py --quick    # small counts: proves the code works, not for quoting
    python3 bench/run.py --only startup,roundtrip -o /tmp/r.md

Benchmarks report; they never fail: a benchmark that cannot run (a part of osapi
not there yet, an error) is written into the report with the reason, and the
exit status stays 0 unless the report itself cannot be written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"


def venv_python(prefix: str, venv: Path = VENV, environ=os.environ) -> Path | None:
    """The venv's python to run this script again with, or None: there is no venv, this
    already runs in it, or it was tried once (``BENCH_RUN_REEXECUTED``).

    "Runs in it" is decided by ``sys.prefix`` (passed as ``prefix``), not by the
    executable: a venv's ``bin/python`` is a symlink to the very binary ``python3``
    is (a pyenv or system python), so resolved executables cannot tell them apart.
    """
    python = venv / "bin" / "python"
    if not python.is_file() or environ.get("BENCH_RUN_REEXECUTED"):
        return None
    if Path(prefix).resolve() == venv.resolve():
        return None
    return python


def _reexec_in_venv() -> None:
    """The driver needs nats-py and psutil: use the repository's venv when python3 lacks them."""
    try:
        import nats  # noqa: F401
        import psutil  # noqa: F401
    except ImportError:
        python = venv_python(sys.prefix)
        if python is not None:
            os.environ["BENCH_RUN_REEXECUTED"] = "1"
            os.execv(str(python), [str(python), *sys.argv])
        raise


if __name__ == "__main__":
    _reexec_in_venv()
    # the script's own folder must not shadow anything; the repository root is the import root
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.appliance import which_python3  # noqa: E402

# In report order. Each module has TITLE and run(ctx) -> report.Section.
BENCHMARKS = {
    "roundtrip": "bench.roundtrip",
    "profile": "bench.profile",
    "throughput": "bench.throughput",
    "broadcast": "bench.broadcast",
    "scale": "bench.scale",
    "fleet": "bench.fleet",
    "hung": "bench.hung",
    "events": "bench.events",
    "startup": "bench.startup",
    "footprint": "bench.footprint",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test, not for quoting)")
    parser.add_argument("--only", default="", metavar="A,B",
                        help=f"run only these benchmarks (of: {', '.join(BENCHMARKS)})")
    parser.add_argument("-o", "--output", default=str(REPO / "bench" / "results.md"), metavar="PATH",
                        help="where to write the report (default: bench/results.md)")
    parser.add_argument("--source", action="store_true",
                        help="start the components from the source tree even when osapi.pyz can be built")
    parser.add_argument("--python3", default=which_python3(), metavar="PATH",
                        help="the bare interpreter that runs osapi.pyz (default: python3 on PATH)")
    parser.add_argument("--workdir", default="", metavar="DIR",
                        help="keep state and logs here (default: a temp dir, removed afterwards)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.only = only or list(BENCHMARKS)
    return args


def run_one(name: str, ctx) -> report.Section:
    start = time.perf_counter()
    module = importlib.import_module(BENCHMARKS[name])
    try:
        section = module.run(ctx)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports its failure, the run goes on
        section = report.Section(name, getattr(module, "TITLE", name))
        section.error = f"{type(exc).__name__}: {exc}"
        trace = traceback.format_exc()
        section.note("traceback: `" + trace.strip().splitlines()[-1] + "`")
        print(trace, file=sys.stderr)
    section.seconds = time.perf_counter() - start
    return section


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import context, machine

    started = _dt.datetime.now(_dt.timezone.utc)
    load_at_start = os.getloadavg()
    t0 = time.perf_counter()
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="osapi-bench-")
        workdir = Path(tmp.name)
    try:
        ctx, notes = context.detect(workdir, args.quick, args.source, args.python3)
        print("bench: priming (one untimed start) …", file=sys.stderr, flush=True)
        notes.append(ctx.prime())
        sections = []
        for name in args.only:
            print(f"bench: {name} …", file=sys.stderr, flush=True)
            section = run_one(name, ctx)
            status = section.error or "ok"
            print(f"bench: {name} done in {section.seconds:.1f} s ({status})", file=sys.stderr, flush=True)
            sections.append(section)
        from osapi import natsd

        try:
            nats_binary = str(natsd.find_binary())
        except Exception:  # noqa: BLE001
            nats_binary = None
        mode = ("`python3 osapi.pyz supervise` (built by build_pyz.py in this run)" if ctx.mode == "pyz"
                else "components started from the source tree (`python -m osapi api server start`, "
                     "`python -m osapi job worker start`, nats-server with osapi's rendered configuration)")
        if notes:
            mode += " — " + "; ".join(notes)
        versions = machine.versions(args.python3, nats_binary)
        versions["osapi commit"] = machine.git_commit(REPO)
        facts = machine.machine()
        # other work on the machine moves every figure: say how busy it was
        facts["load average (1, 5, 15 min)"] = (
            f"{' / '.join(f'{x:.2f}' for x in load_at_start)} at start, "
            f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
        text = report.render(sections, facts, versions, mode, args.quick, started,
                             time.perf_counter() - t0)
        report.write(Path(args.output), text)
        print(f"bench: wrote {args.output}", file=sys.stderr)
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
