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
