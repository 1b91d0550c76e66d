"""``osapi client audit …``: read the audit log (``GET /api/v1/audit``, admin scope)."""

from __future__ import annotations

import argparse
import json

from osapi.cli import Context
from osapi.cli.client import api, command, group, int_range

MAX_LIMIT = 1000  # GET /audit: limit 1-1000
MAX_EXPORT_PAGES = 100_000  # a bound, not a limit anyone meets: 100 million entries

SINCE_HELP = "only entries at or after this RFC 3339 time, e.g. 2024-05-01T00:00:00Z"
LIST_EPILOG = """\
One row per API request, newest first: time, token subject (- without a valid
token), source address, method, path, status, duration and the job it stored.
Control characters in a path are shown as escapes. With --json, the API body
{total_items, items}.

Exit status: 0 success; 1 the operation failed (API unreachable or an API
error, token rejected or without the admin scope); 2 usage or configuration error."""
EXPORT_EPILOG = """\
Prints every entry (since --since) as one JSON object per line, oldest first:
it reads the whole log, newest first in pages of 1000, then prints it. An entry
that arrives meanwhile may be included or not; none is printed twice.

Exit status: 0 success; 1 the operation failed (API unreachable or an API
error, token rejected or without the admin scope); 2 usage or configuration error."""


def since_arg(value: str) -> str:
    """An argparse type: an RFC 3339 date-time, checked as the API checks it (no request when wrong)."""
    from osapi.api.audit import parse_rfc3339

    try:
        parse_rfc3339(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


NAME = "audit"
HELP = "the audit log: one entry per API request (admin scope)"


def register(client) -> None:
    audit = group(client, NAME, HELP)
    lst = command(audit, "list", "list audit entries, newest first", list_cmd, epilog=LIST_EPILOG)
    lst.add_argument("--since", type=since_arg, metavar="T", help=SINCE_HELP)
    lst.add_argument("--subject", metavar="S", help="only requests made with a token of this subject")
    lst.add_argument("--status", type=int_range(100, 599), metavar="N", help="only requests answered with this status")
    lst.add_argument("--limit", type=int_range(1, MAX_LIMIT), default=100, metavar="N",
                     help=f"entries to show, 1-{MAX_LIMIT} (default: 100)")
    lst.add_argument("--offset", type=int_range(0), default=0, metavar="N", help="entries to skip (default: 0)")
    export = command(audit, "export", "print the audit log as JSON lines, oldest first", export_cmd,
                     epilog=EXPORT_EPILOG)
    export.add_argument("--since", type=since_arg, metavar="T", help=SINCE_HELP)


def list_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    args = ctx.args
    body = api(ctx).audit_list(args.since, args.subject, args.status, args.limit, args.offset)
    ctx.emit(body, fmt.audit_list)


def export_cmd(ctx: Context) -> None:
    client = api(ctx)
    seen: set[str] = set()
    entries: list[dict] = []
    offset = 0
    for _ in range(MAX_EXPORT_PAGES):
        page = client.audit_list(ctx.args.since, limit=MAX_LIMIT, offset=offset)
        items = [i for i in page.get("items") or [] if isinstance(i, dict)]
        for item in items:
            if item.get("id") not in seen:  # new entries push older ones to later pages: no repeats
                seen.add(item.get("id"))
                entries.append(item)
        offset += len(items)
        if not items or offset >= int(page.get("total_items") or 0):
            break
    out = ctx.env.stdout
    for item in reversed(entries):
        out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n")
