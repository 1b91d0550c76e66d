"""``osapi client fleet host …``: enroll, list and revoke fleet hosts (``/api/v1/fleet/hosts``, admin scope)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from osapi.cli import Context
from osapi.cli.client import api, command, group

EXIT = """\
Exit status: 0 success; 1 the operation failed (API unreachable or an API
error, token rejected or without the admin scope, host already enrolled
without --rotate, host not enrolled); 2 usage or configuration error."""
ADD_EPILOG = """\
Enrolls HOSTNAME: the API creates its NATS user, whose permissions nats-server
enforces (take, read and answer jobs under its own hostname only), and its job
consumer, filtered on HOSTNAME and --labels: the enrolled labels decide which
label targets reach the host, whatever it configures itself. Writes the host's
bundle -- its complete osapi.yaml, holding its NATS password -- to FILE (mode
0600) and prints the path. On the host: python3 osapi.pyz -f FILE supervise.
--rotate issues new credentials to an enrolled host (the old ones stop working).

""" + EXIT
REMOVE_EPILOG = """\
Revokes HOSTNAME: within 10 s every control-plane node refuses its credentials
and drops its connections, and it leaves the worker registry.

""" + EXIT
LIST_EPILOG = """\
One row per enrolled host: hostname, enrolled labels, enrollment time, whether
a worker of it is in the worker registry (CONNECTED) and its last heartbeat.
With --json, the API body {total, hosts}.

""" + EXIT

NAME = "fleet"
HELP = "fleet hosts: enroll hosts with their own NATS credentials (admin scope)"


def hostname_arg(value: str) -> str:
    """An argparse type: a hostname checked as the API checks it (no request when wrong)."""
    from osapi.fleet.auth import InvalidHost, check_hostname

    try:
        return check_hostname(value)
    except InvalidHost as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def labels_arg(value: str) -> dict:
    """``k=v,k2=v2`` → a labels map, checked as the API checks it."""
    from osapi.fleet.auth import InvalidHost
    from osapi.fleet.hosts import check_labels

    out = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        out[key.strip()] = val.strip()
    try:
        return check_labels(out)
    except InvalidHost as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(client) -> None:
    fleet = group(client, NAME, HELP)
    host = group(fleet, "host", "enrolled fleet hosts")
    add = command(host, "add", "enroll a host and write its bundle", add_cmd, epilog=ADD_EPILOG)
    add.add_argument("hostname", type=hostname_arg, metavar="HOSTNAME", help="the host's name (its worker's hostname)")
    add.add_argument("--labels", type=labels_arg, metavar="K=V,...", help="its labels, e.g. group=web.dev,zone=a")
    add.add_argument("-o", "--output", metavar="FILE", help="where to write the bundle (default: ./HOSTNAME.yaml)")
    add.add_argument("--rotate", action="store_true", help="the host is enrolled: issue new credentials")
    remove = command(host, "remove", "revoke a host's credentials", remove_cmd, epilog=REMOVE_EPILOG)
    remove.add_argument("hostname", type=hostname_arg, metavar="HOSTNAME")
    command(host, "list", "list enrolled hosts", list_cmd, epilog=LIST_EPILOG)


def write_bundle(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd >= 0:
            os.close(fd)


def add_cmd(ctx: Context) -> None:
    from osapi.errors import OperationError

    args = ctx.args
    path = Path(args.output or f"{args.hostname}.yaml")
    body = api(ctx).fleet_host_add(args.hostname, args.labels, args.rotate)
    try:
        write_bundle(path, body.get("bundle") or "")
    except OSError as exc:
        raise OperationError(f"cannot write the bundle to {path}: {exc.strerror or exc}",
                             "the host is enrolled: run again with --rotate and another -o FILE") from None
    shown = {k: v for k, v in body.items() if k != "bundle"}
    if ctx.json:
        ctx.print_json({**shown, "bundle_path": str(path)})
    else:
        ctx.print(str(path))


def remove_cmd(ctx: Context) -> None:
    api(ctx).fleet_host_remove(ctx.args.hostname)
    if ctx.json:
        ctx.print_json({"hostname": ctx.args.hostname, "removed": True})
    else:
        ctx.print(f"{ctx.args.hostname} revoked")


def list_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    def human(body: dict) -> str:
        items = [h for h in body.get("hosts") or [] if isinstance(h, dict)]
        if not items:
            return "no fleet hosts enrolled"
        rows = [[h.get("hostname"), fmt.labels(h.get("labels")), fmt.local_time(h.get("enrolled_at")),
                 "yes" if h.get("connected") else "no", fmt.local_time(h.get("last_seen")) if h.get("last_seen") else "-"]
                for h in items]
        return fmt.table(["HOSTNAME", "LABELS", "ENROLLED", "CONNECTED", "LAST SEEN"], rows)

    ctx.emit(api(ctx).fleet_hosts(), human)
