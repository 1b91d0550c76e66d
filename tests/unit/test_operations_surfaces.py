"""The operations table as the one source of every surface, and the three operations added through it.

Routes, CLI commands, tables, the OpenAPI document and README's command table are
generated from ``osapi.domain.operations``; the providers are real (psutil, pwd) on this host.
"""

from __future__ import annotations

import datetime as dt
import inspect
import ipaddress
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from provider_support import check_result, run_as_nobody

from osapi.api import domain
from osapi.api.app import all_routes
from osapi.cli import client_format as fmt
from osapi.cli import client_ops
from osapi.domain import operations
from osapi.domain.operations import OPERATIONS, HostContext, InvalidData
from osapi.provider import interfaces as interfaces_provider

HOST = HostContext(hostname="h", labels={})
README = Path(__file__).resolve().parents[2] / "README.md"


def run(op_type: str, data: dict | None = None) -> dict:
    op = operations.get(op_type)
    return check_result(op_type, op.run(op.check(data or {}), HOST))


# ---------------------------------------------------------------- the table and its surfaces


@pytest.mark.parametrize("op_type", list(OPERATIONS))
def test_every_entry_binds_to_a_provider_function(op_type):
    """The worker -> provider binding: every entry's ``module:function`` resolves to fn(data, host),
    and a modify operation's to fn(data, host, dry_run=False): every modify operation has a dry run."""
    op = OPERATIONS[op_type]
    fn = op.function()
    assert callable(fn)
    params = inspect.signature(fn).parameters
    if op.kind == operations.MODIFY:
        assert list(params) == ["data", "host", "dry_run"] and params["dry_run"].default is False, op_type
    else:
        assert len(params) == 2, op_type


def test_routes_cli_commands_and_views_come_from_the_entries():
    served = {(r.method, r.full_path): r for r in all_routes()}
    for op in OPERATIONS.values():
        route = served[(op.rest.method, "/api/v1" + op.rest.path)]
        assert (route.summary, route.scope, route.operation_id) == (op.summary, op.rest.scope, op.type.replace(".", "_"))
        assert op.rest.status in route.responses
        assert [p.name for p in route.query] == ["target_hostname", *op.rest.query]
        assert op.cli is not None and op.type in fmt.VIEWS
    # no other route runs an operation
    assert len([r for r in all_routes() if r.operation_id in {o.type.replace(".", "_") for o in OPERATIONS.values()}]) \
        == len(OPERATIONS)


def test_query_parameters_are_documented_from_the_data_schema():
    op = OPERATIONS["system.processes.get"]
    limit, sort = domain.query_param(op, "limit"), domain.query_param(op, "sort")
    assert limit.schema == {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}
    assert sort.schema == {"type": "string", "enum": ["memory", "cpu"], "default": "memory"}


def test_readme_command_table_is_the_generated_one():
    text = README.read_text()
    start = text.index("<!-- generated: operations commands -->\n") + len("<!-- generated: operations commands -->\n")
    end = text.index("<!-- end generated -->")
    assert text[start:end] == client_ops.command_rows(), "run `python -m osapi.cli.client_ops` and paste it into README"


def test_every_cli_command_is_in_the_parser(cli, capsys):
    for op in OPERATIONS.values():
        result = cli("client", *op.cli.group, op.cli.name, "--help")
        assert result.status == 0
        assert (op.cli.help or op.summary) in " ".join(capsys.readouterr().out.split())


def test_a_client_command_run_imports_no_heavy_module():
    """Parsing, validating and calling an operation's command: no nats, bottle, waitress, psutil or yaml."""
    code = ("import sys; from osapi.cli import main; "
            "main(['client', 'system', 'processes', '--limit', '5', '--url', 'http://127.0.0.1:9']); "
            "main(['client', 'network', 'interfaces', '--url', 'http://127.0.0.1:9']); "
            "print(sorted(m for m in ('nats','bottle','waitress','psutil','yaml') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"] = "t"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert p.stdout.strip().endswith("[]"), (p.stdout, p.stderr)
    assert "127.0.0.1:9" in p.stderr  # it did try to call the API


# ---------------------------------------------------------------- system.processes.get: data


def test_processes_data_defaults_and_values():
    check = OPERATIONS["system.processes.get"].check
    assert check({}) == {"sort": "memory", "limit": 10}
    assert check(None) == {"sort": "memory", "limit": 10}
    assert check({"sort": "cpu", "limit": 100}) == {"sort": "cpu", "limit": 100}
    assert check({"limit": 1.0}) == {"sort": "memory", "limit": 1}


@pytest.mark.parametrize("data, message", [
    ({"limit": 0}, "limit must be an integer from 1 to 100, got 0"),
    ({"limit": 101}, "limit must be an integer from 1 to 100, got 101"),
    ({"limit": -1}, "limit must be an integer from 1 to 100"),
    ({"limit": "10"}, "limit must be an integer from 1 to 100, got '10'"),
    ({"limit": True}, "limit must be an integer from 1 to 100, got True"),
    ({"limit": 2.5}, "limit must be an integer from 1 to 100, got 2.5"),
    ({"limit": None}, "limit must be an integer from 1 to 100, got None"),
    ({"limit": 10**30}, "limit must be an integer from 1 to 100"),
    ({"sort": "name"}, "sort must be one of memory, cpu, got 'name'"),
    ({"sort": "cpu\n"}, "sort must be one of memory, cpu, got 'cpu\\n'"),
    ({"sort": "cpu\x00"}, "sort must be one of memory, cpu"),
    ({"sort": "*"}, "sort must be one of memory, cpu, got '*'"),
    ({"sort": "../memory"}, "sort must be one of memory, cpu"),
    ({"sort": None}, "sort must be one of memory, cpu, got None"),
    ({"sort": ["cpu"]}, "sort must be one of memory, cpu"),
    ({"pid": 1}, "unknown field pid; allowed: limit, sort"),
    ("cpu", "data must be an object, got str"),
])
def test_processes_data_refuses_bad_values(data, message):
    with pytest.raises(InvalidData) as exc:
        OPERATIONS["system.processes.get"].check(data)
    assert message in str(exc.value)


@pytest.mark.parametrize("op_type", ["system.users.get", "network.interfaces.get"])
def test_users_and_interfaces_take_no_data(op_type):
    with pytest.raises(InvalidData, match="unknown field name; this operation takes no data"):
        OPERATIONS[op_type].check({"name": "root"})


# ---------------------------------------------------------------- providers


def test_users_are_the_passwd_database_without_a_password_field():
    result = run("system.users.get")
    expected = sorted((e.pw_uid, e.pw_name, e.pw_gid, e.pw_dir, e.pw_shell) for e in pwd.getpwall())
    assert [(u["uid"], u["name"], u["gid"], u["home"], u["shell"]) for u in result["users"]] == expected
    assert all(set(u) == {"name", "uid", "gid", "home", "shell"} for u in result["users"])
    root = next(u for u in result["users"] if u["uid"] == 0)
    assert root["name"] == pwd.getpwuid(0).pw_name


def test_users_as_an_unprivileged_worker():
    code = "print(json.dumps(osapi.provider.users.users({}, None)))"
    status, out, err = run_as_nobody(code, ["osapi.provider.users"])
    assert status == 0, err
    assert [u["name"] for u in out["users"]] == [u["name"] for u in run("system.users.get")["users"]]


def test_interfaces_match_the_kernel():
    result = run("network.interfaces.get")
    by_name = {i["name"]: i for i in result["interfaces"]}
    assert set(by_name) == set(psutil.net_if_addrs()) & set(psutil.net_if_stats())
    lo = by_name["lo"]
    assert lo["up"] is True and lo["mtu"] == psutil.net_if_stats()["lo"].mtu
    assert {"family": "inet", "address": "127.0.0.1", "prefixlen": 8} in lo["addresses"]
    for iface in result["interfaces"]:
        assert iface["mtu"] == psutil.net_if_stats()[iface["name"]].mtu
        for address in iface["addresses"]:
            ip = ipaddress.ip_address(address["address"])  # no %zone suffix
            assert address["family"] == ("inet" if ip.version == 4 else "inet6")
            assert 0 <= address["prefixlen"] <= ip.max_prefixlen


def test_interfaces_as_an_unprivileged_worker():
    code = "print(json.dumps(osapi.provider.interfaces.interfaces({}, None)))"
    status, out, err = run_as_nobody(code, ["osapi.provider.interfaces"])
    assert status == 0, err
    assert [i["name"] for i in out["interfaces"]] == [i["name"] for i in run("network.interfaces.get")["interfaces"]]


@pytest.mark.parametrize("address, netmask, expected", [
    ("10.1.2.3", "255.255.255.0", 24), ("10.1.2.3", None, 32), ("fe80::1", "ffff:ffff:ffff:ffff::", 64),
    ("fe80::1", "ffff:ffff::%eth0", 32), ("::1", None, 128), ("10.0.0.1", "not a mask", 32),
    ("10.0.0.1", "255.0.255.0", 32), ("10.0.0.1", "ffff::", 32), ("10.0.0.1", "0.0.0.0", 0),
])
def test_prefix_length_from_a_netmask(address, netmask, expected):
    assert interfaces_provider.prefixlen(ipaddress.ip_address(address), netmask) == expected


@pytest.mark.parametrize("sort, key", [("memory", "memory_rss"), ("cpu", "cpu_percent")])
def test_processes_are_the_top_ones_sorted_descending(sort, key):
    result = run("system.processes.get", {"sort": sort, "limit": 5})
    rows = result["processes"]
    assert 1 <= len(rows) <= 5
    values = [r[key] or 0 for r in rows]
    assert values == sorted(values, reverse=True)
    for row in rows:
        started = dt.datetime.strptime(row["started_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        assert started.timestamp() <= dt.datetime.now(dt.timezone.utc).timestamp() + 1
        assert row["cpu_percent"] >= 0


def test_processes_memory_order_is_the_real_top_and_the_fields_are_the_processes():
    rows = run("system.processes.get", {"limit": 100})["processes"]
    me = next((r for r in rows if r["pid"] == os.getpid()), None)
    if me is None:  # more than 100 processes use more memory than this test
        pytest.skip("the test process is not among the top 100 by memory here")
    proc = psutil.Process()
    assert (me["name"], me["user"]) == (proc.name(), proc.username())
    assert me["started_at"] == dt.datetime.fromtimestamp(proc.create_time(), dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert abs(me["memory_rss"] - proc.memory_info().rss) < 64 * 2**20
    assert len(run("system.processes.get", {"limit": 3})["processes"]) == min(3, len(rows))


def test_processes_as_an_unprivileged_worker():
    code = "print(json.dumps(osapi.provider.processes.processes({'sort': 'cpu', 'limit': 100}, None)))"
    status, out, err = run_as_nobody(code, ["osapi.provider.processes"])
    assert status == 0, err
    assert out["processes"] and all(isinstance(r["pid"], int) for r in out["processes"])
    assert any(r["user"] == "root" for r in out["processes"]) or len(out["processes"]) < 100


# ---------------------------------------------------------------- tables declared by the entries


def test_table_of_processes_one_row_per_process(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    text = fmt.view_for("system.processes.get")([
        {"hostname": "b", "status": "failed", "error": "worker gone"},
        {"hostname": "a", "processes": [
            {"pid": 7, "name": "db", "user": None, "cpu_percent": 12.345, "memory_rss": 3 * 2**30,
             "status": "running", "started_at": "2024-05-01T12:00:00Z"},
            {"pid": 1, "name": "init", "user": "root", "cpu_percent": 0.0, "memory_rss": None,
             "status": "sleeping", "started_at": None},
        ]},
    ])
    lines = text.splitlines()
    assert lines[0].split() == ["HOSTNAME", "PID", "NAME", "USER", "CPU%", "RSS", "STATUS", "STARTED", "ERROR"]
    assert "12.3" in lines[2] and "2024-05-01 12:00:00" in lines[2] and lines[2].split()[:3] == ["a", "7", "db"]
    assert lines[3].split()[:4] == ["a", "1", "init", "root"]
    assert lines[4].split() == ["b", "worker", "gone"]


def test_table_of_interfaces_and_users():
    text = fmt.view_for("network.interfaces.get")([{"hostname": "h", "interfaces": [
        {"name": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "up": True,
         "addresses": [{"family": "inet", "address": "127.0.0.1", "prefixlen": 8},
                       {"family": "inet6", "address": "::1", "prefixlen": 128}]},
        {"name": "eth0", "mac": None, "mtu": 1500, "up": False, "addresses": []},
    ]}])
    lines = text.splitlines()
    assert lines[0].split() == ["HOSTNAME", "INTERFACE", "STATE", "MAC", "MTU", "ADDRESSES"]
    assert lines[2].split() == ["h", "eth0", "down", "1500"]
    assert lines[3].split() == ["h", "lo", "up", "00:00:00:00:00:00", "65536", "127.0.0.1/8,", "::1/128"]
    users = fmt.view_for("system.users.get")([{"hostname": "h", "users": []}])
    assert users.splitlines()[2].split() == ["h", "(no", "users)"]


# ---------------------------------------------------------------- dry run


def test_stored_dry_run_marker_is_split_off_only_for_modify_operations():
    update = operations.get("network.dns.update")
    data = {"interface_name": "lo", "servers": ["192.0.2.1"]}
    stored = operations.with_dry_run(data, True)
    assert stored == {**data, "dry_run": True} and operations.with_dry_run(data, False) == data
    assert operations.split_dry_run(update, stored) == (data, True)
    assert operations.split_dry_run(update, data) == (data, False)
    assert operations.split_dry_run(update, None) == (None, False)
    for bad in (False, "true", 1, None):
        with pytest.raises(InvalidData, match="dry_run must be true"):
            operations.split_dry_run(update, {**data, "dry_run": bad})
    with pytest.raises(InvalidData, match="is a query"):
        operations.split_dry_run(operations.get("network.dns.get"), {"interface_name": "lo", "dry_run": True})
    # the operation's own validator never takes the marker: a worker older than dry run refuses such a job
    with pytest.raises(InvalidData, match="unknown field dry_run"):
        update.check(stored)


def test_a_query_or_a_provider_without_dry_run_never_runs_in_a_dry_run():
    with pytest.raises(InvalidData, match="is a query"):
        operations.get("system.hostname.get").run({}, HOST, dry_run=True)
    from tests import testhooks

    record = testhooks.OPERATIONS["test.record"]  # a modify operation whose provider takes no dry_run
    assert record.kind == operations.MODIFY
    with pytest.raises(InvalidData, match="has no dry run"):
        record.run({}, HOST, dry_run=True)
