"""Hostile values for everything that reaches a file, a command, a log line or a NATS
subject (issue 12, "Hardening"): the validators of the operations table, the
configuration, targets and job ids refuse them; the providers refuse them again
(a job stored by an older API or published straight on NATS is not validated by
this one); the log formatters keep one record on one line.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading

import pytest
from provider_support import check_result

from osapi import config, logs
from osapi.api import jobs as api_jobs
from osapi.config import ConfigError, load
from osapi.domain import operations
from osapi.domain.errors import InvalidJob
from osapi.domain.ids import is_job_id, new_job_id
from osapi.domain.operations import HostContext, InvalidData
from osapi.domain.subjects import parse_target
from osapi.provider import ProviderError
from osapi.provider.dns_resolv_conf import ResolvConfProvider

INJECTED_SERVER = "fe80::1%lo\noptions debug ndots:15\nnameserver 127.0.0.9"

# ---------------------------------------------------------------- zone ids (resolv.conf line injection)

BAD_ZONES = [
    INJECTED_SERVER,
    "fe80::1%lo\n",
    "fe80::1%lo\r",
    "fe80::1%lo\x00",
    "fe80::1%a b",
    "fe80::1%eth0#x",
    "fe80::1%eth0;x",
    "fe80::1%a:b",
    "fe80::1%.",
    "fe80::1%..",
    "fe80::1%" + "x" * 16,
    "fe80::1%\u2028",
]


@pytest.mark.parametrize("value", BAD_ZONES)
def test_a_bad_zone_id_is_refused_naming_the_rule(value):
    rule = "contains a control character" if not value.isprintable() else "has an invalid zone id after %"
    with pytest.raises(InvalidData, match=r"servers\[0\]: .* " + rule):
        operations.dns_update_data({"interface_name": "lo", "servers": [value]})
    with pytest.raises(InvalidData, match=r"address: .* " + rule):
        operations.ping_data({"address": value})


@pytest.mark.parametrize("value", ["fe80::1%eth0", "fe80::1%1", "fe80::1%br-lan.10", "fe80::1%" + "x" * 15,
                                   "FE80::1%wlp2s0"])
def test_good_zone_ids_are_kept(value):
    zone = value.split("%")[1]
    assert operations.dns_update_data({"interface_name": "lo", "servers": [value]})["servers"] == [f"fe80::1%{zone}"]
    assert operations.ping_data({"address": value})["address"] == f"fe80::1%{zone}"


def test_schema_of_a_scoped_address_states_the_zone_rule():
    import re

    pattern = operations.SCOPED_IPV6["pattern"]
    assert operations.SCOPED_IPV6 in operations.IP_ADDRESS["anyOf"]
    assert operations.SCOPED_IPV6 in operations.PING_DATA["properties"]["address"]["anyOf"]
    assert re.fullmatch(pattern, "fe80::1%eth0")
    for value in BAD_ZONES:
        assert not re.fullmatch(pattern, value), value


# ---------------------------------------------------------------- interface names

BAD_INTERFACES = ["lo\n", "eth0\n", ".", "..", "a/b", "lo ", " lo", "l o", "lo\t", "lo\x00", "", "x" * 16,
                  "lo\r", "é", "lo\u2028", None, 5]


@pytest.mark.parametrize("value", BAD_INTERFACES)
def test_bad_interface_names_are_refused(value):
    with pytest.raises(InvalidData, match="interface_name must be a network interface name"):
        operations.dns_get_data({"interface_name": value})
    with pytest.raises(InvalidData, match="interface_name must be a network interface name"):
        operations.dns_update_data({"interface_name": value, "servers": ["192.0.2.1"]})


@pytest.mark.parametrize("value", ["lo", "eth0", "eth0.100", "eth0:1", "veth1@if2", "br-lan", "wg_0", "...",
                                   ".x", "x" * 15])
def test_good_interface_names_pass(value):
    assert operations.dns_get_data({"interface_name": value}) == {"interface_name": value}


def test_interface_schema_pattern_agrees_with_the_validator():
    import re

    pattern = operations.DNS_GET_DATA["properties"]["interface_name"]["pattern"]
    for value in BAD_INTERFACES:
        if isinstance(value, str):  # as JSON Schema reads it: $ is the end of the text
            assert not re.fullmatch(pattern, value), value
    assert re.fullmatch(pattern, "eth0:1")


# ---------------------------------------------------------------- search domains, ping addresses


@pytest.mark.parametrize("value", ["a.example\nnameserver 127.0.0.9", "a.example\n.b", "a b.example",
                                   "a.example\x00", "a.example#x", "a.example;x", "-a.example", "a\u2028b"])
def test_bad_search_domains_and_ping_hosts_are_refused(value):
    with pytest.raises(InvalidData, match=r"search_domains\[0\]: .* (is not a valid hostname|contains a control)"):
        operations.dns_update_data({"interface_name": "lo", "search_domains": [value]})
    with pytest.raises(InvalidData, match=r"address: .* (is not an IP address or hostname|contains a control)"):
        operations.ping_data({"address": value})


# ---------------------------------------------------------------- config, targets, job ids: no trailing newline


@pytest.mark.parametrize("value", ["web1\n", "web1.example\n", "a\nb"])
def test_is_hostname_refuses_a_newline(value):
    assert not config.is_hostname(value)


@pytest.mark.parametrize("value", ["web\n", "web.dev\n", "web\n.dev"])
def test_is_label_value_refuses_a_newline(value):
    assert not config.is_label_value(value)


@pytest.mark.parametrize("target", ["group\n:web", "group:web\n.dev", "grou\rp:web", "web1\n.example"])
def test_targets_with_a_newline_inside_are_refused(target):
    with pytest.raises(InvalidJob, match="invalid target"):
        parse_target(target)


@pytest.mark.parametrize("env, message", [
    ({"OSAPI_JOB_WORKER_HOSTNAME": "web1\n"}, "must be a valid hostname"),
    ({"OSAPI_JOB_KV_BUCKET": "job-queue\n"}, "must match [A-Za-z0-9_-]+"),
    ({"OSAPI_API_CLIENT_URL": "http://127.0.0.1:8080\n"}, "must be an http:// or https:// URL"),
])
def test_config_values_with_a_trailing_newline_are_refused(env, message):
    with pytest.raises(ConfigError) as info:
        load(None, env)
    assert message in str(info.value)


def test_config_urls_with_a_trailing_newline_are_refused():
    assert "must be a nats:// URL" in config._nats_url("nats://127.0.0.1:4222\n")
    assert "must be an http:// or https:// URL" in config._http_url("http://127.0.0.1:8080\n")
    assert config._nats_url("nats://127.0.0.1:4222") is None and config._http_url("http://[::1]:8080/x") is None


def test_config_label_key_and_value_with_a_newline_are_refused(tmp_path):
    for labels, message in (('{"group\\n": web}', "label key must match"),
                            ('{group: "web\\n"}', "value must be dot-separated")):
        path = tmp_path / "osapi.yaml"
        path.write_text(f"job:\n  worker:\n    labels: {labels}\n")
        with pytest.raises(ConfigError, match=message):
            load(str(path), {})


def test_job_ids_with_a_trailing_newline_are_refused():
    job_id = new_job_id()
    assert is_job_id(job_id)
    assert not is_job_id(job_id + "\n")
    assert not api_jobs.JOB_ID_RE.fullmatch(job_id + "\n")


# ---------------------------------------------------------------- providers refuse what an older API let through

HOST = HostContext(hostname="h", labels={})


def resolv_host(path) -> HostContext:
    cfg = load(environ={"OSAPI_JOB_WORKER_DNS_PROVIDER": "resolv_conf", "OSAPI_JOB_WORKER_DNS_RESOLV_CONF": str(path)})
    return HostContext(hostname="h", labels={}, config=cfg)


@pytest.mark.parametrize("data", [
    {"interface_name": "lo", "servers": [INJECTED_SERVER]},
    {"interface_name": "lo", "servers": ["192.0.2.1\nnameserver 127.0.0.9"]},
    {"interface_name": "lo", "servers": ["not-an-ip"]},
    {"interface_name": "lo", "search_domains": ["a.example\noptions debug"]},
    {"interface_name": "lo", "search_domains": ["a.example b.example"]},
    {"interface_name": "lo", "search_domains": ["a.example\x00"]},
])
def test_resolv_conf_provider_refuses_unchecked_values_and_writes_nothing(tmp_path, data):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.1\n")
    before = path.stat()
    with pytest.raises(ProviderError, match="refusing"):
        operations.get("network.dns.update").run(data, resolv_host(path))  # no op.check: as from NATS
    with pytest.raises(ProviderError, match="refusing"):
        ResolvConfProvider(str(path)).update("lo", data.get("servers"), data.get("search_domains"))
    after = path.stat()
    assert path.read_text() == "nameserver 192.0.2.1\n"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resolv.conf"]


def test_resolv_conf_provider_still_writes_good_scoped_servers(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("")
    op = operations.get("network.dns.update")
    result = op.run(op.check({"interface_name": "lo", "servers": ["fe80::1%lo"], "search_domains": ["a.example"]}),
                    resolv_host(path))
    assert check_result("network.dns.update", result) == {"changed": True}
    assert path.read_text() == "search a.example\nnameserver fe80::1%lo\n"


@pytest.mark.parametrize("address", ["127.0.0.1\n", "localhost\nx", "fe80::1%lo\nx", "-c", "127.0.0.1 ::1", ""])
def test_ping_provider_refuses_unchecked_addresses(address):
    with pytest.raises(ProviderError, match="refusing"):
        operations.get("network.ping.do").run({"address": address, "count": 1}, HOST)


# ---------------------------------------------------------------- the CLI refuses first and sends nothing


class Listener:
    """A port nobody should connect to: counts connections and closes each at once
    (so a CLI that did send gets an error instead of waiting). Stopped by the test."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        for _ in range(3000):  # at most ~5 minutes
            if self.stop.is_set():
                return
            try:
                conn, _addr = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("argv, message", [
    (["network", "dns", "update", "--interface-name", "lo\n", "--servers", "192.0.2.1"],
     "--interface-name must be a network interface name"),
    (["network", "dns", "update", "--interface-name", "..", "--servers", "192.0.2.1"],
     "--interface-name must be a network interface name"),
    (["network", "dns", "update", "--interface-name", "lo", "--servers", INJECTED_SERVER],
     "--servers: 'fe80::1%lo\\noptions debug ndots:15\\nnameserver 127.0.0.9' contains a control character"),
    (["network", "dns", "update", "--interface-name", "lo", "--search-domains", "a.example\nb"],
     "--search-domains: 'a.example\\nb' contains a control character"),
    (["network", "dns", "get", "--interface-name", "."], "--interface-name must be a network interface name"),
    (["network", "ping", "-a", "fe80::1%lo\nx"], "-a/--address: 'fe80::1%lo\\nx' contains a control character"),
    (["network", "ping", "-a", "fe80::1%a:b"], "-a/--address: 'fe80::1%a:b' has an invalid zone id"),
    (["system", "hostname", "-T", "group\n:web"], "label key 'group\\n'"),
])
def test_cli_refuses_hostile_values_and_sends_nothing(cli, listener, argv, message):
    res = cli("client", *argv, *(["--yes"] if "update" in argv else []),
              env={"OSAPI_API_CLIENT_URL": f"http://127.0.0.1:{listener.port}",
                   "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN": "x.y.z"})
    assert res.status == 2, (res.status, res.stderr)
    assert message in res.stderr and res.stdout == ""
    assert listener.connections == 0


# ---------------------------------------------------------------- log formatters: one record, one line

FORGED = "2030-01-01T00:00:00 INFO osapi.api.access: request method=GET path=/forged status=200"
HOSTILE = [f"/nope\n{FORGED}", f"/nope\r\n{FORGED}", f"/nope\r{FORGED}", f"/nope\x00\n{FORGED}",
           f"/nope\u2028{FORGED}", f"/nope\x85{FORGED}", f"/nope\x0b{FORGED}", f"/nope\x1c{FORGED}"]


def _log_to(json_lines: bool):
    stream = io.StringIO()
    logs.setup(json_lines=json_lines, stream=stream)
    return stream


@pytest.fixture
def restore_logging():
    yield
    logs.setup(stream=io.StringIO())


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:8]) for v in HOSTILE])
def test_a_value_never_splits_a_log_record(restore_logging, json_lines, value):
    stream = _log_to(json_lines)
    log = logging.getLogger("osapi.test.hardening")
    log.warning("no route GET %s", value, extra={"fields": {"path": value, "subject": value, "n": 1}})
    out = stream.getvalue()
    lines = out.splitlines()  # splitlines also breaks at \x0b, \x1c, \x85, \u2028: what viewers do
    assert len(lines) == 1, lines
    assert out.endswith("\n") and out.count("\n") == 1
    assert "\x00" not in out
    if json_lines:
        entry = json.loads(lines[0])
        assert entry["path"] == value and entry["message"] == f"no route GET {value}"


def test_a_text_field_cannot_forge_another_field(restore_logging):
    stream = _log_to(False)
    logging.getLogger("osapi.test.hardening").info("request", extra={"fields": {
        "path": "/x status=500 subject=admin", "quote": 'a"b', "empty": "", "plain": "/api/v1/jobs"}})
    line = stream.getvalue().rstrip("\n")
    assert line.endswith(' path="/x status=500 subject=admin" quote="a\\"b" empty="" plain=/api/v1/jobs')


def test_a_traceback_keeps_its_lines_but_none_starts_like_a_record(restore_logging):
    stream = _log_to(False)
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError:
        logging.getLogger("osapi.test.hardening").exception("failed")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("ERROR osapi.test.hardening: failed")
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:])
    assert not any(line.startswith(FORGED) for line in lines)


def test_request_value_decodes_utf8_escapes_and_cuts():
    assert logs.request_value("/caf\xc3\xa9") == "/café"  # WSGI text: the bytes as latin-1
    assert logs.request_value("/a\nb\x00\x85") == "/a\\nb\\x00\\x85"
    long = logs.request_value("x" * 5000)
    assert long.startswith("x" * logs.REQUEST_VALUE_LIMIT) and long.endswith("…(+3976 chars)")


def test_scoped_ipv6_pattern_and_validator_agree():
    """The document's pattern for scoped IPv6 addresses is the validator's rule: every value
    it matches is accepted, and a scoped value outside it (':%0', embedded IPv4) is refused."""
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from osapi.domain import operations as ops

    ecma = re.compile(ops.SCOPED_IPV6_PATTERN.replace("$", r"\Z"))

    @settings(max_examples=1000, deadline=None, database=None)
    @given(st.from_regex(ops.SCOPED_IPV6_PATTERN))
    def accepted(value):
        if ecma.search(value):  # ECMA `$` is the end of the text
            assert ops.check_ip(value, "servers[0]")

    accepted()
    for bad in (":%0", "::ffff:1.2.3.4%eth0", "fe80::1%", "fe80::1%a/b", "1:%x"):
        with pytest.raises(ops.InvalidData):
            ops.check_ip(bad, "servers[0]")
