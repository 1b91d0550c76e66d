"""Job system against a real nats-server and real worker processes: routing and results.

Five worker processes (``python -m osapi job worker start``) on one server:
``w1`` (group=web.dev.us-east, zone=a), ``w2`` (group=web.prod),
``w3.example.com`` (group=db) and two processes that are both host ``twin``.
They start once for the module; the in-process ``JobClient`` talks to the same
server. ``ack_wait`` is 2 s so a job longer than that proves in-progress acks.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from job_support import job_stack, job_request
from testkit import wait_for

from osapi import __version__
from osapi.domain.errors import InvalidJob, JobNotFound, JobTimeout, NoLiveWorker
from osapi.job.client import JobClient

pytestmark = pytest.mark.timeout(120)

ENV = {"OSAPI_JOB_CONSUMER_ACK_WAIT": "2s"}
HOSTS = {"w1": "group=web.dev.us-east,zone=a", "w2": "group=web.prod", "w3.example.com": "group=db"}
EVERY_HOST = ["twin", "w1", "w2", "w3.example.com"]
SLOW = 20.0  # timeout and quiet period for broadcasts: a call must return long before


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workers = [(hostname, {"labels": labels}) for hostname, labels in HOSTS.items()] + [("twin", {}), ("twin", {})]
    with job_stack(tmp_path_factory.mktemp("job-routing"), ENV, workers) as stack:
        yield stack


def run(stack, op_type, data, target, timeout=SLOW, quiet=SLOW):
    return stack.bridge.call(stack.client.run(job_request(op_type, data, target), timeout, quiet))


def hosts_of(result) -> list[str]:
    return sorted(r["hostname"] for r in result["results"])


@pytest.mark.parametrize("target, expected", [
    ("_all", EVERY_HOST),
    ("group:web", ["w1", "w2"]),
    ("group:web.dev", ["w1"]),
    ("group:web.dev.us-east", ["w1"]),
    ("group:web.prod", ["w2"]),
    ("zone:a", ["w1"]),
    ("group:db", ["w3.example.com"]),
    ("w3.example.com", ["w3.example.com"]),
    ("W3.Example.COM", ["w3.example.com"]),
    ("twin", ["twin"]),
    ("w2", ["w2"]),
])
def test_each_target_reaches_exactly_its_hosts(stack, target, expected):
    started = time.monotonic()
    result = run(stack, "system.hostname.get", {}, target)
    elapsed = time.monotonic() - started
    assert hosts_of(result) == expected
    for item in result["results"]:
        assert item["hostname"] == item["hostname"].strip() and "labels" in item
    # every host answered once and the call did not sit out the (20 s) quiet period or timeout
    assert elapsed < SLOW / 2, f"run() took {elapsed:.1f}s"
    job = stack.bridge.wait_status(result["job_id"], "completed")
    assert sorted(job["responses"]) == expected
    assert stack.bridge.started_hosts(result["job_id"]) == expected  # one run per host, twins included
    assert job["target_hostname"] == (target if target != "W3.Example.COM" else "W3.Example.COM")


def test_an_answered_one_host_call_reads_no_registry(stack):
    """The hot path: a one-host job that is answered reads the worker registry not at all (it is read only to
    tell "nobody serves this target" from "slow" once the quiet period passed without an answer)."""
    store = stack.bridge.store
    stream = store.stream_of("registry")
    subjects = [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.INFO.{stream}"]
    subs = [stack.bridge.call(stack.client.nc.subscribe(s)) for s in subjects]  # copies of every registry read
    try:
        stack.bridge.call(stack.client.workers())  # the probe sees a read: it is armed
        stack.bridge.call(stack.client.nc.flush())
        assert sum(s.pending_msgs for s in subs) > 0
        seen = sum(s.pending_msgs for s in subs)
        result = run(stack, "system.hostname.get", {}, "w1")
        stack.bridge.call(stack.client.nc.flush())
        assert result["results"][0]["hostname"] == "w1"
        assert sum(s.pending_msgs for s in subs) == seen
    finally:
        for sub in subs:
            stack.bridge.call(sub.unsubscribe())


def test_a_one_host_job_slower_than_the_quiet_period_is_waited_for(stack):
    """No answer within the quiet period: the registry is read, a live worker matches, so the call waits on."""
    result = run(stack, "test.sleep", {"seconds": 2}, "w2", timeout=SLOW, quiet=0.5)
    assert result["results"] == [{"hostname": "w2", "slept": 2}]


@pytest.mark.parametrize("target", ["group:we", "group:web.de", "group:web.dev.us", "zone:ab", "nosuchhost"])
def test_label_values_match_whole_segments_only(stack, target):
    """No live worker matches: a fast JobTimeout after the quiet period (1 s), not the 20 s timeout."""
    started = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        run(stack, "system.hostname.get", {}, target, timeout=SLOW, quiet=1.0)
    assert time.monotonic() - started < SLOW / 2
    job_id = info.value.job_id
    assert isinstance(info.value, NoLiveWorker)  # the API's 404
    assert f"{target!r} names no registered worker host or label" in str(info.value)
    assert [e.event for e in stack.bridge.events(job_id)] == ["submitted"]
    assert stack.bridge.call(stack.client.get(job_id))["status"] == "submitted"


def test_any_reaches_exactly_one_worker(stack):
    seen = set()
    for _ in range(12):
        result = run(stack, "system.hostname.get", {}, "_any")
        assert len(result["results"]) == 1
        job = stack.bridge.wait_status(result["job_id"], "completed")
        assert len(stack.bridge.started_hosts(result["job_id"])) == 1
        assert job["hostname"] == result["results"][0]["hostname"]
        assert job["result"]["hostname"] == job["hostname"]
        seen.add(job["hostname"])
    assert seen <= set(EVERY_HOST)


def test_broadcast_returns_when_every_live_host_answered(stack):
    started = time.monotonic()
    result = run(stack, "system.uptime.get", {}, "_all", timeout=SLOW, quiet=SLOW)
    elapsed = time.monotonic() - started
    assert hosts_of(result) == EVERY_HOST
    assert all(r["uptime_seconds"] > 0 for r in result["results"])
    assert elapsed < SLOW / 2, f"a broadcast over live workers took {elapsed:.1f}s: it waited for a fallback"


def test_failed_single_host_job(stack):
    result = run(stack, "test.fail", {"message": "disk on fire"}, "w2")
    assert result["results"] == [{"hostname": "w2", "status": "failed", "error": "disk on fire"}]
    job = stack.bridge.wait_status(result["job_id"], "failed")
    assert job["error"] == "disk on fire" and job["hostname"] == "w2" and job["result"] is None
    assert job["worker_states"]["w2"]["status"] == "failed"
    assert job["worker_states"]["w2"]["error"] == "disk on fire"
    assert job["responses"]["w2"] == {"status": "failed", "data": None, "error": "disk on fire"}


def test_deterministic_failure_is_not_retried(stack):
    result = run(stack, "test.fail", {"message": "nope"}, "_any")
    job = stack.bridge.wait_status(result["job_id"], "failed")
    assert len(stack.bridge.started_hosts(result["job_id"])) == 1
    assert [t["event"] for t in job["timeline"]].count("failed") == 1


def test_failed_broadcast_and_partial_failure(stack):
    both = run(stack, "test.fail", {"message": "bad"}, "group:web")
    assert hosts_of(both) == ["w1", "w2"]
    assert all(r["status"] == "failed" and r["error"] == "bad" for r in both["results"])
    job = stack.bridge.wait_status(both["job_id"], "failed")
    assert job["error"].startswith("2 of 2 hosts failed")

    partial = run(stack, "test.fail", {"message": "w1 only", "hosts": ["w1"]}, "group:web")
    by_host = {r["hostname"]: r for r in partial["results"]}
    assert by_host["w1"] == {"hostname": "w1", "status": "failed", "error": "w1 only"}
    assert by_host["w2"] == {"hostname": "w2", "ok": True}
    job = stack.bridge.wait_status(partial["job_id"], "partial_failure")
    assert job["worker_states"]["w1"]["status"] == "failed"
    assert job["worker_states"]["w2"]["status"] == "completed"
    assert job["error"] == "1 of 2 hosts failed: w1: w1 only"


def test_submitted_processing_completed(stack):
    created = stack.bridge.call(stack.client.create(job_request("test.sleep", {"seconds": 1.5}, "w3.example.com")))
    assert created["status"] == "submitted" and created["revision"] > 0
    job_id = created["job_id"]
    assert stack.bridge.call(stack.client.get(job_id))["status"] in ("submitted", "processing")
    running = stack.bridge.wait_status(job_id, "processing", timeout=10)
    assert running["worker_states"]["w3.example.com"]["status"] in ("acknowledged", "started")
    done = stack.bridge.wait_status(job_id, "completed", timeout=20)
    assert done["result"] == {"slept": 1.5}
    assert done["worker_states"]["w3.example.com"]["duration"] >= 1.5
    assert [t["event"] for t in done["timeline"]] == ["submitted", "acknowledged", "started", "completed"]
    assert done["timeline"][0]["hostname"] == "w3.example.com"
    assert done["created"] <= done["updated_at"]


def test_two_processes_of_one_host_run_each_job_once(stack):
    ids = [stack.bridge.call(stack.client.create(job_request("test.sleep", {"seconds": 0.2}, target)))["job_id"]
           for target in ["twin"] * 8 + ["_all"] * 4]
    for job_id in ids:
        stack.bridge.wait_status(job_id, "completed", timeout=30)
        wait_for(lambda: stack.bridge.started_hosts(job_id).count("twin") >= 1, 10, what="twin ran")
    for job_id in ids:
        assert stack.bridge.started_hosts(job_id).count("twin") == 1, stack.bridge.events(job_id)


def test_job_longer_than_ack_wait_runs_once(stack):
    result = run(stack, "test.sleep", {"seconds": 4.5}, "w2")  # ack_wait is 2 s
    assert result["results"] == [{"hostname": "w2", "slept": 4.5}]
    job = stack.bridge.wait_status(result["job_id"], "completed")
    events = [(t["event"], t["hostname"]) for t in job["timeline"]]
    assert events == [("submitted", "w2"), ("acknowledged", "w2"), ("started", "w2"), ("completed", "w2")]


def _key_counts(stack, job_id):
    store = stack.bridge.store

    def count(role, pattern):
        return stack.bridge.call(store.subjects(store.stream_of(role), store.subject_of(role, pattern)))[1]

    return (count("jobs", f"jobs.{job_id}"), count("jobs", f"status.{job_id}.>"), count("responses", f"{job_id}.>"))


def test_delete_removes_every_key(stack):
    keep = run(stack, "system.hostname.get", {}, "w1")["job_id"]
    gone = run(stack, "system.hostname.get", {}, "_all")["job_id"]
    stack.bridge.wait_status(gone, "completed")
    jobs, events, responses = _key_counts(stack, gone)
    assert (jobs, responses) == (1, 4) and events == 1 + 3 * 4
    stack.bridge.call(stack.client.delete(gone))
    assert _key_counts(stack, gone) == (0, 0, 0)
    with pytest.raises(JobNotFound):
        stack.bridge.call(stack.client.get(gone))
    with pytest.raises(JobNotFound):
        stack.bridge.call(stack.client.delete(gone))
    assert stack.bridge.call(stack.client.get(keep))["id"] == keep  # others untouched
    assert gone not in [j["id"] for j in stack.bridge.call(stack.client.list(limit=1000))["items"]]


def _stored(stack):
    js = stack.bridge.store.js

    async def counts():
        names = stack.bridge.store.names
        out = []
        for stream in (names.stream, "KV_" + names.jobs_bucket, "KV_" + names.responses_bucket):
            out.append((await js.stream_info(stream)).state.messages)
        return tuple(out)

    return stack.bridge.call(counts())


BAD_OPERATIONS = [
    ({"type": "no.such.op", "data": {}}, "unknown operation type"),
    ({"type": "network.dns.get", "data": {}}, "interface_name is required"),
    ({"type": "network.ping.do", "data": {"address": "127.0.0.1", "count": 99}}, "count"),
    ({"type": "system.hostname.get", "data": {"surprise": 1}}, "unknown field surprise"),
    ({"type": "system.hostname.get", "data": [1]}, "data must be an object"),
    ({"data": {}}, "operation.type is required"),
    ({"type": "system.hostname.get", "data": {}, "extra": 1}, "unknown field extra"),
    ("system.hostname.get", "operation must be an object"),
]
BAD_TARGETS = ["", "   ", "group:", ":web", "group:web..dev", "group:web.", "gr oup:web", "a b", "_foo",
               "host_$", "x" * 300, "web1..example", 42, "group:web:dev"]


@pytest.mark.parametrize("operation, message", BAD_OPERATIONS)
def test_bad_operation_is_refused_before_anything_is_stored(stack, operation, message):
    before = _stored(stack)
    with pytest.raises(InvalidJob) as info:
        stack.bridge.call(stack.client.create(JobClient.prepare(operation, "_all")))
    assert message in str(info.value)
    if isinstance(operation, dict) and "type" in operation and set(operation) <= {"type", "data"}:
        with pytest.raises(InvalidJob):
            run(stack, operation["type"], operation["data"], "_all", timeout=2, quiet=1)
    assert _stored(stack) == before


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_target_is_refused_before_anything_is_stored(stack, target):
    before = _stored(stack)
    with pytest.raises(InvalidJob) as info:
        stack.bridge.call(stack.client.create(job_request("system.hostname.get", {}, target)))
    assert "target" in str(info.value)
    with pytest.raises(InvalidJob):
        run(stack, "system.hostname.get", {}, target, timeout=2, quiet=1)
    assert _stored(stack) == before


def test_list_newest_first_with_filters_and_stats(stack):
    ids = [stack.bridge.call(stack.client.create(job_request("system.hostname.get", {}, "w1")))["job_id"]
           for _ in range(3)]
    for job_id in ids:
        stack.bridge.wait_status(job_id, "completed")
    page = stack.bridge.call(stack.client.list(limit=2))
    assert [j["id"] for j in page["items"]] == [ids[2], ids[1]]
    total = page["total_items"]
    assert stack.bridge.call(stack.client.list(limit=2, offset=1))["items"][0]["id"] == ids[1]
    everything = stack.bridge.call(stack.client.list(limit=1000))
    assert everything["total_items"] == total == len(everything["items"])
    created = [j["created"] for j in everything["items"]]
    assert created == sorted(created, reverse=True)
    assert stack.bridge.call(stack.client.list(limit=5, offset=total))["items"] == []

    stats = stack.bridge.call(stack.client.stats())
    assert stats["total_jobs"] == total
    assert sum(stats["status_counts"].values()) == total
    assert set(stats["status_counts"]) == {"submitted", "processing", "completed", "failed", "partial_failure"}
    assert stats["operation_counts"]["system.hostname.get"] >= 3
    assert sum(stats["operation_counts"].values()) == total
    assert stats["dlq_count"] == 0
    for status, count in stats["status_counts"].items():
        listed = stack.bridge.call(stack.client.list(status=status, limit=1000))
        assert listed["total_items"] == count
        assert all(j["status"] == status for j in listed["items"])
    assert stats["status_counts"]["failed"] >= 1 and stats["status_counts"]["partial_failure"] >= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"status": "done"}, "status must be one of"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": True}, "limit"),
    ({"offset": -1}, "offset"),
])
def test_bad_list_parameters(stack, kwargs, message):
    with pytest.raises(InvalidJob) as info:
        stack.bridge.call(stack.client.list(**kwargs))
    assert message in str(info.value)


@pytest.mark.parametrize("job_id", ["nope", "01234567-89ab-cdef-0123-456789abcdef", "*", "a.>", ""])
def test_unknown_or_malformed_job_ids(stack, job_id):
    with pytest.raises(JobNotFound):
        stack.bridge.call(stack.client.get(job_id))
    with pytest.raises(JobNotFound):
        stack.bridge.call(stack.client.delete(job_id))


def test_worker_registry(stack):
    listing = stack.bridge.call(stack.client.workers())
    # one row per host (docs/jobs.md, Registry): the two "twin" processes are one host with processes: 2
    assert listing["total"] == 4 == len(listing["workers"])
    assert [(w["hostname"], w["processes"]) for w in listing["workers"]] == [
        ("twin", 2), ("w1", 1), ("w2", 1), ("w3.example.com", 1)]
    for worker in listing["workers"]:
        assert set(worker) == {"hostname", "labels", "version", "started_at", "last_seen", "processes"}
        assert worker["version"] == __version__
        assert worker["started_at"] <= worker["last_seen"]
    w1 = next(w for w in listing["workers"] if w["hostname"] == "w1")
    assert w1["labels"] == {"group": "web.dev.us-east", "zone": "a"}
    # the twin row spans both processes: the earliest start, the latest heartbeat
    twins = [e for e in stack.bridge.call(stack.client.registry.entries()) if e["hostname"] == "twin"]
    twin = listing["workers"][0]
    assert len(twins) == 2 and len({e["instance"] for e in twins}) == 2
    assert twin["started_at"] == min(e["started_at"] for e in twins)
    assert twin["started_at"] <= twin["last_seen"] <= max(e["last_seen"] for e in twins)  # entries read later


def test_batch_reads_agree_with_one_read_per_job(stack):
    """Pages read events and responses in one request when the server allows, else one per job."""
    store = stack.bridge.store

    async def submit_many():
        return await asyncio.gather(*(stack.client.create(job_request("system.hostname.get", {}, "w3.example.com"))
                                      for _ in range(300)))

    mine = [c["job_id"] for c in stack.bridge.call(submit_many())]
    for job_id in mine:
        stack.bridge.wait_status(job_id, "completed")
    ids = stack.bridge.call(store.all_job_ids())
    assert set(mine) <= set(ids)
    one_by_one = {i: sorted(stack.bridge.events(i)) for i in ids}
    few = stack.bridge.call(store.multi_get(store.stream_of("jobs"),
                                            [store.subject_of("jobs", f"status.{i}.>") for i in ids[:5]]))
    assert few is not None and len(few) == sum(len(one_by_one[i]) for i in ids[:5])
    too_many = stack.bridge.call(store.multi_get(store.stream_of("jobs"),
                                                 [store.subject_of("jobs", f"status.{i}.>") for i in ids]))
    assert too_many is None  # more than the server returns at once: the caller must fall back
    for chunk in (ids[:5], ids):
        batched = stack.bridge.call(store.events_of(chunk))
        assert {i: sorted(v) for i, v in batched.items()} == {i: one_by_one[i] for i in chunk}
    views = stack.bridge.call(store.views(ids))
    assert len(views) == len(ids)
    singles = {i: stack.bridge.call(stack.client.get(i)) for i in ids[:20]}
    assert all(views[i] == singles[i] for i in singles)
