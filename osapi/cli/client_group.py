"""``osapi client``: the command group (README "Commands"). Its commands live in
``client_ops`` (system, network: generated from the operations table),
``client_job``, ``client_audit`` and ``client_fleet``; what they share in ``client``.
"""

from __future__ import annotations

from osapi.cli.client import group

NAME = "client"
HELP = "talk to the osapi REST API: query and change hosts, manage jobs"


def register(subparsers) -> None:
    """``client`` and its command groups, each built only when the command line chooses it."""
    from osapi.cli import client_audit, client_fleet, client_job, client_ops

    client = group(subparsers, NAME, HELP)
    client_ops.register(client)
    for module in (client_job, client_audit, client_fleet):
        client.defer(module.NAME, module.HELP, module.register)
