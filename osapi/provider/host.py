"""Host facts: hostname, uptime (more arrive with the providers issue)."""

from __future__ import annotations

import socket
import time


def hostname(data: dict, host) -> dict:
    return {"hostname": host.hostname or socket.gethostname(), "labels": dict(host.labels)}


def _readable_uptime(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return ", ".join(parts) if parts else f"{seconds} seconds"


def uptime(data: dict, host) -> dict:
    import psutil

    up = max(0.0, time.time() - psutil.boot_time())
    return {"uptime": _readable_uptime(up), "uptime_seconds": round(up, 3)}
