"""Status computed from events and the job object (docs/jobs.md, Events and computed status)."""

from __future__ import annotations

import pytest

from osapi.job.status import (
    Event, Summary, compute_status, event_key, job_view, parse_event_key, rfc3339, summarize, target_token,
)

S = 1_000_000_000


def ev(event, host, t):
    return Event(event, host, t * S)


def submitted(target="_any"):
    return ev("submitted", target_token(target), 0)


def test_event_keys_round_trip_with_dotted_hostnames():
    key = event_key("0190-id", "completed", "web1.example.com", 123)
    assert key == "status.0190-id.completed.web1.example.com.123"
    assert parse_event_key(key) == ("0190-id", Event("completed", "web1.example.com", 123))
    assert parse_event_key("jobs.x") is None
    assert parse_event_key("status.id.exploded.h.1") is None
    assert parse_event_key("status.id.started.h.notanumber") is None


@pytest.mark.parametrize("events, expected", [
    ([], "submitted"),
    ([submitted()], "submitted"),
    ([submitted(), ev("acknowledged", "a", 1)], "processing"),
    ([submitted(), ev("acknowledged", "a", 1), ev("started", "a", 2), ev("completed", "a", 3)], "completed"),
    ([submitted(), ev("started", "a", 2), ev("failed", "a", 3)], "failed"),
    # _any: a dead host's dangling start does not hold the job once another host finished it
    ([submitted(), ev("started", "a", 1), ev("started", "b", 5), ev("completed", "b", 6)], "completed"),
    ([submitted(), ev("started", "a", 1), ev("failed", "a", 2), ev("started", "b", 3)], "processing"),
    ([submitted("w1"), ev("started", "w1", 1), ev("started", "w1", 3), ev("completed", "w1", 4)], "completed"),
])
def test_single_host_targets(events, expected):
    assert compute_status(events) == expected


@pytest.mark.parametrize("target", ["_all", "group:web"])
@pytest.mark.parametrize("events, expected", [
    ([ev("completed", "a", 2), ev("started", "b", 1)], "processing"),
    ([ev("completed", "a", 2), ev("completed", "b", 3)], "completed"),
    ([ev("failed", "a", 2), ev("failed", "b", 3)], "failed"),
    ([ev("failed", "a", 2), ev("completed", "b", 3)], "partial_failure"),
    ([ev("started", "a", 1), ev("completed", "a", 2), ev("acknowledged", "b", 3)], "processing"),
    # a host redelivered after its worker died: its newest event decides
    ([ev("started", "a", 1), ev("acknowledged", "a", 4), ev("started", "a", 5), ev("completed", "a", 6)], "completed"),
])
def test_broadcast_targets(target, events, expected):
    assert compute_status([submitted(target)] + events) == expected


def test_order_of_events_does_not_matter():
    events = [submitted("_all"), ev("completed", "a", 3), ev("acknowledged", "a", 1), ev("started", "a", 2)]
    assert compute_status(events) == compute_status(list(reversed(events))) == "completed"


def test_job_view_single_host():
    job = {"id": "j", "created": rfc3339(0), "created_ns": 0, "target_hostname": "_any",
           "operation": {"type": "system.hostname.get", "data": {}}}
    events = [submitted(), ev("acknowledged", "a", 1), ev("started", "a", 1), ev("completed", "a", 3)]
    responses = {"a": {"status": "ok", "data": {"hostname": "a"}, "error": None, "hostname": "a"}}
    view = job_view(job, events, responses)
    assert view["status"] == "completed" and view["hostname"] == "a"
    assert view["result"] == {"hostname": "a"} and view["error"] is None
    assert view["responses"] == {"a": {"status": "ok", "data": {"hostname": "a"}, "error": None}}
    assert view["worker_states"] == {"a": {"status": "completed", "error": None, "duration": 2.0}}
    assert [t["event"] for t in view["timeline"]] == ["submitted", "acknowledged", "started", "completed"]
    assert view["timeline"][0]["hostname"] == "_any"
    assert view["updated_at"] == "1970-01-01T00:00:03.000Z"
    assert set(view) == {"id", "status", "created", "updated_at", "target_hostname", "operation", "hostname",
                         "result", "error", "responses", "worker_states", "timeline"}


def test_job_view_partial_failure_summarises_errors():
    job = {"id": "j", "created": rfc3339(0), "target_hostname": "group:web", "operation": {}}
    events = [submitted("group:web"), ev("started", "a", 1), ev("failed", "a", 2),
              ev("started", "b", 1), ev("completed", "b", 2)]
    responses = {"a": {"status": "failed", "data": None, "error": "boom"},
                 "b": {"status": "ok", "data": {}, "error": None}}
    view = job_view(job, events, responses)
    assert view["status"] == "partial_failure"
    assert view["hostname"] is None and view["result"] is None
    assert view["error"] == "1 of 2 hosts failed: a: boom"
    assert view["worker_states"]["a"] == {"status": "failed", "error": "boom", "duration": 1.0}
    assert view["timeline"][0]["hostname"] == "group:web"


def test_rfc3339():
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z"


def test_a_broadcast_waits_for_every_expected_host():
    events = [submitted("_all"), ev("acknowledged", "fast", 1), ev("started", "fast", 1), ev("completed", "fast", 2)]
    both = Summary("x", True, ("fast", "slow"), None)
    assert compute_status(events) == "completed"
    assert compute_status(events, both) == "processing"
    assert compute_status(events + [ev("started", "slow", 3), ev("failed", "slow", 4)], both) == "partial_failure"
    assert compute_status([submitted("_all")], both) == "submitted"
    # one-host targets have no expected list; a stray one does not change them
    assert compute_status([submitted("w1"), ev("completed", "w1", 1)], Summary("x", False, ("other",), None)) == \
        "completed"


def test_a_silent_expected_host_counts_as_failed_after_the_bound():
    """A broadcast is "processing while any targeted host is active" -- not forever for a dead host."""
    job = {"id": "j", "created_ns": 0, "target_hostname": "_all", "broadcast": True,
           "operation": {"type": "x"}, "expected_hosts": ["fast", "dead"]}
    summary = summarize(job, silence_limit=600)
    assert summary.answer_by_ns == 600 * S and summary.expected == ("fast", "dead")
    events = [submitted("_all"), ev("completed", "fast", 2)]
    assert compute_status(events, summary, now_ns=599 * S) == "processing"
    assert compute_status(events, summary, now_ns=600 * S) == "partial_failure"
    assert compute_status([submitted("_all")], summary, now_ns=599 * S) == "submitted"
    assert compute_status([submitted("_all")], summary, now_ns=601 * S) == "failed"
    # a host that answers late decides its own state again
    late = events + [ev("started", "dead", 700), ev("completed", "dead", 701)]
    assert compute_status(late, summary, now_ns=800 * S) == "completed"
    view = job_view(job, events, {"fast": {"status": "ok", "data": {}, "error": None}}, 601 * S, 600)
    assert view["status"] == "partial_failure"
    assert view["worker_states"]["dead"]["status"] == "failed"
    assert "no answer within 600s of submission" in view["worker_states"]["dead"]["error"]
    assert view["error"].startswith("1 of 2 hosts failed: dead: no answer within 600s")


def test_broadcast_flag_comes_from_the_job_and_older_jobs_use_the_target_rule():
    assert summarize({"id": "j", "target_hostname": "group:web", "broadcast": True}).broadcast is True
    assert summarize({"id": "j", "target_hostname": "w1.example.com", "broadcast": False}).broadcast is False
    # stored before the flag: subjects.Target decides (a dotted hostname is not a label)
    assert summarize({"id": "j", "target_hostname": "group:web"}).broadcast is True
    assert summarize({"id": "j", "target_hostname": "_any"}).broadcast is False
    assert summarize({"id": "j", "target_hostname": "w1.example.com"}).broadcast is False
    events = [submitted("w1"), ev("started", "w1", 1), ev("failed", "w1", 2), ev("started", "w1", 3)]
    assert compute_status(events, summarize({"id": "j", "target_hostname": "w1", "broadcast": False})) == "processing"


def test_job_view_shows_expected_hosts_not_heard_from():
    job = {"id": "j", "created": rfc3339(0), "target_hostname": "_all", "operation": {},
           "expected_hosts": ["fast", "slow"]}
    view = job_view(job, [submitted("_all"), ev("completed", "fast", 2)],
                    {"fast": {"status": "ok", "data": {}, "error": None}})
    assert view["status"] == "processing"
    assert view["worker_states"]["slow"] == {"status": "submitted", "error": None, "duration": None}
    assert list(view["worker_states"]) == ["fast", "slow"]


def test_a_failed_submission_makes_a_broadcast_failed_without_waiting_for_its_expected_hosts():
    job = {"id": "j", "target_hostname": "_all", "broadcast": True, "expected_hosts": ["h1", "h2"], "created_ns": 0}
    reason = "submission failed: NATS at nats://127.0.0.1:4222: nats: timeout; the caller was answered 503"
    events = [submitted("_all"), ev("failed", "_submission", 6)]
    responses = {"_submission": {"status": "failed", "data": None, "error": reason}}
    view = job_view(job, events, responses, now_ns=7 * S, silence_limit=600)
    assert view["status"] == "failed" and view["error"] == reason
    assert set(view["worker_states"]) == {"_submission"}  # the expected hosts are not waited for
    assert compute_status(events, summarize(job, 600), 7 * S) == "failed"
    assert compute_status([submitted("_all")], summarize(job, 600), 7 * S) == "submitted"


def test_a_failed_submission_makes_a_one_host_job_failed_with_its_reason():
    job = {"id": "j", "target_hostname": "_any", "broadcast": False, "created_ns": 0}
    events = [submitted(), ev("failed", "_submission", 6)]
    view = job_view(job, events, {"_submission": {"status": "failed", "data": None, "error": "submission failed: x"}})
    assert (view["status"], view["error"], view["hostname"]) == ("failed", "submission failed: x", "_submission")
