"""``/api/v1/system/*``: host facts, one job per request (CONTRACT §4.3)."""

from __future__ import annotations

from osapi.api.domain import OperationRoute, build_routes

TAG = "system"

SPECS = [
    OperationRoute("GET", "/system/hostname", "system.hostname.get", "hostname and labels", TAG),
    OperationRoute("GET", "/system/status", "system.status.get", "uptime, load, memory, disks and OS", TAG),
    OperationRoute("GET", "/system/uptime", "system.uptime.get", "time since boot", TAG),
    OperationRoute("GET", "/system/os", "system.os.get", "distribution and version", TAG),
    OperationRoute("GET", "/system/disk", "system.disk.get", "usage of mounted filesystems", TAG),
    OperationRoute("GET", "/system/memory", "system.memory.get", "memory in bytes", TAG),
    OperationRoute("GET", "/system/load", "system.load.get", "load averages", TAG),
]


def routes():
    return build_routes(SPECS)
