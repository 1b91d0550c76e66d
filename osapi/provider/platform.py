"""What kind of host this is, for the factories that pick a provider variant.

Small probes with no side effects: does a network interface exist, does
systemd-resolved manage name resolution here.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from pathlib import Path

from osapi.provider import ProviderError

RESOLVED_RUN_DIR = Path("/run/systemd/resolve")
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})


def interface_names() -> set[str]:
    """Every network interface of this host (up or down, with or without addresses)."""
    import psutil

    names = set(psutil.net_if_addrs()) | set(psutil.net_if_stats())
    try:
        names |= {name for _index, name in socket.if_nameindex()}
    except OSError:
        pass
    return names


def check_interface(name: str) -> str:
    """``name`` if the interface exists, else ``ProviderError`` naming it and the real ones."""
    names = interface_names()
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ProviderError(f"network interface {name!r} does not exist on this host (interfaces: {known})")
    return name


def _nameservers(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and line.startswith("nameserver"):
            out.append(words[1])
    return out


def resolved_manages_host(resolv_conf: str | os.PathLike, run_dir: str | os.PathLike = None) -> bool:
    """Whether systemd-resolved owns name resolution on this host.

    All of: ``resolvectl`` is on PATH, systemd-resolved's runtime directory
    (``/run/systemd/resolve``) exists, and the resolv.conf glibc reads is
    resolved's — a symlink into that directory, or a file whose only name
    servers are resolved's stub listeners 127.0.0.53/127.0.0.54. A host where
    resolved runs but resolv.conf is a plain file naming other servers is *not*
    managed by it: glibc would never ask resolved, so editing resolv.conf is right.
    """
    run_dir = Path(RESOLVED_RUN_DIR if run_dir is None else run_dir)
    if shutil.which("resolvectl") is None or not run_dir.is_dir():
        return False
    conf = Path(resolv_conf)
    real = Path(os.path.realpath(conf))
    try:
        real.relative_to(os.path.realpath(run_dir))
        return True
    except ValueError:
        pass
    servers = _nameservers(conf)
    return bool(servers) and all(_normal_ip(s) in RESOLVED_STUBS for s in servers)


def _normal_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text
