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
                         "result", "error", "hosts", "summary", "responses", "worker_states", "timeline"}
    assert view["hosts"] == {"a": {"state": "ok"}}
    assert view["summary"] == {"targeted": 1, "ok": 1, "failed": 0, "no_response": 0, "skipped": 0, "pending": 0}


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


def test_a_silent_expected_host_is_no_response_after_the_bound():
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
    assert view["worker_states"]["dead"]["status"] == "no_response"
    assert "no answer within 600s of submission" in view["worker_states"]["dead"]["error"]
    assert view["error"].startswith("1 of 2 hosts did not answer: dead: no answer within 600s")
    assert view["hosts"] == {"dead": {"state": "no_response"}, "fast": {"state": "ok"}}
    assert view["summary"] == {"targeted": 2, "ok": 1, "failed": 0, "no_response": 1, "skipped": 0, "pending": 0}


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


# ---------------------------------------------------------------- every host's outcome (§10.3)


def _view(job, events, now=None, limit=None):
    base = {"id": "j", "created": rfc3339(0), "created_ns": 0, "operation": {"type": "x", "data": {}}}
    return job_view({**base, **job}, events, {}, now, limit)


def test_hosts_and_summary_of_a_broadcast_in_every_state():
    job = {"target_hostname": "group:web", "broadcast": True, "expected_hosts": ["a", "b", "c", "d", "e", "f"],
           "answer_by_ns": 30 * S}
    events = [submitted("group:web"), ev("completed", "a", 1), ev("started", "b", 1), ev("failed", "b", 2),
              ev("acknowledged", "c", 1), ev("no_response", "d", 3), ev("skipped", "e", 3), ev("completed", "x", 2)]
    view = _view(job, events, now=10 * S)
    assert {h: s["state"] for h, s in view["hosts"].items()} == {
        "a": "ok", "b": "failed", "c": "running", "d": "no_response", "e": "skipped", "f": "pending", "x": "ok"}
    assert list(view["hosts"]) == sorted(view["hosts"])
    assert view["summary"] == {"targeted": 7, "ok": 2, "failed": 1, "no_response": 1, "skipped": 1, "pending": 2}
    assert view["status"] == "processing"  # c runs, f has until 30 s
    # past the bound the silent one is no_response; c still runs (it answered: not silent)
    later = _view(job, events, now=31 * S)
    assert later["hosts"]["f"] == {"state": "no_response"} and later["hosts"]["c"] == {"state": "running"}
    done = _view(job, events + [ev("completed", "c", 40)], now=41 * S)
    assert done["status"] == "partial_failure"
    assert done["summary"] == {"targeted": 7, "ok": 3, "failed": 1, "no_response": 2, "skipped": 1, "pending": 0}
    assert done["error"].startswith("1 of 7 hosts failed, 2 did not answer, 1 skipped: b: failed; d: no_response")


@pytest.mark.parametrize("final, status", [
    ("no_response", "failed"), ("skipped", "failed"), ("completed", "completed"),
])
def test_no_response_and_skipped_count_as_not_ok(final, status):
    job = {"target_hostname": "_all", "broadcast": True, "expected_hosts": ["a"]}
    view = _view(job, [submitted("_all"), ev(final, "a", 1)])
    assert view["status"] == status
    # one-host jobs alike
    one_host = [submitted("a"), ev("started", "a", 1), ev(final, "a", 2)]
    one = _view({"target_hostname": "a", "broadcast": False}, one_host)
    assert one["status"] == status
    assert one["hosts"] == {"a": {"state": {"completed": "ok"}.get(final, final)}}


def test_the_bound_stored_in_the_job_wins_over_the_readers_setting():
    """Every API process judges a job alike: the bound travels with it."""
    job = {"id": "j", "created_ns": 0, "target_hostname": "_all", "broadcast": True, "expected_hosts": ["a"],
           "answer_by_ns": 5 * S}
    assert summarize(job, silence_limit=600).answer_by_ns == 5 * S
    assert compute_status([submitted("_all")], summarize(job, 600), now_ns=6 * S) == "failed"
    # older jobs without it: the reader's limit
    del job["answer_by_ns"]
    assert summarize(job, silence_limit=600).answer_by_ns == 600 * S
    for bad in ("5", True, None, 5.0):
        assert summarize({**job, "answer_by_ns": bad}, silence_limit=7).answer_by_ns == 7 * S


def test_a_late_answer_decides_its_own_state_again():
    job = {"target_hostname": "_all", "broadcast": True, "expected_hosts": ["a", "b"], "answer_by_ns": 5 * S}
    events = [submitted("_all"), ev("completed", "a", 1), ev("no_response", "b", 6)]
    assert _view(job, events, now=7 * S)["hosts"]["b"] == {"state": "no_response"}
    late = _view(job, events + [ev("started", "b", 8), ev("completed", "b", 9)], now=10 * S)
    assert late["hosts"]["b"] == {"state": "ok"} and late["status"] == "completed"


def test_one_host_jobs_list_the_target_until_a_host_takes_them():
    view = _view({"target_hostname": "_any", "broadcast": False}, [submitted()])
    assert view["hosts"] == {"_any": {"state": "pending"}}
    assert view["summary"]["targeted"] == 1 and view["summary"]["pending"] == 1
    # a dead first host does not count: the host that finished it does
    events = [submitted(), ev("started", "a", 1), ev("started", "b", 5), ev("completed", "b", 6)]
    assert _view({"target_hostname": "_any", "broadcast": False}, events)["hosts"] == {"b": {"state": "ok"}}
    running = [submitted("w1"), ev("acknowledged", "w1", 1)]
    assert _view({"target_hostname": "w1", "broadcast": False}, running)["hosts"] == {"w1": {"state": "running"}}


def test_a_failed_submission_reaches_no_host():
    job = {"target_hostname": "_all", "broadcast": True, "expected_hosts": ["h1", "h2"]}
    view = _view(job, [submitted("_all"), ev("failed", "_submission", 6)], now=700 * S, limit=1)
    assert view["hosts"] == {} and view["summary"]["targeted"] == 0
    one = _view({"target_hostname": "_any", "broadcast": False}, [submitted(), ev("failed", "_submission", 6)])
    assert one["hosts"] == {} and one["status"] == "failed"


def test_retry_of_is_shown_for_a_retry_only():
    assert "retry_of" not in _view({"target_hostname": "_any"}, [submitted()])
    assert _view({"target_hostname": "_all", "retry_of": "0190"}, [submitted("_all")])["retry_of"] == "0190"


def test_new_event_names_parse_and_unknown_ones_do_not():
    assert parse_event_key("status.id.no_response.h.1") == ("id", Event("no_response", "h", 1))
    assert parse_event_key("status.id.skipped.web1.example.com.1") == ("id", Event("skipped", "web1.example.com", 1))
    assert parse_event_key("status.id.pending.h.1") is None


@pytest.mark.parametrize("bad", ["_any", "_all", "group:web", "web.*", "web.>", "a b", "web1\n", "", None, 3])
def test_a_retry_subject_is_only_ever_a_host_subject(bad):
    from osapi.domain.errors import InvalidJob
    from osapi.domain.subjects import host_target, subject_for

    with pytest.raises(InvalidJob):
        host_target(bad)
    assert subject_for("modify", host_target("Web1.example.com")) == "jobs.modify.host.web1.example.com"
