"""``osapi client network …``: DNS settings of an interface, and ping from hosts."""

from __future__ import annotations

import re

from osapi.cli import Context
from osapi.cli.client import HOSTS_EXIT_HELP, add_target, api, command, group, show_results
from osapi.errors import OperationError, UsageError

CONFIRM_HELP = """\
Confirmation: changing DNS on more than one host, or on a host you did not name,
asks first. A hostname target never asks. _all and key:value always ask. _any
asks unless exactly one worker host is registered (then _any can only be that
host). Without a terminal on stdin the command refuses (exit 2) and sends
nothing, unless --yes is given.
"""


def register(client) -> None:
    network = group(client, "network", "DNS settings of an interface, and ping from hosts", epilog=HOSTS_EXIT_HELP)
    dns = group(network, "dns", "read or change the name servers and search domains of an interface",
                epilog=HOSTS_EXIT_HELP)

    get = command(dns, "get", "show the name servers and search domains of an interface", dns_get,
                  epilog=HOSTS_EXIT_HELP)
    get.add_argument("--interface-name", required=True, metavar="IF", help="network interface, e.g. eth0")
    add_target(get)

    update = command(dns, "update", "set the name servers and/or search domains of an interface", dns_update,
                     epilog=CONFIRM_HELP + "\n" + HOSTS_EXIT_HELP)
    update.add_argument("--interface-name", required=True, metavar="IF", help="network interface, e.g. eth0")
    update.add_argument("--servers", metavar="A,B", help="comma-separated name server IP addresses")
    update.add_argument("--search-domains", metavar="X,Y", help="comma-separated search domains")
    update.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_target(update)

    ping = command(network, "ping", "ping an address from the target hosts", ping_cmd, epilog=HOSTS_EXIT_HELP)
    ping.add_argument("-a", "--address", required=True, metavar="ADDR", help="IP address or hostname to ping")
    ping.add_argument("--count", type=int, metavar="N", help="echo requests to send, 1-10 (default: 3)")
    add_target(ping)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


# operation data field -> the flag that sets it, for messages
FLAGS = {"interface_name": "--interface-name", "servers": "--servers", "search_domains": "--search-domains",
         "address": "-a/--address", "count": "--count"}
_FIELD_RE = re.compile(r"^([a-z_]+)(\[\d+\])?")


def checked(validate, data: dict) -> dict:
    """``data`` through the operation's own validator (``osapi.job.operations``).

    What the worker and the API would refuse is refused here first: exit 2 with the
    flag named, and nothing sent. The message is the validator's, with the data
    field turned into its flag ("servers[1]: '1.1.1.999' is not…" ->
    "--servers: '1.1.1.999' is not…").
    """
    from osapi.job.operations import InvalidData

    try:
        return validate(data)
    except InvalidData as exc:
        message = _FIELD_RE.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), str(exc), count=1)
        raise UsageError(message) from None


def dns_get(ctx: Context) -> None:
    from osapi.job.operations import dns_get_data

    checked(dns_get_data, {"interface_name": ctx.args.interface_name})
    body = api(ctx).dns_get(ctx.args.interface_name, ctx.args.target)
    show_results(ctx, body, "network.dns.get")


def dns_update(ctx: Context) -> None:
    from osapi.job.operations import dns_update_data

    args = ctx.args
    servers, domains = _split(args.servers), _split(args.search_domains)
    if servers is None and domains is None:
        raise UsageError("at least one of --servers or --search-domains is required")
    data = {"interface_name": args.interface_name}
    data.update({k: v for k, v in (("servers", servers), ("search_domains", domains)) if v is not None})
    checked(dns_update_data, data)
    client = api(ctx)
    if not args.yes:
        confirm(ctx, client, args.target, f"change DNS of interface {args.interface_name} on")
    body = client.dns_update(args.interface_name, servers, domains, args.target)
    show_results(ctx, body, "network.dns.update")


def ping_cmd(ctx: Context) -> None:
    from osapi.job.operations import ping_data

    args = ctx.args
    checked(ping_data, {"address": args.address, **({} if args.count is None else {"count": args.count})})
    body = api(ctx).ping(args.address, args.count, args.target)
    show_results(ctx, body, "network.ping.do")


# ---------------------------------------------------------------- confirmation


def scope_of(client, target: str) -> str | None:
    """What ``target`` would change, when that is more than one named host; None for one known host."""
    from osapi.client import ApiError

    if target == "_all":
        return "EVERY worker host (_all)"
    if ":" in target:
        return f"every worker host whose label matches {target}"
    if target != "_any":
        return None  # a named host
    try:
        body = client.workers()
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        return f"one arbitrary worker host (_any; the registered workers could not be listed: {exc.message})"
    hosts = sorted({str(w.get("hostname")) for w in body.get("workers") or [] if isinstance(w, dict)})
    if len(hosts) == 1:
        return None  # _any can only be that host
    if not hosts:
        return "whichever worker host answers first (_any; no worker is registered right now)"
    return f"one arbitrary worker host of {len(hosts)} ({', '.join(hosts)}) (_any)"


def confirm(ctx: Context, client, target: str, action: str) -> None:
    """Ask on a terminal; refuse (exit 2) without one. Returns only when confirmed."""
    where = scope_of(client, target)
    if where is None:
        return
    if not ctx.env.stdin_isatty:
        raise UsageError(
            f"refusing to {action} {where} without confirmation: stdin is not a terminal; nothing was sent",
            "add --yes to confirm, or name a single host with -T HOSTNAME",
        )
    ctx.env.stderr.write(f"About to {action} {where}.\nProceed? [y/N] ")
    ctx.env.stderr.flush()
    answer = ctx.env.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise OperationError("cancelled: nothing was changed")
