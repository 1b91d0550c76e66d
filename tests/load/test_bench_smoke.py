"""The benchmark code must not rot: a tiny ``bench/run.py --quick`` run writes a report with numbers.

This asserts that the report is written and holds measured figures, machine and
versions -- never a timing threshold (benchmarks report, they do not fail).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)? (?:ms|jobs/s|MiB)"


def _has_command(name: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "osapi", "--help"], capture_output=True, text=True, timeout=60)
    return re.search(rf"^\s{{4}}{name}\s", out.stdout, re.M) is not None


@pytest.mark.timeout(120)
def test_quick_bench_writes_a_report_with_numbers(tmp_path):
    out = tmp_path / "results.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--source", "--only", "roundtrip,profile,startup",
         "-o", str(out), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# osapi benchmark results"), text[:500]
    for label in ("| nproc |", "| CPU |", "| memory |", "| nats-server |", "| nats-py |", "| osapi |"):
        assert label in text, f"{label} missing from the report:\n{text}"
    rows = [line for line in text.splitlines() if line.startswith("| Start-up |") or line.startswith("| Round trip |")]
    assert any(re.search(NUMBER, r) for r in rows if "--version" in r), text
    assert any(re.search(NUMBER, r) for r in rows if "floor" in r), text
    if _has_command("job"):
        # the whole system is there: the real round trip is measured next to its floor
        p50 = [r for r in rows if "p50 of" in r]
        assert p50 and re.search(NUMBER, p50[0]) and "×" in p50[0], text
        stages = [line for line in text.splitlines() if line.startswith("| Hot path profile |")]
        assert len(stages) > 10 and all(re.search(NUMBER, r) for r in stages), text


# ---------------------------------------------------------------- which python runs the driver


def _bench_run():
    import bench.run  # the repository root is an import root (pyproject.toml, pythonpath)

    return bench.run


def test_the_venv_is_told_apart_by_its_prefix_not_by_its_binary(tmp_path):
    """A venv's bin/python is a symlink to the very binary ``python3`` is (pyenv, a system
    python): only ``sys.prefix`` says whether the driver already runs in the venv."""
    binary = Path(sys.executable).resolve()  # the real interpreter behind this test's venv
    venv = tmp_path / "venv"
    subprocess.run([str(binary), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120,
                   capture_output=True)
    assert (venv / "bin" / "python").resolve() == binary  # the case of the defect
    outer_prefix = subprocess.run([str(binary), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                  text=True, check=True, timeout=60).stdout.strip()
    inner_prefix = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    run = _bench_run()
    # plain python3, outside: run again with the venv's python
    assert run.venv_python(outer_prefix, venv, {}) == venv / "bin" / "python"
    # inside the venv (same binary, other prefix): no re-exec, no loop
    assert run.venv_python(inner_prefix, venv, {}) is None
    (tmp_path / "link").symlink_to(venv)
    assert run.venv_python(str(tmp_path / "link"), venv, {}) is None
    # tried once already, or no venv at all: give up with the real ImportError
    assert run.venv_python(outer_prefix, venv, {"BENCH_RUN_REEXECUTED": "1"}) is None
    assert run.venv_python(outer_prefix, tmp_path / "no-venv", {}) is None


def test_python3_outside_the_venv_runs_the_driver_in_the_venv(tmp_path):
    """``python3 bench/run.py`` with the interpreter behind the repository's venv, which may
    lack nats-py: the driver re-executes itself in ``.venv`` (where this test runs)."""
    binary = Path(sys.executable).resolve()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OSAPI_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "BENCH_RUN_REEXECUTED")}
    proc = subprocess.run([str(binary), str(REPO / "bench" / "run.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: ")


def test_every_benchmark_module_imports():
    """A refactor that moves what a benchmark imports breaks it only when someone runs it: bench/fleet.py
    imported names bench.appliance no longer had (moved to testkit) and nobody noticed for a day."""
    import importlib

    modules = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")
    assert "fleet" in modules and "fleetfloor" in modules
    failed = {}
    for name in modules:
        try:
            importlib.import_module(f"bench.{name}")
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed
