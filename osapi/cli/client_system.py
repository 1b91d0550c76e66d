"""``osapi client system …``: hostname, status, uptime, OS, disks, memory, load of hosts."""

from __future__ import annotations

from osapi.cli import Context
from osapi.cli.client import HOSTS_EXIT_HELP, add_target, api, command, group, show_results

# command -> (API path segment, operation type, help)
SYSTEM = {
    "hostname": ("hostname", "system.hostname.get", "the host's name and the worker's labels"),
    "status": ("status", "system.status.get", "uptime, load, memory, disks and OS in one view"),
    "uptime": ("uptime", "system.uptime.get", "time since boot"),
    "os": ("os", "system.os.get", "distribution and version"),
    "disk": ("disk", "system.disk.get", "usage of the mounted filesystems"),
    "memory": ("memory", "system.memory.get", "memory in use"),
    "load": ("load", "system.load.get", "1, 5 and 15 minute load averages"),
}

DISK_HELP = """\
Disks: SIZE is the filesystem's total, which includes the blocks reserved for
root, so USED + FREE may be less than SIZE. USE% is USED / (USED + FREE),
rounded up, as df computes it.
"""


def register(client) -> None:
    system = group(client, "system", "query hosts: hostname, status, uptime, os, disk, memory, load",
                   epilog=HOSTS_EXIT_HELP)
    for name, (what, op_type, help) in SYSTEM.items():
        epilog = DISK_HELP + "\n" + HOSTS_EXIT_HELP if name in ("disk", "status") else HOSTS_EXIT_HELP
        parser = command(system, name, help, lambda ctx, w=what, t=op_type: query(ctx, w, t), epilog=epilog)
        add_target(parser)


def query(ctx: Context, what: str, op_type: str) -> None:
    show_results(ctx, api(ctx).system(what, ctx.args.target), op_type)
