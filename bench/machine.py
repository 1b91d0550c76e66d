"""What the figures were measured on: machine, versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "nproc": str(usable),
        "CPU": _cpu_model(),
        "memory": _mem_total(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(python3: str, nats_binary: str | None) -> dict:
    import osapi

    out = {
        "python3 that runs osapi.pyz": f"{_run([python3, '--version']).replace('Python ', '')} ({python3})",
        "python (bench driver)": platform.python_version(),
        "osapi": osapi.__version__,
        "nats-server": _run([nats_binary, "--version"]) if nats_binary else "not found",
        "nats-py": _dist("nats-py"),
        "waitress": _dist("waitress"),
        "bottle": _dist("bottle"),
    }
    return out


def git_commit(repo) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        # what runs: the package and the build script, untracked files included
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "osapi", "build_pyz.py"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
