"""The host's network interfaces: name, MAC, MTU, up or down, IPv4 and IPv6 addresses.

From psutil (``net_if_addrs``, ``net_if_stats``), which reads what any user may
read (netlink, /sys/class/net). ``mac`` is the link-layer address, null for an
interface without one (a tunnel, ``lo`` reports 00:00:00:00:00:00). An IPv6
address keeps no ``%zone`` suffix. An interface that vanishes while it is read
is left out.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


def interfaces(data: dict, host) -> dict:
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    out = []
    for name in sorted(set(addrs) & set(stats)):
        out.append({
            "name": name,
            "mac": _mac(addrs[name]),
            "mtu": int(stats[name].mtu),
            "up": bool(stats[name].isup),
            "addresses": [a for a in (_address(snic) for snic in addrs[name]) if a is not None],
        })
    return {"interfaces": out}


def _mac(snics) -> str | None:
    for snic in snics:
        if snic.family == psutil.AF_LINK and snic.address:
            return snic.address
    return None


def _address(snic) -> dict | None:
    family = FAMILIES.get(snic.family)
    if family is None or not snic.address:
        return None
    address = snic.address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return {"family": family, "address": str(ip), "prefixlen": prefixlen(ip, snic.netmask)}


def prefixlen(ip, netmask: str | None) -> int:
    """The prefix length of ``netmask`` (``255.255.255.0`` or ``ffff:ffff::``); a host route without one."""
    try:
        mask = ipaddress.ip_address((netmask or "").split("%", 1)[0])
    except ValueError:
        return ip.max_prefixlen
    bits = format(int(mask), f"0{ip.max_prefixlen}b") if mask.version == ip.version else ""
    ones = bits.rstrip("0")
    if not bits or "0" in ones:  # not a netmask of this family, or not contiguous
        return ip.max_prefixlen
    return len(ones)
