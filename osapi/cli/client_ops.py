"""``osapi client system|network …``: one command per operation, from the operations table.

Each operation that declares a CLI surface (``Operation.cli`` in
``osapi.domain.operations``) becomes ``osapi client <group…> <name>`` with its flags,
``-T/--target`` and ``--url``. A command turns its flags into the operation's data,
checks them with the operation's own validator (what the API and the worker would
refuse is refused here first: exit 2, the flag named, nothing sent), asks before a
change that reaches more than one host (a modify operation's ``--dry-run`` never
asks: it changes nothing), calls the operation's REST route and
prints the per-host table (``osapi.cli.client_format``).
"""

from __future__ import annotations

import re
from typing import Any

from osapi.cli import Context
from osapi.cli.client import duration_arg
from osapi.cli.client import (
    HOSTS_EXIT_HELP, ROLLOUT_HELP, add_rollout, add_target, api, command, group, rollout_of, show_results,
)
from osapi.errors import OperationError, UsageError

CONFIRM_HELP = """\
Confirmation: changing DNS on more than one host, or on a host you did not name,
asks first. A hostname target never asks. _all and key:value always ask. _any
asks unless exactly one worker host is registered (then _any can only be that
host). Without a terminal on stdin the command refuses (exit 2) and sends
nothing, unless --yes is given. --dry-run never asks: it changes nothing.
"""
ROLLOUT_TIMEOUT, ROLLOUT_POLL = 600.0, 2.0
ROLLOUT_WAIT_HELP = """\
With --batch the change is submitted as a job (POST /jobs with a rollout) and
followed to its end, as `osapi client job run` does (at most --timeout).
"""
DRY_RUN_HELP = "compute the change on each host and apply nothing: prints each host's values before and after"


def register(client) -> None:
    """The operations' groups and commands under ``client``, each built when chosen (``SubParsers.defer``)."""
    add_children(client, ())


def add_children(subparsers, path: tuple[str, ...]) -> None:
    """The commands and groups under the group ``path``, in the order of the operations table."""
    from osapi.domain.operations import OPERATIONS

    children: dict[str, Any] = {}
    for op in OPERATIONS.values():
        if op.cli is None or op.cli.group[: len(path)] != path:
            continue
        if op.cli.group == path:
            children[op.cli.name] = (op.cli.help or op.summary, lambda sp, op=op: add_command(sp, op))
        elif op.cli.group[len(path)] not in children:
            sub = op.cli.group[: len(path) + 1]
            children[sub[-1]] = (group_help(sub), lambda sp, sub=sub: add_group(sp, sub))
    for name, (help, build) in children.items():
        subparsers.defer(name, help, build)


def group_help(path: tuple[str, ...]) -> str:
    from osapi.domain.operations import CLI_GROUPS, OPERATIONS

    names = [op.cli.name for op in OPERATIONS.values() if op.cli is not None and op.cli.group == path]
    names += [p[-1] for p in CLI_GROUPS if p[:-1] == path and len(p) == len(path) + 1]
    return CLI_GROUPS[path].format(commands=", ".join(names))


def add_group(subparsers, path: tuple[str, ...]) -> None:
    add_children(group(subparsers, path[-1], group_help(path), epilog=HOSTS_EXIT_HELP), path)


def add_command(subparsers, op) -> None:
    cli = op.cli
    rollout_help = ROLLOUT_HELP + ROLLOUT_WAIT_HELP if op.has_dry_run else ""
    epilog = "\n".join(part for part in (cli.epilog, CONFIRM_HELP if cli.confirm else "", rollout_help,
                                          HOSTS_EXIT_HELP) if part)
    parser = command(subparsers, cli.name, cli.help or op.summary, lambda ctx, t=op.type: run(ctx, t), epilog=epilog)
    properties = op.data_schema.get("properties", {})
    for flag in cli.flags:
        kwargs: dict[str, Any] = {"dest": flag.field, "help": flag.help, "metavar": flag.metavar}
        if flag.required:
            kwargs["required"] = True
        if flag.kind == "int":
            kwargs["type"] = int
        if "enum" in properties.get(flag.field, {}):
            kwargs["choices"] = properties[flag.field]["enum"]
        parser.add_argument(*flag.names, **kwargs)
    if cli.confirm:
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    if op.has_dry_run:
        parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
        add_rollout(parser)
        parser.add_argument("--timeout", type=duration_arg, default=ROLLOUT_TIMEOUT, metavar="DURATION",
                            help="with --batch: give up waiting for the rollout after this long "
                                 f"(default: {ROLLOUT_TIMEOUT:g}s)")
    add_target(parser)


def run(ctx: Context, op_type: str) -> None:
    from osapi.domain import operations

    op = operations.get(op_type)
    args = ctx.args
    data = {}
    for flag in op.cli.flags:
        value = getattr(args, flag.field)
        if value is not None:
            data[flag.field] = _split(value) if flag.kind == "list" else value
    if op.cli.one_of and not any(name in data for name in op.cli.one_of):
        names = [_flag_name(op, name) for name in op.cli.one_of]
        raise UsageError(f"at least one of {' or '.join(names)} is required")
    checked(op, data)
    rollout = rollout_of(args) if op.has_dry_run else None
    client = api(ctx)
    dry_run = op.has_dry_run and args.dry_run
    if op.cli.confirm and not args.yes and not dry_run:  # a dry run changes nothing: nothing to confirm
        confirm(ctx, client, args.target, op.cli.confirm.format(**data))
    if rollout is not None:  # POST /jobs with the rollout, followed like `job run`
        from osapi.cli.client_job import wait_job

        created = client.job_create({"type": op.type, "data": data}, args.target, dry_run, rollout=rollout)
        wait_job(ctx, client, created, args.target, args.timeout, ROLLOUT_POLL)
        return
    body = client.operation(op.rest.method, op.rest.path, {**data, "dry_run": True} if dry_run else data,
                            args.target)
    show_results(ctx, body, op.type)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _flag_name(op, field_name: str) -> str:
    """The flag that sets a data field, for messages: ``-a/--address``."""
    for flag in op.cli.flags:
        if flag.field == field_name:
            return "/".join(flag.names)
    return field_name


_FIELD_RE = re.compile(r"^([a-z_]+)(\[\d+\])?")


def checked(op, data: dict) -> dict:
    """``data`` through the operation's own validator, or a usage error naming the flag.

    The message is the validator's, with the leading data field turned into its
    flag ("servers[1]: '1.1.1.999' is not…" -> "--servers: '1.1.1.999' is not…").
    """
    from osapi.domain.operations import InvalidData

    try:
        return op.check(data)
    except InvalidData as exc:
        flags = {flag.field: "/".join(flag.names) for flag in op.cli.flags}
        message = _FIELD_RE.sub(lambda m: flags.get(m.group(1), m.group(0)), str(exc), count=1)
        raise UsageError(message) from None


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


# ---------------------------------------------------------------- README's table of these commands


def usage(op) -> str:
    """``osapi client network ping -a ADDR [--count N] [-T TARGET]``."""
    choices = {name: schema["enum"] for name, schema in op.data_schema.get("properties", {}).items()
               if "enum" in schema}
    words = ["osapi", "client", *op.cli.group, op.cli.name]
    for flag in op.cli.flags:
        value = "{" + ",".join(choices[flag.field]) + "}" if flag.field in choices else flag.metavar
        word = f"{flag.names[0]} {value}" if value else flag.names[0]
        words.append(word if flag.required else f"[{word}]")
    if op.cli.confirm:
        words.append("[--yes]")
    if op.has_dry_run:
        words += ["[--dry-run]", "[--batch N|N% [--max-failures N|N%] [--pause D] [--timeout D]]"]
    words.append("[-T TARGET]")
    return " ".join(words)


def command_rows() -> str:
    """README's table of the operations' commands for the operations' commands (``python -m osapi.cli.client_ops``)."""
    from osapi.domain.operations import OPERATIONS

    rows = ["| command | does |", "|---|---|"]
    for op in OPERATIONS.values():
        if op.cli is None:
            continue
        does = op.cli.help or op.summary
        if op.cli.confirm:
            does += "; asks before changing more than one host (`--yes` to skip; without a TTY it refuses)"
        if op.has_dry_run:
            does += "; `--dry-run` shows each host's values before and after and changes nothing"
            does += "; `--batch`: a [rollout](#rollouts), followed to its end"
        cell = usage(op).replace("|", "\\|")  # a | inside a table cell, even in code, ends the cell
        rows.append(f"| `{cell}` | {does} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(command_rows())
