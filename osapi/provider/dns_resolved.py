"""DNS through systemd-resolved, per interface, with ``resolvectl``.

Reading: ``resolvectl dns IF`` and ``resolvectl domain IF``, whose output is one
line ``Link 2 (eth0): 1.1.1.1 2606:4700::1111``. A server may carry a port, an
interface index or a TLS name (``[2606:4700::1111]:853%2#one.one.one.one``);
only the address is reported. Domains starting with ``~`` are routing-only
domains (which queries go to this link), not search domains: they are left out
of ``search_domains`` and kept as they are when the search domains change.

Writing: ``resolvectl dns IF S1 S2…`` and ``resolvectl domain IF D1 D2…``
(an empty list is passed as ``""``, which clears it), then read back to check
that resolved took them. Nothing is run when resolved already has the asked
values. Like ``resolvectl`` itself, the change lives until resolved or the
network manager (systemd-networkd, NetworkManager) reconfigures the link: make
it permanent in that manager's configuration.

A dry run runs only the two reads and answers the values before and after;
no set command runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess

from osapi.provider import ProviderError, check_word
from osapi.provider.dns_resolv_conf import check_values, dry_run_result

COMMAND = "resolvectl"
TIMEOUT = 10.0
LINE_RE = re.compile(r"^Link\s+\d+\s+\(([^)]*)\):\s*(.*)$")


def _run(args: list[str]) -> str:
    exe = shutil.which(COMMAND)
    if exe is None:
        raise ProviderError(
            f"{COMMAND} was not found on PATH, but job.worker.dns.provider selects systemd-resolved; "
            "install systemd-resolved or set job.worker.dns.provider to resolv_conf"
        )
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", LC_ALL="C")
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProviderError(f"{COMMAND} {' '.join(args)} did not answer within {TIMEOUT:g}s") from None
    except OSError as exc:
        raise ProviderError(f"cannot run {exe}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise ProviderError(f"{COMMAND} {' '.join(args)} failed: {why}")
    return proc.stdout


def _values(output: str, interface: str) -> list[str]:
    """The words after ``Link N (IF):`` on the line for ``interface``."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        match = LINE_RE.match(line.strip())
        if match and match.group(1) == interface:
            return match.group(2).split()
    if not lines:
        return []
    raise ProviderError(f"unexpected output from {COMMAND} for interface {interface!r}: {output.strip()!r}")


def server_address(word: str) -> str:
    """``[2606:4700::1111]:853%2#name`` -> ``2606:4700::1111``; ``1.1.1.1:53`` -> ``1.1.1.1``."""
    word = word.split("#", 1)[0]
    if word.startswith("["):  # [IPv6]:port%ifindex
        word = word[1:].split("]", 1)[0]
    elif word.count(":") == 1:  # IPv4:port
        word = word.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(word))
    except ValueError:
        return word


class ResolvedProvider:
    """Per-interface DNS settings of systemd-resolved."""

    name = "resolved"

    def _read(self, interface: str) -> tuple[list[str], list[str], list[str]]:
        servers = [server_address(w) for w in _values(_run(["dns", interface]), interface)]
        domains = _values(_run(["domain", interface]), interface)
        search = [d.rstrip(".") for d in domains if not d.startswith("~")]
        routing = [d for d in domains if d.startswith("~")]
        return servers, search, routing

    def get(self, interface: str) -> dict:
        check_word(interface, "interface_name")
        servers, search, _routing = self._read(interface)
        return {"servers": servers, "search_domains": search}

    def update(self, interface: str, servers: list[str] | None, domains: list[str] | None,
               dry_run: bool = False) -> dict:
        check_word(interface, "interface_name")  # every value becomes a resolvectl argument
        servers, domains = check_values(servers, domains)
        old_servers, old_search, routing = self._read(interface)
        if dry_run:
            after = (old_servers if servers is None else servers,
                     old_search if domains is None else [d.rstrip(".") for d in domains])
            return dry_run_result((old_servers, old_search), after)
        changed = False
        if servers is not None and servers != old_servers:
            _run(["dns", interface, *(servers or [""])])
            changed = True
        if domains is not None:
            domains = [d.rstrip(".") for d in domains]
            if domains != old_search:
                _run(["domain", interface, *((domains + routing) or [""])])
                changed = True
        if changed:
            now_servers, now_search, _ = self._read(interface)
            if servers is not None and now_servers != servers:
                raise ProviderError(
                    f"systemd-resolved did not take the servers for {interface}: asked {', '.join(servers)}, "
                    f"it reports {', '.join(now_servers) or 'none'}"
                )
            if domains is not None and now_search != domains:
                raise ProviderError(
                    f"systemd-resolved did not take the search domains for {interface}: asked "
                    f"{', '.join(domains) or 'none'}, it reports {', '.join(now_search) or 'none'}"
                )
        return {"changed": changed}
