"""Ping from the worker's host with icmplib.

As root the worker uses raw ICMP sockets (privileged mode). Otherwise it uses
the kernel's unprivileged ICMP datagram sockets, which Linux allows only to
groups inside ``net.ipv4.ping_group_range``; when the worker's group is outside
it, the job fails with a message saying so and how to widen it.

Timing, chosen so a job stays short (at most about 3 s for count 10):
packets go every ``INTERVAL`` = 0.2 s and each waits at most ``TIMEOUT`` = 1 s
for its reply. Hostnames are resolved on the worker (IPv4 first, like icmplib);
a name that does not resolve fails the job naming it.

Result: ``packets_sent``, ``packets_received``, ``packet_loss`` (percent,
0-100), ``min_rtt_ms``/``avg_rtt_ms``/``max_rtt_ms`` (milliseconds, 0.0 when no
reply came back).
"""

from __future__ import annotations

import os

from osapi.provider import ProviderError

INTERVAL = 0.2
TIMEOUT = 1.0
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


def _group_range_hint() -> str:
    try:
        with open(PING_GROUP_RANGE, encoding="ascii") as f:
            current = " ".join(f.read().split())
    except OSError:
        current = "unknown"
    gid = os.getegid()
    return (
        f"unprivileged ICMP sockets are not allowed for group id {gid}: net.ipv4.ping_group_range is "
        f"'{current}'; allow it with e.g. 'sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"' "
        "or run the worker as root"
    )


def ping(data: dict, host) -> dict:
    import icmplib

    address = data["address"]
    count = int(data.get("count") or 3)
    privileged = os.geteuid() == 0
    try:
        result = icmplib.ping(address, count=count, interval=INTERVAL, timeout=TIMEOUT, privileged=privileged)
    except icmplib.NameLookupError:
        raise ProviderError(f"cannot resolve {address!r}: no such host name") from None
    except icmplib.SocketPermissionError:
        if privileged:
            raise ProviderError("cannot open a raw ICMP socket although running as root (missing CAP_NET_RAW?)") \
                from None
        raise ProviderError(_group_range_hint()) from None
    except icmplib.SocketBroadcastError:
        raise ProviderError(f"{address} is a broadcast address; pinging it is not allowed") from None
    except (icmplib.ICMPLibError, OSError) as exc:
        raise ProviderError(f"cannot ping {address}: {exc}") from None
    received = int(result.packets_received)
    sent = int(result.packets_sent)
    return {
        "packets_sent": sent,
        "packets_received": received,
        "packet_loss": round(float(result.packet_loss) * 100.0, 2),
        "min_rtt_ms": round(float(result.min_rtt), 3) if received else 0.0,
        "avg_rtt_ms": round(float(result.avg_rtt), 3) if received else 0.0,
        "max_rtt_ms": round(float(result.max_rtt), 3) if received else 0.0,
    }
