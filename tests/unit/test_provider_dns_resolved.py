"""The resolved DNS provider and the factory that picks a DNS provider.

systemd-resolved cannot run in this test environment (no systemd, no D-Bus), so
these tests put a stand-in ``resolvectl`` script first on PATH. It records every
call's arguments and keeps per-interface state in a JSON file, printing the same
one-line format as the real ``resolvectl dns IF`` / ``resolvectl domain IF``
(``Link 1 (lo): …``), so a change can be read back like on a real host.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from provider_support import check_result

from osapi.config import load
from osapi.domain import operations
from osapi.domain.operations import HostContext
from osapi.provider import ProviderError, dns, platform
from osapi.provider.dns_resolv_conf import ResolvConfProvider
from osapi.provider.dns_resolved import ResolvedProvider, server_address

STAND_IN = r'''#!{python}
"""Stand-in for resolvectl: records argv, keeps state, prints resolvectl's format."""
import json, os, sys
state_file = os.environ["FAKE_RESOLVECTL_STATE"]
with open(os.environ["FAKE_RESOLVECTL_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
if os.environ.get("FAKE_RESOLVECTL_FAIL"):
    sys.stderr.write("Failed to set DNS configuration: Access denied\n")
    sys.exit(1)
with open(state_file) as f:
    state = json.load(f)
verb, link, values = sys.argv[1], sys.argv[2], sys.argv[3:]
entry = state.setdefault(link, {{"dns": [], "domain": []}})
if values:
    if not os.environ.get("FAKE_RESOLVECTL_IGNORE_SET"):
        entry[verb] = [] if values == [""] else values
        with open(state_file, "w") as f:
            json.dump(state, f)
else:
    print(("Link 1 (%s): " % link + " ".join(entry[verb])).rstrip())
'''


@pytest.fixture
def resolvectl(tmp_path, monkeypatch):
    """Install the stand-in first on PATH; returns (set_state, calls)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "resolvectl"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    state, log = tmp_path / "state.json", tmp_path / "calls.log"
    state.write_text("{}")
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_RESOLVECTL_STATE", str(state))
    monkeypatch.setenv("FAKE_RESOLVECTL_LOG", str(log))

    class Fake:
        path = script

        @staticmethod
        def set(link, dns=(), domain=()):
            data = json.loads(state.read_text())
            data[link] = {"dns": list(dns), "domain": list(domain)}
            state.write_text(json.dumps(data))

        @staticmethod
        def calls():
            return [json.loads(line) for line in log.read_text().splitlines()]

        @staticmethod
        def writes():
            return [c for c in Fake.calls() if len(c) > 2]

    return Fake


def resolved_host() -> HostContext:
    return HostContext(hostname="h", labels={}, config=load(environ={"OSAPI_JOB_WORKER_DNS_PROVIDER": "resolved"}))


def run(op_type: str, data: dict) -> dict:
    op = operations.get(op_type)
    return check_result(op_type, op.run(op.check(data), resolved_host()))


# ---------------------------------------------------------------- resolved provider


def test_get_parses_resolvectl_output(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1:53", "[2001:db8::53]:853%1#dns.example", "192.0.2.2#tls.example"],
                   domain=["a.example", "~corp.example", "b.example", "~."])
    assert run("network.dns.get", {"interface_name": "lo"}) == {
        "servers": ["192.0.2.1", "2001:db8::53", "192.0.2.2"],
        "search_domains": ["a.example", "b.example"],  # ~routing domains are not search domains
    }
    assert resolvectl.calls() == [["dns", "lo"], ["domain", "lo"]]


def test_get_of_an_unconfigured_link_is_empty(resolvectl):
    assert run("network.dns.get", {"interface_name": "lo"}) == {"servers": [], "search_domains": []}


def test_update_servers_runs_resolvectl_dns_and_reads_back(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1"], domain=["keep.example"])
    assert run("network.dns.update", {"interface_name": "lo", "servers": ["198.51.100.1", "2001:db8::1"]}) == {
        "changed": True
    }
    assert resolvectl.writes() == [["dns", "lo", "198.51.100.1", "2001:db8::1"]]
    assert resolvectl.calls()[-2:] == [["dns", "lo"], ["domain", "lo"]]  # read back after the change
    assert run("network.dns.get", {"interface_name": "lo"}) == {
        "servers": ["198.51.100.1", "2001:db8::1"], "search_domains": ["keep.example"]}


def test_update_search_domains_keeps_routing_domains_and_servers(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1"], domain=["old.example", "~corp.example"])
    assert run("network.dns.update", {"interface_name": "lo", "search_domains": ["new.example"]}) == {"changed": True}
    assert resolvectl.writes() == [["domain", "lo", "new.example", "~corp.example"]]
    assert run("network.dns.get", {"interface_name": "lo"})["servers"] == ["192.0.2.1"]


def test_empty_search_list_clears_with_an_empty_argument(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1"], domain=["old.example"])
    assert run("network.dns.update", {"interface_name": "lo", "search_domains": []}) == {"changed": True}
    assert resolvectl.writes() == [["domain", "lo", ""]]


def test_no_op_update_runs_no_setter(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1", "2001:db8::1"], domain=["a.example"])
    result = run("network.dns.update",
                 {"interface_name": "lo", "servers": ["192.0.2.1", "2001:db8::1"], "search_domains": ["a.example"]})
    assert result == {"changed": False}
    assert resolvectl.writes() == []


def test_bad_interface_never_calls_resolvectl(resolvectl):
    with pytest.raises(ProviderError, match="'osapi-nope0' does not exist"):
        run("network.dns.update", {"interface_name": "osapi-nope0", "servers": ["192.0.2.1"]})
    assert resolvectl.calls() == []


@pytest.mark.parametrize("interface, servers, domains", [
    ("lo", ["fe80::1%lo\nx"], None),              # a job not validated by this API (older API, raw NATS)
    ("lo", ["192.0.2.1 192.0.2.2"], None),
    ("lo", ["not-an-ip"], None),
    ("lo", None, ["a.example\x00"]),
    ("lo", None, ["--set-dns=1.2.3.4"]),
    ("-h", ["192.0.2.1"], None),                  # would be read as an option
    ("lo\n", ["192.0.2.1"], None),
])
def test_unchecked_values_never_reach_resolvectl(resolvectl, interface, servers, domains):
    with pytest.raises(ProviderError, match="refusing"):
        ResolvedProvider().update(interface, servers, domains)
    assert resolvectl.calls() == []


def test_resolvectl_failure_is_reported_with_its_message(resolvectl, monkeypatch):
    monkeypatch.setenv("FAKE_RESOLVECTL_FAIL", "1")
    with pytest.raises(ProviderError, match="resolvectl dns lo failed: Failed to set DNS configuration: Access denied"):
        run("network.dns.update", {"interface_name": "lo", "servers": ["192.0.2.1"]})


def test_change_not_taken_is_an_error(resolvectl, monkeypatch):
    monkeypatch.setenv("FAKE_RESOLVECTL_IGNORE_SET", "1")
    with pytest.raises(ProviderError, match="did not take the servers for lo: asked 192.0.2.1, it reports none"):
        run("network.dns.update", {"interface_name": "lo", "servers": ["192.0.2.1"]})


def test_missing_resolvectl_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(ProviderError, match="resolvectl was not found on PATH.*resolv_conf"):
        run("network.dns.get", {"interface_name": "lo"})


def test_unexpected_output_is_an_error(resolvectl):
    resolvectl.path.write_text("#!/bin/sh\necho 'Link 1 (eth9): 192.0.2.1'\n")
    with pytest.raises(ProviderError, match="unexpected output from resolvectl"):
        run("network.dns.get", {"interface_name": "lo"})


@pytest.mark.parametrize(
    "word, address",
    [("192.0.2.1", "192.0.2.1"), ("192.0.2.1:53", "192.0.2.1"), ("192.0.2.1#dns.example", "192.0.2.1"),
     ("[2001:db8::1]:853%2#x", "2001:db8::1"), ("2001:DB8::1", "2001:db8::1"), ("fe80::1%lo", "fe80::1%lo")],
)
def test_server_address_forms(word, address):
    assert server_address(word) == address


# ---------------------------------------------------------------- the factory


def host_with(provider: str, path) -> HostContext:
    env = {"OSAPI_JOB_WORKER_DNS_PROVIDER": provider, "OSAPI_JOB_WORKER_DNS_RESOLV_CONF": str(path)}
    return HostContext(hostname="h", labels={}, config=load(environ=env))


def test_explicit_choice_wins(tmp_path):
    chosen = dns.provider_for(host_with("resolv_conf", tmp_path / "r.conf"))
    assert isinstance(chosen, ResolvConfProvider) and chosen.path == str(tmp_path / "r.conf")
    assert isinstance(dns.provider_for(host_with("resolved", tmp_path / "r.conf")), ResolvedProvider)


def test_no_config_means_auto_with_etc_resolv_conf(monkeypatch):
    monkeypatch.setattr(platform, "resolved_manages_host", lambda path: False)
    chosen = dns.provider_for(HostContext(hostname="h", labels={}))
    assert isinstance(chosen, ResolvConfProvider) and chosen.path == "/etc/resolv.conf"


@pytest.fixture
def resolved_run_dir(tmp_path, monkeypatch):
    run_dir = tmp_path / "run" / "systemd" / "resolve"
    run_dir.mkdir(parents=True)
    (run_dir / "stub-resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    monkeypatch.setattr(platform, "RESOLVED_RUN_DIR", run_dir)
    return run_dir


def test_auto_picks_resolved_for_a_stub_symlink(tmp_path, resolvectl, resolved_run_dir):
    link = tmp_path / "resolv.conf"
    link.symlink_to(resolved_run_dir / "stub-resolv.conf")
    assert isinstance(dns.provider_for(host_with("auto", link)), ResolvedProvider)


def test_auto_picks_resolved_for_a_copied_stub_file(tmp_path, resolvectl, resolved_run_dir):
    copy = tmp_path / "resolv.conf"
    copy.write_text("# managed by systemd-resolved\nnameserver 127.0.0.53\nsearch x.example\n")
    assert isinstance(dns.provider_for(host_with("auto", copy)), ResolvedProvider)


def test_auto_picks_resolv_conf_when_resolved_is_not_in_charge(tmp_path, resolvectl, resolved_run_dir, monkeypatch):
    plain = tmp_path / "resolv.conf"
    plain.write_text("nameserver 192.0.2.1\n")  # resolved runs, but glibc never asks it
    assert isinstance(dns.provider_for(host_with("auto", plain)), ResolvConfProvider)
    stub = tmp_path / "stub.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    monkeypatch.setattr(platform, "RESOLVED_RUN_DIR", tmp_path / "no-such-dir")  # resolved not running
    assert isinstance(dns.provider_for(host_with("auto", stub)), ResolvConfProvider)
    monkeypatch.setattr(platform, "RESOLVED_RUN_DIR", resolved_run_dir)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no resolvectl
    assert isinstance(dns.provider_for(host_with("auto", stub)), ResolvConfProvider)


def test_auto_end_to_end_through_the_stand_in(tmp_path, resolvectl, resolved_run_dir):
    link = tmp_path / "resolv.conf"
    link.symlink_to(resolved_run_dir / "stub-resolv.conf")
    op = operations.get("network.dns.update")
    assert op.run(op.check({"interface_name": "lo", "search_domains": ["auto.example"]}), host_with("auto", link)) == {
        "changed": True}
    assert resolvectl.writes() == [["domain", "lo", "auto.example"]]
    assert (resolved_run_dir / "stub-resolv.conf").read_text() == "nameserver 127.0.0.53\noptions edns0 trust-ad\n"


# ---------------------------------------------------------------- dry run


def dry_run(data: dict) -> dict:
    op = operations.get("network.dns.update")
    return check_result("network.dns.update", op.run(op.check(data), resolved_host(), dry_run=True))


def test_dry_run_only_reads_and_reports_before_and_after(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1"], domain=["keep.example", "~corp.example"])
    assert dry_run({"interface_name": "lo", "servers": ["198.51.100.1"], "search_domains": ["new.example"]}) == {
        "changed": True, "dry_run": True,
        "before": {"servers": ["192.0.2.1"], "search_domains": ["keep.example"]},
        "after": {"servers": ["198.51.100.1"], "search_domains": ["new.example"]},
    }
    assert resolvectl.writes() == []  # no set command, only the two reads
    assert resolvectl.calls() == [["dns", "lo"], ["domain", "lo"]]
    assert run("network.dns.get", {"interface_name": "lo"}) == {
        "servers": ["192.0.2.1"], "search_domains": ["keep.example"]}


def test_dry_run_of_a_no_op_says_unchanged(resolvectl):
    resolvectl.set("lo", dns=["192.0.2.1"], domain=["keep.example"])
    result = dry_run({"interface_name": "lo", "servers": ["192.0.2.1"]})
    assert result["changed"] is False and result["before"] == result["after"]
    assert resolvectl.writes() == []
