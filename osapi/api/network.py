"""``/api/v1/network/*``: DNS read and update, ping (CONTRACT §4.3).

PUT /network/dns answers 202 with one item per host: ``{hostname, status: ok,
changed}`` or ``{hostname, status: failed, error}`` (``changed`` tells whether
the host's configuration differed before).
"""

from __future__ import annotations

from osapi.api.domain import OperationRoute, build_routes, mark_ok

TAG = "network"

SPECS = [
    OperationRoute("GET", "/network/dns/{interface_name}", "network.dns.get",
                   "name servers and search domains of an interface", TAG),
    OperationRoute("PUT", "/network/dns", "network.dns.update",
                   "set name servers and/or search domains of an interface", TAG,
                   scope="write", status=202, shape_result=mark_ok,
                   result_extra={"status": {"type": "string", "const": "ok"}}),
    OperationRoute("POST", "/network/ping", "network.ping.do", "ping an address from the target", TAG,
                   scope="write"),
]


def routes():
    return build_routes(SPECS)
