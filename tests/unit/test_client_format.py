"""osapi.cli.client_format: the tables `osapi client` prints for people."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from osapi.cli import client_format as fmt
from osapi.domain.operations import OPERATIONS


@pytest.fixture
def utc_plus_2():
    """Local time is UTC+2 (no DST) so 'local' is checkable."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-2"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def rows(text: str) -> list[list[str]]:
    """A table's data rows split on runs of 2+ spaces (cells may hold single spaces)."""
    import re

    lines = text.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]


def test_every_operation_has_a_view():
    assert set(fmt.VIEWS) == set(OPERATIONS)


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:00Z", "2024-05-01 14:00:00"),
    ("2024-05-01T12:00:00.123456789Z", "2024-05-01 14:00:00"),
    ("2024-05-01T12:00:00+02:00", "2024-05-01 12:00:00"),
    ("2024-05-01T12:00:00.5-01:00", "2024-05-01 15:00:00"),
    ("not a time", "not a time"),
    (None, ""),
])
def test_times_are_shown_local(utc_plus_2, text, expected):
    assert fmt.local_time(text) == expected


def test_ago_and_durations():
    now = dt.datetime(2024, 5, 1, 12, 0, 10, tzinfo=dt.timezone.utc).timestamp()
    assert fmt.ago("2024-05-01T12:00:00Z", now) == "10s ago"
    assert fmt.ago("2024-05-01T12:00:09.500Z", now) == "just now"
    assert fmt.ago("2024-04-30T11:00:00Z", now) == "1d 1h ago"
    assert fmt.human_duration(90061) == "1d 1h 1m"
    assert fmt.human_duration(125) == "2m 5s"
    assert fmt.human_duration(0.25) == "0.25s"


def test_host_table_sorts_hosts_and_keeps_failed_rows_with_their_error():
    results = [
        {"hostname": "b", "1min": 0.5, "5min": 0.25, "15min": 0.125},
        {"hostname": "a", "status": "failed", "error": "no /proc/loadavg"},
    ]
    text = fmt.view_for("system.load.get")(results)
    assert text.splitlines()[0].split() == ["HOSTNAME", "1MIN", "5MIN", "15MIN", "ERROR"]
    assert rows(text) == [["a", "no /proc/loadavg"], ["b", "0.50", "0.25", "0.12"]]


def test_no_error_column_when_every_host_answered():
    text = fmt.view_for("system.os.get")([{"hostname": "h", "distribution": "Debian GNU/Linux", "version": "12"}])
    assert text.splitlines()[0].split() == ["HOSTNAME", "DISTRIBUTION", "VERSION"]
    assert rows(text) == [["h", "Debian GNU/Linux", "12"]]


def test_memory_sizes_are_human_readable():
    text = fmt.view_memory([{"hostname": "h", "total": 8 * 2**30, "used": 2 * 2**30, "free": 6 * 2**30}])
    assert rows(text) == [["h", "8.0 GiB", "2.0 GiB", "6.0 GiB", "25%"]]


def test_disks_are_one_table_with_a_host_column():
    disk = {"name": "/", "device": "/dev/sda1", "fstype": "ext4", "total": 100 * 2**30,
            "used": 40 * 2**30, "free": 60 * 2**30}
    text = fmt.view_disk([
        {"hostname": "b", "disks": [disk, {**disk, "name": "/boot", "device": "/dev/sda2", "total": 2**30,
                                           "used": 2**29, "free": 2**29}]},
        {"hostname": "a", "status": "failed", "error": "boom"},
    ])
    assert rows(text) == [
        ["a", "boom"],
        ["b", "/", "/dev/sda1", "ext4", "100.0 GiB", "40.0 GiB", "60.0 GiB", "40%"],
        ["b", "/boot", "/dev/sda2", "ext4", "1.0 GiB", "512.0 MiB", "512.0 MiB", "50%"],
    ]


def test_disk_use_is_computed_like_df_without_the_root_reserve():
    """ext4 reserves 5 % for root: total 100, used 50, free 45 -> df says 53 %, not 50 %."""
    disk = {"name": "/", "device": "d", "fstype": "ext4", "total": 100 * 2**20, "used": 50 * 2**20,
            "free": 45 * 2**20}
    assert rows(fmt.view_disk([{"hostname": "h", "disks": [disk]}]))[0][-1] == "53%"
    assert fmt.disk_percent(1, 999) == "1%"  # rounded up, as df does: 0.1 % shows 1 %
    assert fmt.disk_percent(0, 10) == "0%" and fmt.disk_percent(10, 0) == "100%"
    assert fmt.disk_percent(0, 0) == "-" and fmt.disk_percent(None, 5) == ""


def test_dns_update_failed_host_shows_failed_and_its_error():
    text = fmt.view_for("network.dns.update")([{"hostname": "b", "status": "failed", "error": "no such interface"},
                                {"hostname": "a", "status": "ok", "changed": False}])
    assert text.splitlines()[0].split() == ["HOSTNAME", "STATUS", "CHANGED", "ERROR"]
    assert rows(text) == [["a", "ok", "no"], ["b", "failed", "no such interface"]]


def test_status_shows_a_host_table_and_a_disk_table():
    item = {"hostname": "h", "uptime": "2 days, 3 hours", "uptime_seconds": 183600,
            "load_average": {"1min": 1, "5min": 2, "15min": 3},
            "memory": {"total": 4 * 2**30, "free": 3 * 2**30, "used": 2**30},
            "disks": [{"name": "/", "device": "d", "fstype": "xfs", "total": 10, "used": 5, "free": 5}],
            "os_info": {"distribution": "Ubuntu", "version": "24.04"}}
    hosts, disks = fmt.view_status([item]).split("\n\n")
    assert rows(hosts) == [["h", "2 days, 3 hours", "1.00 2.00 3.00", "1.0 GiB / 4.0 GiB (25%)", "Ubuntu 24.04"]]
    assert rows(disks) == [["h", "/", "d", "xfs", "10 B", "5 B", "5 B", "50%"]]


def test_uptime_shows_since_when_in_local_time():
    text = fmt.view_uptime([{"hostname": "h", "uptime": "1 hour", "uptime_seconds": 3600}])
    since = dt.datetime.strptime(rows(text)[0][2], "%Y-%m-%d %H:%M:%S")
    assert abs((dt.datetime.now() - since).total_seconds() - 3600) < 120


def test_dns_ping_and_hostname_views():
    assert rows(fmt.view_for("network.dns.get")([{"hostname": "h", "servers": ["1.1.1.1", "::1"], "search_domains": ["x.org"]}])) == [
        ["h", "1.1.1.1, ::1", "x.org"]]
    ping = {"hostname": "h", "packets_sent": 3, "packets_received": 2, "packet_loss": 33.33,
            "min_rtt_ms": 0.1, "avg_rtt_ms": 0.2, "max_rtt_ms": 0.3}
    assert rows(fmt.view_ping([ping])) == [["h", "3", "2", "33.33%", "0.100", "0.200", "0.300"]]
    assert rows(fmt.view_for("system.hostname.get")([{"hostname": "h", "labels": {"zone": "a", "group": "web"}}])) == [
        ["h", "group=web, zone=a"]]
    assert rows(fmt.view_for("network.dns.update")([{"hostname": "h", "status": "ok", "changed": True}])) == [["h", "ok", "yes"]]


def test_no_results_says_so():
    assert fmt.view_for("system.load.get")([]) == "no host answered"
    assert fmt.domain_answer({"job_id": "j", "results": []}, "system.load.get") == "job j\n\nno host answered"


def test_job_results_turn_responses_into_per_host_results():
    job = {"responses": {
        "b": {"status": "completed", "data": {"1min": 1.0, "5min": 1.0, "15min": 1.0}, "error": None},
        "a": {"status": "failed", "data": None, "error": "exploded"},
    }}
    assert fmt.job_results(job) == [
        {"hostname": "a", "status": "failed", "error": "exploded"},
        {"hostname": "b", "1min": 1.0, "5min": 1.0, "15min": 1.0},
    ]


def test_job_detail_lists_fields_workers_results_and_timeline(utc_plus_2):
    job = {
        "id": "j-1", "status": "completed", "created": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:01Z", "target_hostname": "_any", "hostname": "h",
        "operation": {"type": "system.os.get", "data": {}}, "result": None, "error": None,
        "responses": {"h": {"status": "completed", "data": {"distribution": "Arch", "version": "rolling"}}},
        "worker_states": {"h": {"status": "completed", "error": None, "duration": 0.0123}},
        "timeline": [{"timestamp": "2024-05-01T10:00:00Z", "event": "submitted", "hostname": None},
                     {"timestamp": "2024-05-01T10:00:01Z", "event": "completed", "hostname": "h"}],
    }
    text = fmt.job_detail(job)
    assert "id:        j-1" in text
    assert "operation: system.os.get" in text
    assert "created:   2024-05-01 12:00:00" in text
    assert "workers:" in text and "12 ms" in text
    assert "results:" in text and "rolling" in text
    assert "2024-05-01 12:00:01  completed  h" in text


def test_job_list_has_a_row_per_job_and_a_paging_footer(utc_plus_2):
    body = {"total_items": 25, "items": [
        {"id": "j2", "status": "failed", "operation": {"type": "system.load.get"}, "target_hostname": "_all",
         "responses": {"x": {}, "y": {}}, "created": "2024-05-01T10:00:00Z"},
        {"id": "j1", "status": "completed", "operation": {"type": "system.os.get"}, "target_hostname": "_any",
         "responses": {}, "created": "2024-05-01T09:00:00Z"},
    ]}
    text = fmt.job_list(body, offset=10)
    assert rows(text.split("\n\n")[0]) == [
        ["j2", "failed", "system.load.get", "_all", "x, y", "2024-05-01 12:00:00"],
        ["j1", "completed", "system.os.get", "_any", "2024-05-01 11:00:00"],
    ]
    assert text.endswith("jobs 11-12 of 25 (next page: --offset 12)")
    assert fmt.job_list({"total_items": 0, "items": []}) == "no jobs"


def test_job_stats_lists_every_status_even_when_zero():
    text = fmt.job_stats({"total_jobs": 2, "status_counts": {"completed": 2}, "operation_counts":
                          {"system.os.get": 2}, "dlq_count": 1})
    assert "total jobs:   2" in text and "dead letters: 1" in text
    statuses = text.split("\n\n")[1]
    assert rows(statuses) == [["submitted", "0"], ["processing", "0"], ["completed", "2"], ["failed", "0"],
                              ["partial_failure", "0"]]


def test_workers_table(utc_plus_2):
    now = dt.datetime(2024, 5, 1, 10, 0, 5, tzinfo=dt.timezone.utc).timestamp()
    body = {"total": 1, "workers": [{"hostname": "w1", "labels": {"group": "web"}, "version": "0.1.0",
                                     "started_at": "2024-05-01T09:00:00Z", "last_seen": "2024-05-01T10:00:00Z",
                                     "processes": 2}]}
    assert rows(fmt.workers(body, now)) == [["w1", "group=web", "0.1.0", "2024-05-01 11:00:00", "5s ago", "2"]]
    assert fmt.workers({"total": 0, "workers": []}) == "no workers registered"
