"""DNS settings: the operations ``network.dns.get`` / ``network.dns.update`` and the
factory that picks this host's variant.

``job.worker.dns.provider`` chooses:

- ``resolv_conf`` — rewrite the file ``job.worker.dns.resolv_conf``
  (``osapi.provider.dns_resolv_conf``). Host-wide: the interface must exist but
  the setting applies to every interface.
- ``resolved`` — systemd-resolved per interface with ``resolvectl``
  (``osapi.provider.dns_resolved``).
- ``auto`` (default) — ``resolved`` when systemd-resolved manages the host
  (``osapi.provider.platform.resolved_manages_host``), else ``resolv_conf``;
  decided on every job, so installing or removing resolved needs no restart.

Dry run (``dry_run=True``, README.md "Dry run"): both variants read the current
settings and answer ``{changed, dry_run: true, before, after}`` with the servers
and search domains before and after, and write nothing: no file is opened for
writing, no ``resolvectl`` set command runs.

Both check, before anything is read or written, that the interface exists on
this host. Servers and search domains were already checked by the operations
table (IP addresses with a sane zone id, valid hostnames); both variants check
them again (``osapi.provider.check_word``), since a job published straight on
NATS or stored by an older API was never checked by this one.
"""

from __future__ import annotations

from osapi.provider import platform
from osapi.provider.dns_resolv_conf import ResolvConfProvider
from osapi.provider.dns_resolved import ResolvedProvider

DEFAULT_PROVIDER = "auto"
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"


def _setting(host, path: str, default: str) -> str:
    config = getattr(host, "config", None)
    if config is None:
        return default
    try:
        return config.get(path)
    except AttributeError:
        return default


def provider_for(host):
    """The DNS provider variant for this worker's configuration and host."""
    choice = _setting(host, "job.worker.dns.provider", DEFAULT_PROVIDER)
    path = _setting(host, "job.worker.dns.resolv_conf", DEFAULT_RESOLV_CONF)
    if choice == "resolved" or (choice == "auto" and platform.resolved_manages_host(path)):
        return ResolvedProvider()
    return ResolvConfProvider(path)


def get(data: dict, host) -> dict:
    interface = platform.check_interface(data["interface_name"])
    return provider_for(host).get(interface)


def update(data: dict, host, dry_run: bool = False) -> dict:
    interface = platform.check_interface(data["interface_name"])
    return provider_for(host).update(interface, data.get("servers"), data.get("search_domains"), dry_run=dry_run)
