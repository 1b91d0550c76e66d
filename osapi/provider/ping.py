"""Ping from the worker's host with icmplib.

As root the worker uses raw ICMP sockets (privileged mode). Otherwise it uses
the kernel's unprivileged ICMP datagram sockets, which Linux allows only to
groups inside ``net.ipv4.ping_group_range``; when the worker's group is outside
it, the job fails with a message saying so and how to widen it.

The echo loop is icmplib's ``ping`` with one difference: a packet the kernel
refuses to send (network unreachable, …) is an error that names the reason,
not a silent "0 sent, 0 % loss". ``packet_loss`` is over the packets sent.

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
import time

from osapi.domain.operations import check_address
from osapi.provider import ProviderError, checked_word

INTERVAL = 0.2
TIMEOUT = 1.0
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


def _group_range_hint() -> str:
    try:
        with open(PING_GROUP_RANGE, "rb") as f:
            current = " ".join(f.read().decode("ascii", "replace").split())
    except OSError:
        current = "unknown"
    gid = os.getegid()
    return (
        f"unprivileged ICMP sockets are not allowed for group id {gid}: net.ipv4.ping_group_range is "
        f"'{current}'; allow it with e.g. 'sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"' "
        "or run the worker as root"
    )


def _echo(target: str, count: int, privileged: bool) -> tuple[int, list[float], Exception | None]:
    """Send ``count`` echo requests; ``(sent, rtts in ms, first send error)``.

    icmplib's own ``ping`` swallows send errors and would report "0 sent, 0 %
    loss" for an unreachable network; this loop keeps the kernel's reason.
    """
    import icmplib
    from icmplib.utils import unique_identifier

    sock_class = icmplib.ICMPv6Socket if icmplib.is_ipv6_address(target) else icmplib.ICMPv4Socket
    ident = unique_identifier()
    sent, rtts, send_error = 0, [], None
    with sock_class(None, privileged) as sock:
        for sequence in range(count):
            if sequence:
                time.sleep(INTERVAL)
            request = icmplib.ICMPRequest(destination=target, id=ident, sequence=sequence)
            try:
                sock.send(request)
            except icmplib.SocketBroadcastError:
                raise
            except icmplib.ICMPSocketError as exc:
                send_error = send_error or exc
                continue
            sent += 1
            try:
                reply = sock.receive(request, TIMEOUT)
                reply.raise_for_status()  # e.g. destination unreachable: a lost packet
            except icmplib.ICMPLibError:
                continue
            rtts.append((reply.time - request.time) * 1000.0)
    return sent, rtts, send_error


def ping(data: dict, host) -> dict:
    import icmplib

    address = checked_word(check_address, data["address"], "address")
    count = int(data.get("count") or 3)
    privileged = os.geteuid() == 0
    try:
        target = icmplib.resolve(address)[0] if icmplib.is_hostname(address) else address
        sent, rtts, send_error = _echo(target, count, privileged)
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
    if sent == 0:
        raise ProviderError(f"cannot ping {address}: no packet could be sent: {send_error}")
    received = len(rtts)
    return {
        "packets_sent": sent,
        "packets_received": received,
        "packet_loss": round((sent - received) * 100.0 / sent, 2),
        "min_rtt_ms": round(min(rtts), 3) if rtts else 0.0,
        "avg_rtt_ms": round(sum(rtts) / received, 3) if rtts else 0.0,
        "max_rtt_ms": round(max(rtts), 3) if rtts else 0.0,
    }
