"""Registry rules without a server: heartbeat age against the TTL, NATS time stamps, one row per host."""

from __future__ import annotations

import pytest

from osapi.job.registry import DEFAULT_TTL, by_host, entry_ttl, is_stale, stamp_ns

S = 1_000_000_000


@pytest.mark.parametrize("text, expected", [
    ("1970-01-01T00:00:01Z", S),
    ("1970-01-01T00:00:01.5Z", S + S // 2),
    ("1970-01-01T00:00:01.000000007Z", S + 7),
    ("1970-01-01T01:00:01.25+01:00", S + S // 4),
    ("2026-11-28T17:38:51.651492418Z", 1795887531 * S + 651492418),
])
def test_stamp_ns_reads_nats_time_stamps(text, expected):
    assert stamp_ns(text) == expected


@pytest.mark.parametrize("text", [None, "", "x", "2026-11-28 17:38:51Z", "2026-11-28T17:38:51", 5,
                                  "2026-13-28T17:38:51Z", "2026-11-28T17:38:51.1234567890Z"])
def test_stamp_ns_refuses_anything_else(text):
    assert stamp_ns(text) is None


def test_an_entry_is_stale_once_older_than_its_ttl_rounded_up_as_the_server_does():
    entry = {"hostname": "h", "ttl": 1.5}  # the server applies 2 s
    assert entry_ttl(entry) == 2
    assert not is_stale(entry, 10 * S, 12 * S)
    assert is_stale(entry, 10 * S, 12 * S + 1)


@pytest.mark.parametrize("ttl", [None, 0, -3, "15", True])
def test_an_entry_without_a_usable_ttl_gets_the_default(ttl):
    entry = {"hostname": "h", **({} if ttl is None else {"ttl": ttl})}
    assert entry_ttl(entry) == DEFAULT_TTL == 15
    assert not is_stale(entry, 0, 15 * S) and is_stale(entry, 0, 15 * S + 1)


def test_without_a_server_stamp_the_entrys_last_seen_is_used_and_unreadable_means_live():
    assert is_stale({"hostname": "h", "ttl": 3, "last_seen": "1970-01-01T00:00:01Z"}, None, 10 * S)
    assert not is_stale({"hostname": "h", "ttl": 3, "last_seen": "1970-01-01T00:00:09Z"}, None, 10 * S)
    assert not is_stale({"hostname": "h", "ttl": 3, "last_seen": "garbage"}, None, 10 * S)


def test_one_row_per_host():
    entries = [
        {"hostname": "b", "labels": {"g": "old"}, "version": "1.0", "started_at": "2024-05-01T10:00:00.000Z",
         "last_seen": "2024-05-01T10:05:00.000Z", "pid": 1},
        {"hostname": "b", "labels": {"g": "new"}, "version": "1.1", "started_at": "2024-05-01T10:03:00.000Z",
         "last_seen": "2024-05-01T10:04:59.000Z", "pid": 2},
        {"hostname": "a", "labels": {}, "version": "1.1", "started_at": "2024-05-01T09:00:00.000Z",
         "last_seen": "2024-05-01T10:05:01.000Z", "pid": 3},
    ]
    assert by_host(entries) == [
        {"hostname": "a", "labels": {}, "version": "1.1", "started_at": "2024-05-01T09:00:00.000Z",
         "last_seen": "2024-05-01T10:05:01.000Z", "processes": 1},
        {"hostname": "b", "labels": {"g": "new"}, "version": "1.1", "started_at": "2024-05-01T10:00:00.000Z",
         "last_seen": "2024-05-01T10:05:00.000Z", "processes": 2},
    ]
    assert by_host([]) == []
