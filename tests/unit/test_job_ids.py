"""Job ids are UUIDv7 whose text sorts by creation time."""

from __future__ import annotations

import uuid

from osapi.domain.ids import created_ms, is_job_id, new_job_id


def test_ids_are_version_7_uuids():
    job_id = new_job_id()
    parsed = uuid.UUID(job_id)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert is_job_id(job_id) and str(parsed) == job_id


def test_ids_sort_by_creation_even_within_one_millisecond():
    ids = [new_job_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    later = [new_job_id(now_ms=created_ms(ids[-1]) + 10) for _ in range(3)]
    assert later == sorted(later) and later[0] > ids[-1]


def test_a_clock_going_back_does_not_break_the_order():
    first = new_job_id(now_ms=2_000_000_000_000)
    second = new_job_id(now_ms=1_000_000_000_000)
    assert second > first


def test_is_job_id_rejects_anything_else():
    for bad in ["", "x", "0190-x", "*", "a.>", new_job_id().upper(), None, 7, " " + new_job_id()]:
        assert not is_job_id(bad)
