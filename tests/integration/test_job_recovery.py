"""Jobs handed back and jobs that expire, with a long ``ack_wait`` (30 s).

Real nats-server, real worker processes (and, where a test needs a pull
interval far longer than its timeouts, one real ``Worker`` in the test
process). With ``ack_wait`` at 30 s, anything that happens within a few
seconds happened because a worker acted, not because the server redelivered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from job_support import base_env, job_stack, job_request
from testkit import wait_for

from osapi.domain.errors import NoLiveWorker

pytestmark = pytest.mark.timeout(120)

ENV = {"OSAPI_JOB_CONSUMER_ACK_WAIT": "30s"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("job-recovery")
    with job_stack(workdir, ENV, [("pair", {"grace": "1s"}), ("pair", {"grace": "1s"}), ("late", {})]) as stack:
        stack.pair, stack.late, stack.workdir = stack.started[:2], stack.started[2], workdir
        yield stack


def live_hostnames(stack) -> list[str]:
    return sorted(w["hostname"] for w in stack.bridge.call(stack.client.workers())["workers"])


def test_a_job_cut_off_by_the_sigterm_grace_goes_to_the_other_process_at_once(stack):
    job_id = stack.bridge.call(stack.client.create(job_request("test.sleep", {"seconds": 20}, "pair")))["job_id"]
    wait_for(lambda: stack.bridge.started_hosts(job_id) == ["pair"], 15, what="the job started")
    (pid,) = stack.bridge.instance_pids(job_id)
    runner, other = stack.pair if stack.pair[0].pid == pid else list(reversed(stack.pair))
    os.kill(runner.pid, signal.SIGTERM)
    assert runner.proc.wait(timeout=20) == 0
    assert "still running after 1s; they will be redelivered" in runner.log()
    # handed back with a negative ack: the other process of the host runs it now, not after ack_wait (30 s)
    wait_for(lambda: stack.bridge.started_hosts(job_id) == ["pair", "pair"], 15, what="the other process taking it")
    assert stack.bridge.instance_pids(job_id)[-1] == other.pid
    stack.bridge.call(stack.client.delete(job_id))  # the other process need not sleep it out


def test_a_synchronous_job_picked_up_after_it_expired_is_not_run(stack):
    assert stack.late.stop() == 0
    wait_for(lambda: "late" not in live_hostnames(stack), 10, what="late leaving the registry")
    started = time.monotonic()
    with pytest.raises(NoLiveWorker) as info:  # nobody live for "late": a fast 404
        stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "late"), 20, 1, expires_after=1))
    assert time.monotonic() - started < 10
    assert "'late' names no registered worker host or label" in str(info.value)
    expired = info.value.job_id
    queued = stack.bridge.call(stack.client.create(job_request("system.hostname.get", {}, "late")))["job_id"]
    expires_ns = stack.bridge.call(stack.bridge.store.get_job(expired))["expires_at_ns"]
    wait_for(lambda: time.time_ns() > expires_ns, 10, what="the expiry passing")
    stack.late = stack.fleet.start_worker("late")  # the host comes back and finds both jobs in its durable
    job = stack.bridge.wait_status(expired, "failed", timeout=20)
    assert "expired before this host picked it up" in job["error"] and job["hostname"] == "late"
    assert stack.bridge.started_hosts(expired) == []  # never ran
    assert stack.bridge.wait_status(queued, "completed", timeout=20)["result"]["hostname"] == "late"


def test_a_job_whose_submission_failed_after_its_notification_landed_is_not_run(stack):
    """The publish reached the server but its ack did not come back: the caller got an error, the job never runs."""
    import nats.errors

    from osapi.domain.errors import NatsUnavailable

    assert stack.late.stop() == 0
    wait_for(lambda: "late" not in live_hostnames(stack), 10, what="late leaving the registry")
    store = stack.bridge.store
    original = store.publish_job

    async def publish_then_lose_the_ack(subject, job_id, *args, **kwargs):
        await original(subject, job_id, *args, **kwargs)
        raise nats.errors.TimeoutError()

    store.publish_job = publish_then_lose_the_ack
    try:
        with pytest.raises(NatsUnavailable):
            stack.bridge.call(stack.client.create(job_request("system.hostname.get", {}, "late")))
    finally:
        store.publish_job = original
    (refused,) = [j["id"] for j in stack.bridge.call(stack.client.list(limit=1))["items"]]
    job = stack.bridge.wait_status(refused, "failed", timeout=20)
    assert job["error"].startswith("submission failed: NATS at ") and "the caller was answered 503" in job["error"]
    queued = stack.bridge.call(stack.client.create(job_request("system.hostname.get", {}, "late")))["job_id"]
    stack.late = stack.fleet.start_worker("late")  # finds both notifications in its durable, in order
    assert stack.bridge.wait_status(queued, "completed", timeout=20)["result"]["hostname"] == "late"
    job = stack.bridge.call(stack.client.get(refused))
    assert job["status"] == "failed" and [e["event"] for e in job["timeline"]] == ["submitted", "failed"]
    assert f"job {refused}: its submission failed" in stack.late.log()


def test_an_idle_pull_does_not_hold_the_only_slot(stack, tmp_path):
    """max_jobs=1 and a 10 s pull: a host job must not wait for the idle ``_any`` pull to give the slot back."""
    from osapi import config
    from osapi.job.connection import close
    from osapi.worker.worker import Worker

    cfg = config.load(None, base_env(stack.server, tmp_path / "state", {
        **ENV, "OSAPI_JOB_WORKER_MAX_JOBS": "1", "OSAPI_JOB_WORKER_HOSTNAME": "solo"}))
    worker = Worker(cfg, heartbeat=1, grace=1, poll=10)
    stop = asyncio.Event()
    serving = asyncio.run_coroutine_threadsafe(worker.serve(stop), stack.bridge.loop)
    try:
        wait_for(lambda: "solo" in live_hostnames(stack), 15, what="solo in the registry")
        for _ in range(3):  # each would wait for a 10 s idle pull if that pull held the slot
            result = stack.bridge.call(stack.client.run(job_request("system.hostname.get", {}, "solo"), 5, 5))
            assert result["results"][0]["hostname"] == "solo"
    finally:
        stack.bridge.loop.call_soon_threadsafe(stop.set)
        wait_for(lambda: worker.stopping.is_set(), 10, what="the worker stopping")
        stack.bridge.call(close(worker.nc))  # end its idle 10 s pulls now
        serving.result(30)
