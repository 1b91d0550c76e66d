"""The one table of operations (CONTRACT §5.1, STYLE.md).

Each operation type is declared once: query or modify, how its data is validated,
which provider function runs it, what its data and result look like (JSON
Schema, used by the OpenAPI document). Submission validation, subject routing,
worker dispatch, the REST routes and the CLI all read this table: adding an
operation is one entry here and one provider function.

Provider functions have the signature ``fn(data: dict, host: HostContext) -> dict``
and live in ``osapi.provider.*``; they are imported only when a worker first runs
them, so reading the table costs nothing.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass(frozen=True)
class HostContext:
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
    if key not in data or data[key] is None:
        return None
    value = data[key]
    if not isinstance(value, list):
        raise InvalidData(f"{key} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidData(f"{key} may hold at most {limit} items, got {len(value)}")
    out = [check(item, f"{key}[{i}]") for i, item in enumerate(value)]
    if len(set(out)) != len(out):
        raise InvalidData(f"{key} must not repeat an item")
    return out


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
    if count is None:
        count = 3
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
        raise InvalidData(f"count must be an integer from 1 to 10, got {count!r}")
    return {"address": check_address(data["address"]), "count": count}


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

# Input schemas as strict as the validators above, so the OpenAPI document tells
# clients (and fuzzers) exactly what is accepted.
# fe80::1%eth0: formats ipv4/ipv6 know no zone id, so a scoped address is its own branch
SCOPED_IPV6 = {"pattern": "^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*%" + ZONE_RE.pattern[1:],
               "description": "an IPv6 address with a zone id: an interface name or index, "
                              "1-15 of A-Z a-z 0-9 _ . -"}
IP_ADDRESS = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}, SCOPED_IPV6]}
HOSTNAME = {"type": "string", "format": "hostname", "maxLength": 253}
INTERFACE = {"type": "string", "pattern": INTERFACE_RE.pattern,
             "description": "a network interface name: 1-15 of A-Z a-z 0-9 _ . : @ -, not . or .."}
DNS_GET_DATA = {**_obj({"interface_name": INTERFACE}, ["interface_name"]), "additionalProperties": False}
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


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Operation:
    type: str
    kind: str  # QUERY | MODIFY
    provider: str  # "module:function"
    validate: Callable[[Any], dict]
    summary: str
    data_schema: dict = field(default_factory=lambda: dict(EMPTY))
    result_schema: dict = field(default_factory=dict)

    def check(self, data: Any) -> dict:
        """Validated, normalised data, or ``InvalidData``."""
        return self.validate(data)

    def function(self) -> Callable[[dict, HostContext], dict]:
        module, _, name = self.provider.partition(":")
        return getattr(importlib.import_module(module), name)

    def run(self, data: dict, host: HostContext) -> dict:
        return self.function()(data, host)


OPERATIONS: dict[str, Operation] = {
    op.type: op
    for op in (
        Operation("system.hostname.get", QUERY, "osapi.provider.host:hostname", no_data,
                  "the host's name and the worker's labels",
                  result_schema=_obj({"hostname": _STR, "labels": {"type": "object", "additionalProperties": _STR}},
                                     ["hostname", "labels"])),
        Operation("system.status.get", QUERY, "osapi.provider.host:status", no_data,
                  "uptime, load, memory, disks and OS in one answer", result_schema=STATUS),
        Operation("system.uptime.get", QUERY, "osapi.provider.host:uptime", no_data,
                  "time since boot", result_schema=UPTIME),
        Operation("system.os.get", QUERY, "osapi.provider.host:os_info", no_data,
                  "distribution and version from /etc/os-release", result_schema=OS_INFO),
        Operation("system.disk.get", QUERY, "osapi.provider.disk:disks", no_data,
                  "usage of the mounted filesystems",
                  result_schema=_obj({"disks": {"type": "array", "items": DISK}}, ["disks"])),
        Operation("system.memory.get", QUERY, "osapi.provider.memory:memory", no_data,
                  "memory in bytes", result_schema=MEMORY),
        Operation("system.load.get", QUERY, "osapi.provider.load:load", no_data,
                  "1, 5 and 15 minute load averages", result_schema=LOAD),
        Operation("network.dns.get", QUERY, "osapi.provider.dns:get", dns_get_data,
                  "name servers and search domains of an interface",
                  data_schema=DNS_GET_DATA,
                  result_schema=_obj({"servers": _STRS, "search_domains": _STRS}, ["servers", "search_domains"])),
        Operation("network.dns.update", MODIFY, "osapi.provider.dns:update", dns_update_data,
                  "set name servers and/or search domains of an interface",
                  data_schema=DNS_UPDATE_DATA,
                  result_schema=_obj({"changed": {"type": "boolean"}}, ["changed"])),
        Operation("network.ping.do", QUERY, "osapi.provider.ping:ping", ping_data,
                  "ping an address from the host",
                  data_schema=PING_DATA,
                  result_schema=PING),
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
# ``osapi.job.testhooks`` (test.sleep, test.fail, test.retry) are known only once
# registered: by test code in its own process (``enable_test_operations``), or
# in a process started with ``OSAPITEST_HOOKS=1`` -- read once, when this module
# is imported, so the worker subprocesses of the tests have them. The table
# above, the OpenAPI document, the routes and the CLI never list them; a worker
# or API that has them logs a warning at start (``warn_if_test_operations``).

TEST_HOOKS_ENV = "OSAPITEST_HOOKS"
_TEST_OPERATIONS: dict[str, Operation] = {}
_warned: list[bool] = []


def enable_test_operations() -> None:
    from osapi.job import testhooks

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
