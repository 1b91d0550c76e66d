"""The top processes of the host by resident memory or by CPU use.

CPU use needs two readings: every process's CPU time is read, then again after
``CPU_SAMPLE_SECONDS`` (one short sample per call, whatever ``sort`` is, so the
CPU% column always means the same). ``cpu_percent`` is the share of one CPU over
that sample, top's convention: a process running on several CPUs may exceed 100.

Least privilege: a process the worker may not see is not listed; a field it may
not read (the owner's name, the memory of another user's process under a
hardened /proc) is null. A process that exits during the sample is left out.
``started_at`` is RFC 3339 UTC.
"""

from __future__ import annotations

import datetime as dt
import time

import psutil

CPU_SAMPLE_SECONDS = 0.1  # the "0.1s" of `osapi client system processes --help`
ATTRS = ["pid", "name", "username", "memory_info", "status", "create_time"]


def processes(data: dict, host) -> dict:
    sort, limit = data.get("sort", "memory"), data.get("limit", 10)
    procs = _prime()
    time.sleep(CPU_SAMPLE_SECONDS)
    rows = []
    for proc in procs:
        row = _row(proc)
        if row is not None:
            rows.append(row)
    key = "cpu_percent" if sort == "cpu" else "memory_rss"
    rows.sort(key=lambda r: (r[key] or 0, r["pid"]), reverse=True)
    return {"processes": rows[:limit]}


def _prime() -> list:
    """Every visible process with its first CPU reading taken."""
    procs = []
    for proc in psutil.process_iter(ATTRS, ad_value=None):
        try:
            proc.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            pass
        procs.append(proc)
    return procs


def _row(proc) -> dict | None:
    info = proc.info
    try:
        cpu = proc.cpu_percent(None)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        cpu = 0.0
    if not proc.is_running():
        return None
    memory = info.get("memory_info")
    return {
        "pid": info["pid"],
        "name": info.get("name") or "",
        "user": info.get("username"),
        "cpu_percent": round(float(cpu), 1),
        "memory_rss": int(memory.rss) if memory is not None else None,
        "status": info.get("status") or "",
        "started_at": _rfc3339(info.get("create_time")),
    }


def _rfc3339(timestamp) -> str | None:
    if not isinstance(timestamp, (int, float)):
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
