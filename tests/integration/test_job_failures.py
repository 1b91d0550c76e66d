"""Job system under failure: killed workers, dead letters, restarts, new hosts, SIGTERM, NATS restart.

Real nats-server, real worker processes. Consumers use ``max_deliver=2``,
``ack_wait=2s`` and a 100 ms back-off so redeliveries happen in test time. The
tests run in file order on one fleet (hosts ``a1``, ``a2``, ``b1``); each one
leaves the fleet usable for the next, and the NATS restart comes last.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from job_support import job_stack, job_request
from testkit import wait_for

from osapi.domain.errors import NatsUnavailable

pytestmark = pytest.mark.timeout(120)

ENV = {
    "OSAPI_JOB_CONSUMER_MAX_DELIVER": "2",
    "OSAPI_JOB_CONSUMER_ACK_WAIT": "2s",
    "OSAPI_JOB_CONSUMER_BACK_OFF": "100ms",
    "OSAPI_API_SERVER_JOB_TIMEOUT": "4s",  # an expected host silent this long is no_response
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    names = ("a1", "a2", "b1")
    with job_stack(tmp_path_factory.mktemp("job-failures"), ENV, [(name, {}) for name in names]) as stack:
        stack.hosts = dict(zip(names, stack.started))
        yield stack


def create(stack, op_type, data, target):
    return stack.bridge.call(stack.client.create(job_request(op_type, data, target)))["job_id"]


def live_hostnames(stack) -> list[str]:
    return sorted(w["hostname"] for w in stack.bridge.call(stack.client.workers())["workers"])


def dlq_count(stack) -> int:
    return stack.bridge.call(stack.client.stats())["dlq_count"]


def replace(stack, hostname: str):
    """Start a new process for ``hostname`` (the old one is dead or stopped)."""
    stack.hosts[hostname] = stack.fleet.start_worker(hostname)
    return stack.hosts[hostname]


def test_worker_killed_mid_job_is_redelivered_and_completed(stack):
    job_id = create(stack, "test.sleep", {"seconds": 3}, "_any")
    first = wait_for(lambda: stack.bridge.started_hosts(job_id), 15, what="the job started")[0]
    stack.hosts[first].kill()
    job = stack.bridge.wait_status(job_id, "completed", timeout=30)
    starts = stack.bridge.started_hosts(job_id)
    assert len(starts) == 2 and first in starts, starts
    assert job["hostname"] != first and job["result"] == {"slept": 3}
    # the dead host's dangling "started" does not keep a one-host job processing
    assert job["worker_states"][first]["status"] == "started"
    replace(stack, first)
    stack.bridge.wait_workers(["a1", "a2", "b1"])


def test_job_that_always_asks_to_retry_goes_to_the_dlq(stack):
    dead_before = dlq_count(stack)
    job_id = create(stack, "test.retry", {}, "b1")
    job = stack.bridge.wait_status(job_id, "failed", timeout=20)
    assert stack.bridge.started_hosts(job_id) == ["b1", "b1"]  # max_deliver = 2
    assert "gave up after 2 deliveries" in job["error"]
    wait_for(lambda: dlq_count(stack) == dead_before + 1, 15, what="the job in the DLQ")
    # the dead-letter handler saw the final failure already recorded: no second failed event
    info = wait_for(lambda: (lambda i: i if i.num_pending == 0 and i.num_ack_pending == 0 else None)(
        stack.bridge.call(stack.bridge.store.js.consumer_info(stack.bridge.store.names.dlq_stream,
                                                              stack.bridge.store.names.dlq_consumer))),
        15, what="the DLQ handled")
    assert info.delivered.consumer_seq >= 1
    events = [(e.event, e.host) for e in stack.bridge.events(job_id)]
    assert events.count(("failed", "b1")) == 1


def test_job_whose_worker_always_dies_goes_to_the_dlq_and_fails(stack):
    dead_before = dlq_count(stack)
    doomed = stack.fleet.start_worker("doomed")
    stack.bridge.wait_workers(["a1", "a2", "b1", "doomed"])
    job_id = create(stack, "test.sleep", {"seconds": 30}, "doomed")
    for delivery in (1, 2):
        wait_for(lambda: len(stack.bridge.started_hosts(job_id)) == delivery, 20, what=f"delivery {delivery}")
        doomed.kill()
        doomed = stack.fleet.start_worker("doomed")  # pulls again: the server redelivers, or gives up
    job = stack.bridge.wait_status(job_id, "failed", timeout=30)
    assert "gave up after 2 deliveries" in job["error"]
    assert job["worker_states"]["doomed"]["status"] == "failed"
    assert job["responses"]["doomed"]["status"] == "failed"
    assert stack.bridge.started_hosts(job_id) == ["doomed", "doomed"]
    assert dlq_count(stack) == dead_before + 1
    assert doomed.stop() == 0
    # the killed processes' entries expire by their TTL: the next test's broadcasts must not expect "doomed"
    wait_for(lambda: "doomed" not in live_hostnames(stack), 15, what="doomed leaving the registry")


def test_restarted_host_processes_jobs_sent_while_it_was_down(stack):
    assert stack.hosts["b1"].stop() == 0
    wait_for(lambda: "b1" not in live_hostnames(stack), 10, what="b1 leaving the registry")
    direct = create(stack, "system.hostname.get", {}, "b1")
    broadcast = create(stack, "system.hostname.get", {}, "_all")
    stack.bridge.wait_status(broadcast, "completed")  # a1 and a2 answered
    assert "b1" not in stack.bridge.started_hosts(broadcast)
    assert stack.bridge.call(stack.client.get(direct))["status"] == "submitted"
    replace(stack, "b1")
    job = stack.bridge.wait_status(direct, "completed", timeout=20)
    assert job["hostname"] == "b1" and job["result"]["hostname"] == "b1"
    wait_for(lambda: "b1" in stack.bridge.started_hosts(broadcast), 20, what="b1 catching up on _all")
    stack.bridge.wait_status(broadcast, "completed")


def test_new_host_does_not_replay_history(stack):
    old = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "_all"), 20, 20))
    assert sorted(r["hostname"] for r in old["results"]) == ["a1", "a2", "b1"]
    fresh = stack.fleet.start_worker("fresh", "role=new")
    stack.bridge.wait_workers(["a1", "a2", "b1", "fresh"])
    new = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "_all"), 20, 20))
    assert sorted(r["hostname"] for r in new["results"]) == ["a1", "a2", "b1", "fresh"]
    history = stack.bridge.call(stack.client.list(limit=1000))["items"]
    replayed = [j["id"] for j in history if j["id"] != new["job_id"] and "fresh" in j["worker_states"]]
    assert replayed == []
    stack.hosts["fresh"] = fresh


def test_sigterm_finishes_the_running_job_and_exits_zero(stack):
    fresh = stack.hosts.pop("fresh")
    job_id = create(stack, "test.sleep", {"seconds": 2}, "fresh")
    wait_for(lambda: stack.bridge.started_hosts(job_id) == ["fresh"], 15, what="the job started")
    os.kill(fresh.pid, signal.SIGTERM)
    assert fresh.proc.wait(timeout=30) == 0
    job = stack.bridge.call(stack.client.get(job_id))
    assert job["status"] == "completed" and job["result"] == {"slept": 2}
    assert "fresh" not in live_hostnames(stack)  # a clean stop leaves the registry at once


def test_sigterm_grace_is_bounded(stack):
    slow = stack.fleet.start_worker("slowpoke", grace="1s")
    stack.bridge.wait_workers(["a1", "a2", "b1", "slowpoke"])
    job_id = create(stack, "test.sleep", {"seconds": 30}, "slowpoke")
    wait_for(lambda: stack.bridge.started_hosts(job_id) == ["slowpoke"], 15, what="the job started")
    started = time.monotonic()
    os.kill(slow.pid, signal.SIGTERM)
    assert slow.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 10  # 1 s grace (+ the pull in flight), not the job's 30 s
    assert "still running after 1s; they will be redelivered" in slow.log()
    job = stack.bridge.call(stack.client.get(job_id))
    assert job["status"] == "processing"  # not acked, not failed: it stays for the host's next worker


def test_silent_worker_drops_out_and_broadcasts_stop_waiting_for_it(stack):
    stack.hosts["a2"].kill()
    # submitted at once, while the registry still lists a2 (its entry lives 3 s)
    pending = create(stack, "system.hostname.get", {}, "_all")
    waited = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "_all"), 20, 0.5))
    expected = stack.bridge.call(stack.bridge.store.get_job(pending))["expected_hosts"]
    if "a2" in stack.bridge.call(stack.bridge.store.get_job(waited["job_id"]))["expected_hosts"]:
        # a synchronous broadcast reports (and stores) the host that went silent as no_response
        by_host = {r["hostname"]: r for r in waited["results"]}
        assert sorted(by_host) == ["a1", "a2", "b1"]
        assert by_host["a2"]["status"] == "no_response" and "left the worker registry" in by_host["a2"]["error"]
        job = stack.bridge.call(stack.client.get(waited["job_id"]))
        assert job["status"] == "partial_failure" and job["worker_states"]["a2"]["status"] == "no_response"
        assert job["hosts"]["a2"] == {"state": "no_response"}
    wait_for(lambda: {"a1", "b1"} <= {h for h, w in stack.bridge.call(stack.client.get(pending))[
        "worker_states"].items() if w["status"] == "completed"}, 15, what="a1 and b1 answering")
    if "a2" in expected:  # a host expected when the job was submitted keeps it processing …
        job = stack.bridge.call(stack.client.get(pending))
        assert job["status"] in ("processing", "partial_failure")  # … for api.server.job_timeout = 4 s
        assert job["worker_states"]["a2"]["status"] in ("submitted", "no_response")

    wait_for(lambda: "a2" not in live_hostnames(stack), 15, what="a2 expiring from the registry")
    started = time.monotonic()
    result = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "_all"), 20, 20))
    assert sorted(r["hostname"] for r in result["results"]) == ["a1", "b1"]
    assert time.monotonic() - started < 10
    if "a2" in expected:  # … then it is no_response, not processing forever
        job = stack.bridge.wait_status(pending, "partial_failure", timeout=15)
        assert job["worker_states"]["a2"]["status"] == "no_response" and job["hosts"]["a2"]["state"] == "no_response"
        assert "no answer within 4s of submission" in job["worker_states"]["a2"]["error"]
    replace(stack, "a2")
    stack.bridge.wait_workers(["a1", "a2", "b1"])
    # the host's durable kept the broadcasts for it: the new a2 process runs them, and its answer wins
    for job_id in (pending, result["job_id"], waited["job_id"]):
        wait_for(lambda: "a2" in stack.bridge.started_hosts(job_id), 20, what="a2 catching up")
    assert stack.bridge.wait_status(pending, "completed")["worker_states"]["a2"]["status"] == "completed"
    assert stack.bridge.wait_status(waited["job_id"], "completed")["responses"]["a2"]["status"] == "ok"


def test_a_redelivery_while_the_first_run_lives_is_held_not_run_twice(stack):
    """A paused worker (as in a NATS outage longer than ack_wait): the server redelivers to the host's other
    process, which waits for the first run instead of running the job again."""
    # More deliveries than the module's 2 for this host's consumer (its workers own its settings): a
    # redelivery can land in the paused process's last pull request, still open when it stopped, and
    # with 2 deliveries that one would be the last (to the dead-letter stream), not the other's.
    more = {"OSAPI_JOB_CONSUMER_MAX_DELIVER": "5"}
    first, second = stack.fleet.start_worker("dup", env=more), stack.fleet.start_worker("dup", env=more)
    try:
        stack.bridge.wait_workers(["a1", "a2", "b1", "dup", "dup"])
        job_id = create(stack, "test.sleep", {"seconds": 3}, "dup")
        wait_for(lambda: stack.bridge.started_hosts(job_id) == ["dup"], 15, what="the job started")
        (pid,) = stack.bridge.instance_pids(job_id)
        runner, other = (first, second) if first.pid == pid else (second, first)
        os.kill(runner.pid, signal.SIGSTOP)  # silent past ack_wait (2 s): the server redelivers to the other
        try:
            wait_for(lambda: "holding this redelivery" in other.log(), 20, what="the redelivery held")
        finally:
            os.kill(runner.pid, signal.SIGCONT)
        job = stack.bridge.wait_status(job_id, "completed", timeout=30)
        assert job["result"] == {"slept": 3}
        assert stack.bridge.started_hosts(job_id) == ["dup"]  # ran once
        names = stack.bridge.store.names
        wait_for(lambda: stack.bridge.call(stack.bridge.store.js.consumer_info(
            names.stream, names.host_consumer("dup"))).num_ack_pending == 0, 15, what="the held delivery acked")
        wait_for(lambda: "already finished" in other.log(), 15, what="the held delivery let go")
        assert runner.stop() == 0 and other.stop() == 0
    finally:
        for worker in (first, second):  # a failure here must not leave "dup" in the next test's fleet
            if worker.alive():
                os.kill(worker.pid, signal.SIGCONT)
                worker.stop()


def test_workers_survive_a_nats_restart_without_losing_jobs(stack):
    job_id = create(stack, "test.sleep", {"seconds": 3}, "a1")
    wait_for(lambda: stack.bridge.started_hosts(job_id) == ["a1"], 15, what="the job started")
    stack.server.stop()
    queued = None
    stack.server.start()

    def submit():
        try:
            return create(stack, "system.hostname.get", {}, "b1")
        except NatsUnavailable:
            return None

    queued = wait_for(submit, 30, interval=0.2, what="the client reconnecting")

    def status(job):
        try:
            return stack.bridge.call(stack.client.get(job))["status"]
        except NatsUnavailable:
            return None

    wait_for(lambda: status(job_id) == "completed", 40, interval=0.2, what="the running job completing")
    wait_for(lambda: status(queued) == "completed", 40, interval=0.2, what="the queued job completing")
    assert all(w.alive() for w in stack.hosts.values()), stack.fleet.logs()
    result = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "_all"), 20, 20))
    assert sorted(r["hostname"] for r in result["results"]) == ["a1", "a2", "b1"]
