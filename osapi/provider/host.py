"""Host facts: hostname, uptime, OS release and the combined status answer.

Everything here only reads: ``/proc`` through psutil and the kernel's boot clock,
and ``/etc/os-release``. Nothing needs privileges, so a worker may run as any user.
"""

from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

# os-release(5): /etc/os-release wins, /usr/lib/os-release is the vendor fallback.
OS_RELEASE_PATHS = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


def hostname(data: dict, host) -> dict:
    """The worker's hostname (configured or the system's) and its labels."""
    return {"hostname": host.hostname or socket.gethostname(), "labels": dict(host.labels)}


# ---------------------------------------------------------------- uptime


def readable_uptime(seconds: float) -> str:
    """``4 days, 3 hours, 12 minutes``; below one minute ``42 seconds``.

    Seconds are left out once the uptime reaches a minute: nobody reads them, and
    they would make two answers a second apart look different.
    """
    seconds = int(seconds)
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    if parts:
        return ", ".join(parts)
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def uptime_seconds() -> float:
    """Seconds since boot from the kernel's CLOCK_BOOTTIME (counts suspend, ignores
    wall-clock jumps such as an NTP step); psutil's boot time as a fallback."""
    try:
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME))
    except (AttributeError, OSError):  # not Linux
        import psutil

        return max(0.0, time.time() - psutil.boot_time())


def uptime(data: dict, host) -> dict:
    up = uptime_seconds()
    return {"uptime": readable_uptime(up), "uptime_seconds": round(up, 3)}


# ---------------------------------------------------------------- OS release


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5); values may be shell-quoted."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:  # unbalanced quote: take the text as it is
            words = [raw.strip("\"'")]
        fields[key.strip()] = " ".join(words)
    return fields


def read_os_info(paths=OS_RELEASE_PATHS) -> dict:
    """``{distribution, version}``.

    distribution is ``NAME`` (``Debian GNU/Linux``), else ``ID``; version is
    ``VERSION_ID`` (``12``), else ``BUILD_ID`` (rolling releases such as Arch say
    ``rolling``), else empty. Without a readable os-release file the answer is the
    kernel's name (``Linux``) and an empty version: a host that hides its release
    is not a failed job.
    """
    for path in paths:
        try:
            fields = parse_os_release(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        distribution = fields.get("NAME") or fields.get("ID") or ""
        version = fields.get("VERSION_ID") or fields.get("BUILD_ID") or ""
        if distribution:
            return {"distribution": distribution, "version": version}
    import os

    return {"distribution": os.uname().sysname, "version": ""}


def os_info(data: dict, host) -> dict:
    return read_os_info()


# ---------------------------------------------------------------- everything at once


def status(data: dict, host) -> dict:
    """Uptime, load, memory, disks and OS release in one answer (GET /system/status)."""
    from osapi.provider import disk, load, memory

    up = uptime(data, host)
    return {
        "uptime": up["uptime"],
        "uptime_seconds": up["uptime_seconds"],
        "load_average": load.load(data, host),
        "memory": memory.memory(data, host),
        "disks": disk.disks(data, host)["disks"],
        "os_info": read_os_info(),
    }
