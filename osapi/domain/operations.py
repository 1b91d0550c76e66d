"""The one table of operations (README.md, "Job system").

Each operation type is declared once: query or modify, how its data is validated,
which provider function runs it, what its data and result look like (JSON
Schema, used by the OpenAPI document), and its surfaces: the REST route
(``Rest``), the CLI command (``Cli``, ``Flag``) and the table view (``Table``).
Submission validation, subject routing, worker dispatch, the REST routes, the
OpenAPI document, the CLI and its tables all read this table: adding an
operation is one entry here and one provider function.

Provider functions have the signature ``fn(data: dict, host: HostContext) -> dict``
and live in ``osapi.provider.*``; they are imported only when a worker first runs
them, so reading the table costs nothing.

Dry run (README.md, "Dry run"): every modify operation can be asked to compute
its change and apply nothing. The provider then gets ``dry_run=True`` as a keyword
argument and answers ``{changed, dry_run: true, before, after}``; a provider
without that parameter fails the job rather than apply it. In the stored job the
request is the field ``dry_run: true`` of ``operation.data`` (``with_dry_run``):
a worker older than dry run refuses the job (its validator knows no such field)
instead of applying the change.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from typing import Any, Callable, NamedTuple

from osapi.config import is_hostname

QUERY = "query"
MODIFY = "modify"

# Patterns are written for JSON Schema (ECMA-262: ``$`` is the end of the text) and
# used in Python with ``fullmatch`` only: Python's ``$`` also matches before a
# trailing newline, so ``re.match(...$)`` would let "lo\n" through.
# An interface name: what Linux accepts (at most 15 bytes, not "." or "..", no "/"
# or whitespace), limited to the characters below.
INTERFACE_RE = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.:@-]{1,15}$")
# The zone id of a scoped IPv6 address (``fe80::1%eth0``): an interface name or index.
ZONE_RE = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,15}$")
MAX_DNS_SERVERS = 16
MAX_SEARCH_DOMAINS = 32


class InvalidData(ValueError):
    """The operation's data is wrong; the message names the field."""


class HostContext(NamedTuple):
    """What a provider may know about the worker that runs it."""

    hostname: str
    labels: dict
    config: Any = None  # osapi.config.Config of the worker


# ---------------------------------------------------------------- validators


def _object(data: Any, allowed: set[str]) -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidData(f"data must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f"; allowed: {', '.join(sorted(allowed))}" if allowed else "; this operation takes no data"
        raise InvalidData(f"unknown field {', '.join(unknown)}{where}")
    return dict(data)


def no_data(data: Any) -> dict:
    return _object(data, set())


def check_interface_name(value: Any, field_name: str = "interface_name") -> str:
    if not isinstance(value, str) or not INTERFACE_RE.fullmatch(value):
        raise InvalidData(
            f"{field_name} must be a network interface name (1-15 of A-Z a-z 0-9 _ . : @ -, "
            f"not . or ..), got {value!r}"
        )
    return value


def _parse_ip(text: str, field_name: str, value: Any) -> str | None:
    """``text`` as a normalised IP address; None if it is none; ``InvalidData`` for a bad zone id.

    ``ipaddress`` takes any text after ``%`` as the zone id (newlines included), and
    the address goes verbatim into resolv.conf or a command line: the zone id must
    look like an interface name or index.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    zone = getattr(address, "scope_id", None)
    if zone is not None and not ZONE_RE.fullmatch(zone):
        raise InvalidData(
            f"{field_name}: {value!r} has an invalid zone id after %: it must be an interface name "
            "or index (1-15 of A-Z a-z 0-9 _ . -)"
        )
    if zone is not None and not SCOPED_IPV6_RE.fullmatch(text):
        # the document's pattern is the rule for scoped addresses (no embedded IPv4 part)
        raise InvalidData(f"{field_name}: {value!r} is not an IPv6 address with a zone id (fe80::1%eth0)")
    return str(address)


def _no_control(value: str, field_name: str) -> str:
    """``value`` unless it holds a control (non-printable) character anywhere.

    Blanks around a value are forgiven (stripped), a newline or NUL is not: it would
    end a line in resolv.conf or a log.
    """
    if not value.isprintable():
        raise InvalidData(f"{field_name}: {value!r} contains a control character")
    return value


def check_ip(value: Any, field_name: str) -> str:
    if not isinstance(value, str):
        raise InvalidData(f"{field_name} must be an IP address string, got {value!r}")
    _no_control(value, field_name)
    address = _parse_ip(value.strip(), field_name, value)
    if address is None:
        raise InvalidData(f"{field_name}: {value!r} is not an IPv4 or IPv6 address")
    return address


def check_hostname(value: Any, field_name: str) -> str:
    if isinstance(value, str):
        _no_control(value, field_name)
    if not isinstance(value, str) or not is_hostname(value.strip().rstrip(".")):
        raise InvalidData(f"{field_name}: {value!r} is not a valid hostname")
    return value.strip().rstrip(".")


def _string_list(data: dict, key: str, check: Callable[[Any, str], str], limit: int) -> list[str] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list):
        got = "null" if value is None else type(value).__name__
        raise InvalidData(f"{key} must be a list, got {got} (leave it out to keep the current value)")
    if len(value) > limit:
        raise InvalidData(f"{key} may hold at most {limit} items, got {len(value)}")
    out = [check(item, f"{key}[{i}]") for i, item in enumerate(value)]
    if len(set(out)) != len(out):
        raise InvalidData(f"{key} must not repeat an item")
    return out


DRY_RUN = "dry_run"


def split_dry_run(op: "Operation", data: Any) -> tuple[Any, bool]:
    """``data`` of a stored job without its ``dry_run`` marker, and whether it asks for a dry run.

    ``dry_run`` must be ``true`` (the stored form never holds ``false``), and only a
    modify operation has a dry run; ``InvalidData`` otherwise.
    """
    if not isinstance(data, dict) or DRY_RUN not in data:
        return data, False
    if data[DRY_RUN] is not True:
        raise InvalidData(f"{DRY_RUN} must be true when given, got {data[DRY_RUN]!r}")
    check_dry_run(op)
    return {k: v for k, v in data.items() if k != DRY_RUN}, True


def with_dry_run(data: dict, dry_run: bool) -> dict:
    """The stored form of validated data: ``dry_run: true`` added for a dry run (``split_dry_run`` undoes it)."""
    return {**data, DRY_RUN: True} if dry_run else data


def check_dry_run(op: "Operation") -> None:
    if not op.has_dry_run:
        raise InvalidData(f"{op.type} is a query: it changes nothing, so it has no dry run")


def dns_get_data(data: Any) -> dict:
    data = _object(data, {"interface_name"})
    if "interface_name" not in data:
        raise InvalidData("interface_name is required")
    return {"interface_name": check_interface_name(data["interface_name"])}


def dns_update_data(data: Any) -> dict:
    data = _object(data, {"interface_name", "servers", "search_domains"})
    if "interface_name" not in data:
        raise InvalidData("interface_name is required")
    out: dict[str, Any] = {"interface_name": check_interface_name(data["interface_name"])}
    servers = _string_list(data, "servers", check_ip, MAX_DNS_SERVERS)
    domains = _string_list(data, "search_domains", check_hostname, MAX_SEARCH_DOMAINS)
    if servers is None and domains is None:
        raise InvalidData("at least one of servers or search_domains is required")
    if servers is not None:
        if not servers:
            raise InvalidData("servers must not be empty (a host needs a name server)")
        out["servers"] = servers
    if domains is not None:
        out["search_domains"] = domains
    return out


def check_address(value: Any, field_name: str = "address") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidData(f"{field_name} is required: an IP address or hostname")
    text = _no_control(value, field_name).strip()
    address = _parse_ip(text, field_name, value)
    if address is not None:
        return address
    if not is_hostname(text.rstrip(".")):
        raise InvalidData(f"{field_name}: {value!r} is not an IP address or hostname")
    return text.rstrip(".")


def ping_data(data: Any) -> dict:
    data = _object(data, {"address", "count"})
    if "address" not in data:
        raise InvalidData("address is required")
    count = data.get("count", 3)
    if isinstance(count, float) and count.is_integer():
        count = int(count)  # 3.0 is the integer 3 in JSON (and in JSON Schema)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
        raise InvalidData(f"count must be an integer from 1 to 10, got {count!r}")
    return {"address": check_address(data["address"]), "count": count}


PROCESS_SORTS = ("memory", "cpu")
MAX_PROCESSES = 100


def processes_data(data: Any) -> dict:
    data = _object(data, {"sort", "limit"})
    sort = data.get("sort", "memory")
    if not isinstance(sort, str) or sort not in PROCESS_SORTS:
        raise InvalidData(f"sort must be one of {', '.join(PROCESS_SORTS)}, got {sort!r}")
    limit = data.get("limit", 10)
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # 10.0 is the integer 10 in JSON (and in JSON Schema)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PROCESSES:
        raise InvalidData(f"limit must be an integer from 1 to {MAX_PROCESSES}, got {limit!r}")
    return {"sort": sort, "limit": limit}


# ---------------------------------------------------------------- schemas (JSON Schema, for OpenAPI)

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}


def _obj(props: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": props}
    if required is not None:
        schema["required"] = required
    return schema


EMPTY = {"type": "object", "additionalProperties": False, "properties": {}}
NO_SCHEMA: dict = {}  # an operation that declares no result schema

# Input schemas as strict as the validators above, so the OpenAPI document tells
# clients (and fuzzers) exactly what is accepted.
# fe80::1%eth0: formats ipv4/ipv6 know no zone id, so a scoped address is its own branch
# An IPv6 address with a zone id, exactly: the hexadecimal forms of RFC 4291 (no embedded
# IPv4 part), then % and the zone. ``_parse_ip`` requires it, so the document and the
# validator accept the same scoped addresses.
_H = "[0-9A-Fa-f]{1,4}"
_IPV6_HEX = "|".join([
    f"(?:{_H}:){{7}}{_H}",
    f"(?:{_H}:){{1,7}}:",
    f"(?:{_H}:){{1,6}}:{_H}",
    f"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}",
    f"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}",
    f"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}",
    f"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}",
    f"{_H}:(?::{_H}){{1,6}}",
    f":(?:(?::{_H}){{1,7}}|:)",
])
SCOPED_IPV6_PATTERN = f"^(?:{_IPV6_HEX})%" + ZONE_RE.pattern[1:]
SCOPED_IPV6_RE = re.compile(SCOPED_IPV6_PATTERN.replace("$", r"\Z"))
SCOPED_IPV6 = {"pattern": SCOPED_IPV6_PATTERN,
               "description": "an IPv6 address with a zone id: an interface name or index, "
                              "1-15 of A-Z a-z 0-9 _ . -"}
IP_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}, SCOPED_IPV6]}
HOSTNAME = {"type": "string", "format": "hostname", "maxLength": 253}
INTERFACE = {"type": "string", "pattern": INTERFACE_RE.pattern,
             "description": "a network interface name: 1-15 of A-Z a-z 0-9 _ . : @ -, not . or .."}
DNS_GET_DATA = {**_obj({"interface_name": INTERFACE}, ["interface_name"]), "additionalProperties": False}
DNS_SETTINGS = _obj({"servers": _STRS, "search_domains": _STRS}, ["servers", "search_domains"])
DRY_RUN_SCHEMA = {"type": "boolean", "default": False,
                  "description": "true: compute the change and apply nothing; each host answers "
                                 "`{changed, dry_run: true, before, after}` and its files stay byte-identical"}
DNS_UPDATE_RESULT = _obj(
    {
        "changed": {"type": "boolean", "description": "true: the settings were changed (in a dry run: "
                                                      "they would be)"},
        "dry_run": {"type": "boolean", "const": True, "description": "dry runs only: nothing was applied"},
        "before": {**DNS_SETTINGS, "description": "dry runs only: the host's settings now"},
        "after": {**DNS_SETTINGS, "description": "dry runs only: the settings the update would leave"},
    },
    ["changed"],
)
DNS_UPDATE_DATA = {
    **_obj(
        {
            "interface_name": INTERFACE,
            "servers": {"type": "array", "items": IP_ADDRESS, "minItems": 1, "maxItems": MAX_DNS_SERVERS,
                        "uniqueItems": True,
                        "description": f"at most {MAX_DNS_SERVERS}; the resolv_conf provider takes at most 3 "
                                       "(glibc reads no more) and fails the job otherwise"},
            "search_domains": {"type": "array", "items": HOSTNAME, "maxItems": MAX_SEARCH_DOMAINS,
                               "uniqueItems": True},
        },
        ["interface_name"],
    ),
    "additionalProperties": False,
    "anyOf": [{"required": ["servers"]}, {"required": ["search_domains"]}],
}
PING_DATA = {
    **_obj(
        {
            "address": {"type": "string",
                        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}, SCOPED_IPV6, {"format": "hostname"}]},
            "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        },
        ["address"],
    ),
    "additionalProperties": False,
}
DISK = _obj(
    {"name": _STR, "device": _STR, "fstype": _STR, "total": _INT, "used": _INT, "free": _INT},
    ["name", "device", "fstype", "total", "used", "free"],
)
LOAD = _obj({"1min": _NUM, "5min": _NUM, "15min": _NUM}, ["1min", "5min", "15min"])
MEMORY = _obj({"total": _INT, "free": _INT, "used": _INT}, ["total", "free", "used"])
UPTIME = _obj({"uptime": _STR, "uptime_seconds": _NUM}, ["uptime", "uptime_seconds"])
OS_INFO = _obj({"distribution": _STR, "version": _STR}, ["distribution", "version"])
PING = _obj(
    {
        "packets_sent": _INT, "packets_received": _INT, "packet_loss": _NUM,
        "min_rtt_ms": _NUM, "avg_rtt_ms": _NUM, "max_rtt_ms": _NUM,
    },
    ["packets_sent", "packets_received", "packet_loss", "min_rtt_ms", "avg_rtt_ms", "max_rtt_ms"],
)
STATUS = _obj(
    {
        "uptime": _STR,
        "uptime_seconds": _NUM,
        "load_average": LOAD,
        "memory": MEMORY,
        "disks": {"type": "array", "items": DISK},
        "os_info": OS_INFO,
    },
    ["uptime", "uptime_seconds", "load_average", "memory", "disks", "os_info"],
)


PROCESSES_DATA = {
    **_obj(
        {
            "sort": {"type": "string", "enum": list(PROCESS_SORTS), "default": "memory",
                     "description": "memory: by resident memory; cpu: by CPU use over a short sample"},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PROCESSES, "default": 10,
                      "description": "how many processes, the top ones by sort"},
        },
    ),
    "additionalProperties": False,
}
_NULL_STR = {"type": ["string", "null"]}
INTERFACE_INFO = _obj(
    {
        "name": _STR,
        "mac": {**_NULL_STR, "description": "link-layer address; null when the interface has none"},
        "mtu": _INT,
        "up": {"type": "boolean"},
        "addresses": {"type": "array", "items": _obj(
            {"family": {"type": "string", "enum": ["inet", "inet6"]}, "address": _STR, "prefixlen": _INT},
            ["family", "address", "prefixlen"])},
    },
    ["name", "mac", "mtu", "up", "addresses"],
)
PROCESS = _obj(
    {
        "pid": _INT,
        "name": _STR,
        "user": {**_NULL_STR, "description": "null when the worker may not read it"},
        "cpu_percent": {**_NUM, "description": "percent of one CPU over the sample (may exceed 100)"},
        "memory_rss": {"type": ["integer", "null"], "description": "resident memory in bytes"},
        "status": _STR,
        "started_at": {**_NULL_STR, "description": "RFC 3339 UTC"},
    },
    ["pid", "name", "user", "cpu_percent", "memory_rss", "status", "started_at"],
)
USER = _obj({"name": _STR, "uid": _INT, "gid": _INT, "home": _STR, "shell": _STR},
            ["name", "uid", "gid", "home", "shell"])


# ---------------------------------------------------------------- surfaces of an operation
#
# An entry declares where the operation is reachable; osapi.api.domain builds the REST
# route (and so the OpenAPI document), osapi.cli.client_ops the CLI command,
# osapi.cli.client_format the table. Only data lives here: no provider, no bottle.


class Rest(NamedTuple):
    """``method path`` under /api/v1. ``{name}`` path segments and ``query`` names are data
    fields; PUT and POST take the rest of the data as the JSON body."""

    method: str
    path: str
    scope: str = "read"
    status: int = 200
    query: tuple[str, ...] = ()
    reports_status: bool = False  # each ok result says status: ok (modify endpoints)


class Flag(NamedTuple):
    """A CLI flag setting the data field ``field``; ``kind`` str, int or list (comma-separated).
    Choices come from the field's ``enum`` in the data schema."""

    field: str
    names: tuple[str, ...]  # ("-a", "--address")
    help: str
    metavar: str | None = None
    required: bool = False
    kind: str = "str"


class Cli(NamedTuple):
    """``osapi client <group…> <name>``; ``confirm`` (modify operations): the action asked
    about before changing more than one host, formatted with the data (adds ``--yes``)."""

    group: tuple[str, ...]
    name: str
    flags: tuple[Flag, ...] = ()
    help: str = ""  # default: the operation's summary
    epilog: str = ""  # printed before the exit-status paragraph of --help
    confirm: str = ""
    one_of: tuple[str, ...] = ()  # data fields of which at least one flag must be given


class Column(NamedTuple):
    """A table column: ``field`` of the row's item through ``format`` (a formatter of
    osapi.cli.client_format: bytes, number, percent, join, labels, yesno, time), or, for a
    list of objects, each item through the ``each`` format string, joined by ", "."""

    header: str
    field: str
    format: str = ""
    each: str = ""


class Table(NamedTuple):
    """One row per host, or with ``rows`` one row per item of that list field of a host's result."""

    columns: tuple[Column, ...]
    rows: str = ""
    sort: str = ""  # order of the rows of one host by this field; "" keeps the provider's order
    status: bool = False  # a STATUS column (ok/failed) after the host name


# CLI command groups: their help; a group's commands come from the entries.
CLI_GROUPS: dict[tuple[str, ...], str] = {
    ("system",): "query hosts: {commands}",
    ("network",): "network interfaces, DNS settings of an interface, and ping from hosts",
    ("network", "dns"): "read or change the name servers and search domains of an interface",
}

DISK_HELP = """\
Disks: SIZE is the filesystem's total, which includes the blocks reserved for
root, so USED + FREE may be less than SIZE. USE% is USED / (USED + FREE),
rounded up, as df computes it.
"""
PROCESSES_HELP = """\
CPU% is the share of one CPU over a sample of {sample} taken by the worker (top's
convention: a process on several CPUs may exceed 100%). RSS is resident memory.
Processes the worker may not read are left out; fields it may not read are empty.
"""
INTERFACE_FLAG = Flag("interface_name", ("--interface-name",), "network interface, e.g. eth0", "IF", required=True)
CPU_SAMPLE = "0.1s"  # osapi.provider.processes.CPU_SAMPLE_SECONDS, for --help


# ---------------------------------------------------------------- the table


class Operation(NamedTuple):
    type: str
    kind: str  # QUERY | MODIFY
    provider: str  # "module:function"
    validate: Callable[[Any], dict]
    summary: str
    data_schema: dict = EMPTY  # schemas are shared and never changed in place: readers copy them
    result_schema: dict = NO_SCHEMA
    rest: Rest | None = None  # None: only through POST /jobs
    cli: Cli | None = None  # None: only through client job add/run
    view: Table | str = ""  # str: a view function of osapi.cli.client_format; "": generic

    @property
    def has_dry_run(self) -> bool:
        """Every modify operation has a dry run (its provider takes ``dry_run``); a query has none."""
        return self.kind == MODIFY

    def check(self, data: Any) -> dict:
        """Validated, normalised data, or ``InvalidData``."""
        return self.validate(data)

    def function(self) -> Callable[[dict, HostContext], dict]:
        module, _, name = self.provider.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self, data: dict, host: HostContext, dry_run: bool = False) -> dict:
        """The provider's answer for validated ``data``; with ``dry_run`` it computes the change and applies nothing."""
        fn = self.function()
        if not dry_run:
            return fn(data, host)
        check_dry_run(self)
        import inspect

        if "dry_run" not in inspect.signature(fn).parameters:
            # never run a provider that would not know it must not write
            raise InvalidData(f"{self.type} has no dry run in this osapi (its provider {self.provider} takes none)")
        return fn(data, host, dry_run=True)


def _system(name: str, provider: str, summary: str, result: dict, view: Table | str, epilog: str = "",
            **more: Any) -> Operation:
    """A ``system.<name>.get`` query without data: GET /system/<name>, ``client system <name>``."""
    return Operation(f"system.{name}.get", QUERY, provider, no_data, summary, result_schema=result,
                     rest=Rest("GET", f"/system/{name}"), cli=Cli(("system",), name, epilog=epilog), view=view,
                     **more)


OPERATIONS: dict[str, Operation] = {
    op.type: op
    for op in (
        _system("hostname", "osapi.provider.host:hostname", "the host's name and the worker's labels",
                _obj({"hostname": _STR, "labels": {"type": "object", "additionalProperties": _STR}},
                     ["hostname", "labels"]),
                Table((Column("LABELS", "labels", "labels"),))),
        _system("status", "osapi.provider.host:status", "uptime, load, memory, disks and OS in one answer",
                STATUS, "status", DISK_HELP),
        _system("uptime", "osapi.provider.host:uptime", "time since boot", UPTIME, "uptime"),
        _system("os", "osapi.provider.host:os_info", "distribution and version from /etc/os-release", OS_INFO,
                Table((Column("DISTRIBUTION", "distribution"), Column("VERSION", "version")))),
        _system("disk", "osapi.provider.disk:disks", "usage of the mounted filesystems",
                _obj({"disks": {"type": "array", "items": DISK}}, ["disks"]), "disk", DISK_HELP),
        _system("memory", "osapi.provider.memory:memory", "total, free and used memory", MEMORY, "memory"),
        _system("load", "osapi.provider.load:load", "1, 5 and 15 minute load averages", LOAD,
                Table(tuple(Column(k.upper(), k, "number") for k in ("1min", "5min", "15min")))),
        Operation("system.processes.get", QUERY, "osapi.provider.processes:processes", processes_data,
                  "the top processes by memory or CPU", data_schema=PROCESSES_DATA,
                  result_schema=_obj({"processes": {"type": "array", "items": PROCESS}}, ["processes"]),
                  rest=Rest("GET", "/system/processes", query=("sort", "limit")),
                  cli=Cli(("system",), "processes", (
                      Flag("sort", ("--sort",), "order, descending: memory (resident) or cpu (default: memory)"),
                      Flag("limit", ("--limit",), f"how many processes, 1-{MAX_PROCESSES} (default: 10)", "N",
                           kind="int"),
                  ), epilog=PROCESSES_HELP.format(sample=CPU_SAMPLE)),
                  view=Table((Column("PID", "pid"), Column("NAME", "name"), Column("USER", "user"),
                              Column("CPU%", "cpu_percent", "number1"), Column("RSS", "memory_rss", "bytes"),
                              Column("STATUS", "status"), Column("STARTED", "started_at", "time")),
                             rows="processes")),
        Operation("system.users.get", QUERY, "osapi.provider.users:users", no_data,
                  "the user accounts of the passwd database (never a password hash)",
                  result_schema=_obj({"users": {"type": "array", "items": USER}}, ["users"]),
                  rest=Rest("GET", "/system/users"), cli=Cli(("system",), "users"),
                  view=Table((Column("USER", "name"), Column("UID", "uid"), Column("GID", "gid"),
                              Column("HOME", "home"), Column("SHELL", "shell")), rows="users")),
        Operation("network.interfaces.get", QUERY, "osapi.provider.interfaces:interfaces", no_data,
                  "the network interfaces: MAC, MTU, state and addresses",
                  result_schema=_obj({"interfaces": {"type": "array", "items": INTERFACE_INFO}}, ["interfaces"]),
                  rest=Rest("GET", "/network/interfaces"), cli=Cli(("network",), "interfaces"),
                  view=Table((Column("INTERFACE", "name"), Column("STATE", "up", "updown"),
                              Column("MAC", "mac"), Column("MTU", "mtu"),
                              Column("ADDRESSES", "addresses", each="{address}/{prefixlen}")),
                             rows="interfaces", sort="name")),
        Operation("network.dns.get", QUERY, "osapi.provider.dns:get", dns_get_data,
                  "name servers and search domains of an interface",
                  data_schema=DNS_GET_DATA,
                  result_schema=DNS_SETTINGS,
                  rest=Rest("GET", "/network/dns/{interface_name}"),
                  cli=Cli(("network", "dns"), "get", (INTERFACE_FLAG,),
                          help="show the name servers and search domains of an interface"),
                  view=Table((Column("SERVERS", "servers", "join"),
                              Column("SEARCH DOMAINS", "search_domains", "join")))),
        Operation("network.dns.update", MODIFY, "osapi.provider.dns:update", dns_update_data,
                  "set the name servers and/or search domains of an interface",
                  data_schema=DNS_UPDATE_DATA,
                  result_schema=DNS_UPDATE_RESULT,
                  rest=Rest("PUT", "/network/dns", scope="write", status=202, reports_status=True),
                  cli=Cli(("network", "dns"), "update", (
                      INTERFACE_FLAG,
                      Flag("servers", ("--servers",), "comma-separated name server IP addresses", "A,B", kind="list"),
                      Flag("search_domains", ("--search-domains",), "comma-separated search domains", "X,Y",
                           kind="list"),
                  ), confirm="change DNS of interface {interface_name} on", one_of=("servers", "search_domains")),
                  view=Table((Column("CHANGED", "changed", "yesno"),), status=True)),
        Operation("network.ping.do", QUERY, "osapi.provider.ping:ping", ping_data,
                  "ping an address from the target hosts",
                  data_schema=PING_DATA,
                  result_schema=PING,
                  rest=Rest("POST", "/network/ping", scope="write"),
                  cli=Cli(("network",), "ping", (
                      Flag("address", ("-a", "--address"), "IP address or hostname to ping", "ADDR", required=True),
                      Flag("count", ("--count",), "echo requests to send, 1-10 (default: 3)", "N", kind="int"),
                  )),
                  view="ping"),
    )
}


def get(op_type: Any) -> Operation:
    """The operation named ``op_type``, or ``InvalidData`` listing the known ones."""
    if isinstance(op_type, str):
        op = OPERATIONS.get(op_type) or _TEST_OPERATIONS.get(op_type)
        if op is not None:
            return op
    raise InvalidData(f"unknown operation type {op_type!r}; known: {', '.join(OPERATIONS)}")


# ---------------------------------------------------------------- test-only operations
#
# The test stack's operations (test.sleep, test.fail, test.retry, test.record: the
# module ``tests.testhooks`` of the source tree, never shipped) are known only
# once registered: by test code in its own process (``enable_test_operations``),
# or in a process started with ``OSAPITEST_HOOKS=1`` and the source tree on
# PYTHONPATH -- read once, when this module is imported, so the worker
# subprocesses of the tests have them. The table
# above, the OpenAPI document, the routes and the CLI never list them; a worker
# or API that has them logs a warning at start (``warn_if_test_operations``).

TEST_HOOKS_ENV = "OSAPITEST_HOOKS"
TEST_HOOKS_MODULE = "tests.testhooks"  # its OPERATIONS: {type: Operation}
_TEST_OPERATIONS: dict[str, Operation] = {}
_warned: list[bool] = []


def enable_test_operations() -> None:
    try:
        testhooks = importlib.import_module(TEST_HOOKS_MODULE)
    except ImportError as exc:
        raise ImportError(f"{TEST_HOOKS_ENV}=1 asks for the test-only operations of {TEST_HOOKS_MODULE}, which "
                          f"only a source checkout has: put it on PYTHONPATH ({exc})") from None
    _TEST_OPERATIONS.update(testhooks.OPERATIONS)


def disable_test_operations() -> None:
    _TEST_OPERATIONS.clear()


def are_test_operations_enabled() -> bool:
    return bool(_TEST_OPERATIONS)


def warn_if_test_operations(logger) -> None:
    """Once per process: say loudly that test-only operations are accepted here."""
    if _TEST_OPERATIONS and not _warned:
        _warned.append(True)
        logger.warning("test-only operations are enabled (%s): never set %s=1 in production",
                       ", ".join(sorted(_TEST_OPERATIONS)), TEST_HOOKS_ENV)


if __import__("os").environ.get(TEST_HOOKS_ENV) == "1":
    enable_test_operations()
