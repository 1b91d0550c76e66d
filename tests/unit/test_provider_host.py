"""Host facts, memory and load checked against the machine itself."""

from __future__ import annotations

import os
import socket

import psutil
import pytest
from provider_support import check_result

from osapi.domain import operations
from osapi.domain.operations import HostContext
from osapi.provider import host as host_provider

HOST = HostContext(hostname="", labels={"group": "web.dev"})


def run(op_type: str, data: dict | None = None) -> dict:
    op = operations.get(op_type)
    return check_result(op_type, op.run(op.check(data or {}), HOST))


def proc_uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


# ---------------------------------------------------------------- hostname, uptime


def test_hostname_is_the_system_name_unless_configured():
    assert run("system.hostname.get") == {"hostname": socket.gethostname(), "labels": {"group": "web.dev"}}
    named = HostContext(hostname="w1.example", labels={})
    assert host_provider.hostname({}, named) == {"hostname": "w1.example", "labels": {}}


def test_uptime_matches_proc_uptime():
    before = proc_uptime()
    result = run("system.uptime.get")
    after = proc_uptime()
    assert before - 1 <= result["uptime_seconds"] <= after + 1
    assert result["uptime"] == host_provider.readable_uptime(result["uptime_seconds"])


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0 seconds"),
        (1, "1 second"),
        (59.9, "59 seconds"),
        (60, "1 minute"),
        (3600, "1 hour"),
        (3661, "1 hour, 1 minute"),
        (86400, "1 day"),
        (4 * 86400 + 3 * 3600 + 12 * 60 + 5, "4 days, 3 hours, 12 minutes"),
        (2 * 86400 + 60 * 2, "2 days, 2 minutes"),
    ],
)
def test_readable_uptime(seconds, text):
    assert host_provider.readable_uptime(seconds) == text


# ---------------------------------------------------------------- os-release


def test_os_info_matches_etc_os_release():
    fields = {}
    for path in host_provider.OS_RELEASE_PATHS:
        if path.exists():
            for line in path.read_text().splitlines():
                if "=" in line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    fields[key] = value.strip().strip('"').strip("'")
            break
    result = run("system.os.get")
    if not fields:
        assert result == {"distribution": os.uname().sysname, "version": ""}
    else:
        assert result["distribution"] == (fields.get("NAME") or fields.get("ID"))
        assert result["version"] == (fields.get("VERSION_ID") or fields.get("BUILD_ID") or "")


def test_os_release_parsing_rules(tmp_path):
    path = tmp_path / "os-release"
    path.write_text(
        '# comment\nNAME="Debian GNU/Linux"\nVERSION_ID=\'12\'\nID=debian\n\nPRETTY_NAME="Debian \\"x\\""\n'
    )
    assert host_provider.read_os_info([path]) == {"distribution": "Debian GNU/Linux", "version": "12"}
    path.write_text("ID=arch\nBUILD_ID=rolling\n")  # no NAME, no VERSION_ID
    assert host_provider.read_os_info([path]) == {"distribution": "arch", "version": "rolling"}
    path.write_text("ID=alpine\n")
    assert host_provider.read_os_info([path]) == {"distribution": "alpine", "version": ""}
    path.write_text('NAME="unterminated\nVERSION_ID=3.19\n')
    assert host_provider.read_os_info([path]) == {"distribution": "unterminated", "version": "3.19"}


def test_os_release_fallbacks(tmp_path):
    vendor = tmp_path / "usr-lib-os-release"
    vendor.write_text("NAME=Fedora\nVERSION_ID=40\n")
    missing = tmp_path / "missing"
    # /etc/os-release missing: the vendor file; both missing: the kernel's name, no error
    assert host_provider.read_os_info([missing, vendor]) == {"distribution": "Fedora", "version": "40"}
    assert host_provider.read_os_info([missing]) == {"distribution": os.uname().sysname, "version": ""}
    unreadable_dir = tmp_path / "dir"
    unreadable_dir.mkdir()
    assert host_provider.read_os_info([unreadable_dir]) == {"distribution": os.uname().sysname, "version": ""}


# ---------------------------------------------------------------- memory, load


def test_memory_matches_psutil():
    vm = psutil.virtual_memory()
    result = run("system.memory.get")
    assert result["total"] == vm.total
    assert result["used"] + result["free"] == result["total"]
    assert 0 < result["free"] <= result["total"]
    # free is MemAvailable; it moves while other tests run, so allow 10% of total
    assert abs(result["free"] - vm.available) <= vm.total // 10
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    assert result["total"] == meminfo["MemTotal"]


def test_load_matches_proc_loadavg():
    def proc():
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]

    before = proc()
    result = run("system.load.get")
    after = proc()
    for i, key in enumerate(("1min", "5min", "15min")):
        low, high = min(before[i], after[i]), max(before[i], after[i])
        assert low - 0.01 <= result[key] <= high + 0.01, (key, before, result, after)


# ---------------------------------------------------------------- status


def test_status_holds_every_part_and_each_matches_its_own_operation():
    result = run("system.status.get")
    assert result["os_info"] == run("system.os.get")
    assert result["memory"]["total"] == psutil.virtual_memory().total
    assert set(result["load_average"]) == {"1min", "5min", "15min"}
    assert abs(result["uptime_seconds"] - proc_uptime()) < 5
    root = [d for d in result["disks"] if d["name"] == "/"]
    assert len(root) == 1
    assert root[0]["total"] == os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
