"""Ping with icmplib, only ever to 127.0.0.1 and ::1 — on the host's loopback or
inside a fresh network namespace the test creates (where sysctls can be set
without touching the host)."""

from __future__ import annotations

import pytest
from provider_support import check_result, ipv6_loopback_reason, run_in_net_namespace, unshare_net_reason

from osapi.domain import operations
from osapi.domain.operations import HostContext

HOST = HostContext(hostname="h", labels={})
needs_netns = pytest.mark.skipif(unshare_net_reason() is not None, reason=str(unshare_net_reason()))


def ping(data: dict) -> dict:
    op = operations.get("network.ping.do")
    return check_result("network.ping.do", op.run(op.check(data), HOST))


def assert_all_answered(result: dict, count: int) -> None:
    assert result["packets_sent"] == count
    assert result["packets_received"] == count
    assert result["packet_loss"] == 0.0
    assert 0.0 < result["min_rtt_ms"] <= result["avg_rtt_ms"] <= result["max_rtt_ms"] < 1000.0


def test_ping_ipv4_loopback_default_count_is_3():
    assert_all_answered(ping({"address": "127.0.0.1"}), 3)


def test_ping_ipv4_loopback_with_count():
    assert_all_answered(ping({"address": "127.0.0.1", "count": 1}), 1)


@pytest.mark.skipif(ipv6_loopback_reason() is not None, reason=str(ipv6_loopback_reason()))
def test_ping_ipv6_loopback():
    assert_all_answered(ping({"address": "::1", "count": 2}), 2)


@needs_netns
def test_ping_a_hostname_resolves_it():
    """``localhost`` from /etc/hosts, inside a private network namespace so that
    even a host without that entry could send no DNS query out."""
    code = """
    from osapi.provider.ping import ping
    print(json.dumps(ping({"address": "localhost", "count": 1}, None)))
    """
    status, out, err = run_in_net_namespace(code)
    assert status == 0, err
    assert_all_answered(check_result("network.ping.do", out), 1)


@pytest.mark.parametrize("data, word", [
    ({"address": "127.0.0.1", "count": 0}, "count"),
    ({"address": "127.0.0.1", "count": 11}, "count"),
    ({"address": "127.0.0.1", "count": True}, "count"),
    ({"address": "not a host!"}, "not a host!"),
    ({"address": ""}, "address"),
    ({}, "address"),
])
def test_bad_data_is_refused_before_any_packet(data, word):
    with pytest.raises(operations.InvalidData, match=word):
        operations.get("network.ping.do").check(data)


@needs_netns
def test_no_reply_means_full_loss_and_zero_rtts():
    """In a private network namespace that ignores echo requests."""
    code = """
    from osapi.provider.ping import ping
    print(json.dumps(ping({"address": "127.0.0.1", "count": 1}, None)))
    """
    status, out, err = run_in_net_namespace(code, sysctls={"net/ipv4/icmp_echo_ignore_all": "1"})
    assert status == 0, err
    assert check_result("network.ping.do", out) == {
        "packets_sent": 1, "packets_received": 0, "packet_loss": 100.0,
        "min_rtt_ms": 0.0, "avg_rtt_ms": 0.0, "max_rtt_ms": 0.0,
    }


@needs_netns
def test_unresolvable_name_is_named_in_the_error():
    """In a network namespace with nothing but a loopback, no DNS query can leave the machine."""
    code = """
    from osapi.provider import ProviderError
    from osapi.provider.ping import ping
    try:
        print(json.dumps({"result": ping({"address": "osapi-no-such-host.invalid", "count": 1}, None)}))
    except ProviderError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    status, out, err = run_in_net_namespace(code, lo_up=False)
    assert status == 0, err
    assert out == {"error": "cannot resolve 'osapi-no-such-host.invalid': no such host name"}


PING_AS_NOBODY = """
from osapi.provider import ProviderError
from osapi.provider.ping import ping
try:
    print(json.dumps({"result": ping({"address": "127.0.0.1", "count": 2}, None)}))
except ProviderError as exc:
    print(json.dumps({"error": str(exc)}))
"""


@needs_netns
def test_unprivileged_user_pings_with_datagram_sockets_when_allowed():
    status, out, err = run_in_net_namespace(
        PING_AS_NOBODY, sysctls={"net/ipv4/ping_group_range": "0 2147483647"}, as_nobody=True,
        preload=["osapi.provider", "osapi.provider.ping", "icmplib", "encodings.idna"])
    assert status == 0, err
    assert "result" in out, out
    assert_all_answered(out["result"], 2)


@needs_netns
def test_unprivileged_user_is_told_about_ping_group_range_when_forbidden():
    status, out, err = run_in_net_namespace(
        PING_AS_NOBODY, sysctls={"net/ipv4/ping_group_range": "1 0"}, as_nobody=True,
        preload=["osapi.provider", "osapi.provider.ping", "icmplib", "encodings.idna"])
    assert status == 0, err
    assert "error" in out, out
    message = out["error"]
    assert "group id 65534" in message and "net.ipv4.ping_group_range is '1 0'" in message
    assert "sysctl -w" in message


@needs_netns
def test_socket_failure_is_a_provider_error_naming_the_address():
    """A network namespace whose loopback is down: the kernel refuses to send."""
    code = """
    from osapi.provider import ProviderError
    from osapi.provider.ping import ping
    try:
        print(json.dumps({"result": ping({"address": "127.0.0.1", "count": 1}, None)}))
    except ProviderError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    status, out, err = run_in_net_namespace(code, lo_up=False)
    assert status == 0, err
    assert out["error"].startswith("cannot ping 127.0.0.1: "), out


@needs_netns
def test_broadcast_address_is_refused_clearly():
    """127.255.255.255, the loopback network's broadcast address, inside a private
    network namespace, so nothing could reach a real network."""
    code = """
    from osapi.provider import ProviderError
    from osapi.provider.ping import ping
    try:
        print(json.dumps({"result": ping({"address": "127.255.255.255", "count": 1}, None)}))
    except ProviderError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    status, out, err = run_in_net_namespace(code)
    assert status == 0, err
    assert out == {"error": "127.255.255.255 is a broadcast address; pinging it is not allowed"}
