"""A job store that fills up under a queued modify job: the job is not run, and fails with the true cause.

Real nats-server with a tiny ``job.kv.max_bytes``, a real worker process, a real API
process for ``/health/status``. The job bucket is filled to the last byte by the test
(tiny KV entries outside the job layout), so that not even a worker's ``started``
event fits; then room is made again by purging those entries.
"""

from __future__ import annotations

import pytest
from job_support import Bridge, with_test_operations, worker_stack, job_request
from testkit import make_token, wait_for

from osapi.domain.errors import JobStoreFull, is_store_full

pytestmark = pytest.mark.timeout(180)

ENV = {
    "OSAPI_JOB_KV_MAX_BYTES": "20000",
    "OSAPI_JOB_CONSUMER_MAX_DELIVER": "2",
    "OSAPI_JOB_CONSUMER_ACK_WAIT": "2s",
    "OSAPI_JOB_CONSUMER_BACK_OFF": "100ms",
}
FILLER = "filler"


def fill(bridge) -> list[str]:
    """Jobs for a host nobody runs until one is refused, then tiny entries until one more byte is refused.

    Returns the ids of the jobs that fitted.
    """
    store = bridge.store
    ids = []
    for _ in range(500):
        try:
            ids.append(bridge.call(bridge.client.create(job_request("system.hostname.get", {}, "nobody")))["job_id"])
        except JobStoreFull:
            break
    else:
        raise AssertionError("500 jobs fitted in 20000 bytes")
    bridge.call(bridge.client.settle(10))  # the refused job's body is removed: room for a few entries

    async def tiny(n):
        try:
            await store.kv("jobs").put(f"{FILLER}.{n}", b"x")
            return True
        except Exception as exc:  # noqa: BLE001
            if is_store_full(exc):
                return False
            raise

    for n in range(2000):
        if not bridge.call(tiny(n)):
            return ids
    raise AssertionError("the job bucket never refused a write")


def test_a_full_store_does_not_run_a_queued_modify_job_and_fails_it_with_the_true_cause(tmp_path):
    runs = tmp_path / "runs.log"
    with with_test_operations(), worker_stack(tmp_path, ENV) as stack, Bridge(stack.env) as bridge:
        http = stack.start_api().http(make_token(["admin"]))
        assert http.get("/health/status").json["status"] == "ok"
        victim = bridge.call(bridge.client.create(job_request("test.record", {"tag": "victim"}, "_any")))
        job_id = victim["job_id"]
        fillers = fill(bridge)

        degraded = http.get("/health/status")
        assert degraded.status == 503 and degraded.json["status"] == "degraded", degraded.json
        kv = degraded.json["components"]["kv"]
        assert kv["status"] == "error" and "job store full" in kv["error"] and "job.kv.max_bytes" in kv["error"]

        worker = stack.start_worker("w1", env={"OSAPITEST_RUNS": str(runs)})
        # two deliveries (max_deliver), each refused its started event: then the dead-letter stream
        wait_for(lambda: bridge.call(bridge.client.stats())["dlq_count"] == 1, 30, what="the job in the DLQ")
        assert not runs.exists(), runs.read_text()  # the provider never ran
        assert bridge.started_hosts(job_id) == []  # not even its start could be recorded
        wait_for(lambda: "job store full" in worker.log(), 10, what="the worker saying why")
        assert worker.log().count("the job store is full") == 1, worker.log()  # said once

        # room again (old jobs deleted): the dead-letter handler records the true cause, on the host that tried
        store = bridge.store
        bridge.call(store.js.purge_stream(store.stream_of("jobs"), subject=store.subject_of("jobs", f"{FILLER}.>")))
        for filler in fillers[:10]:
            bridge.call(bridge.client.delete(filler))
        job = bridge.wait_status(job_id, "failed", timeout=40)
        assert "job store full" in job["error"] and "worker died" not in job["error"], job
        assert job["hostname"] == "w1" and "_unknown" not in job["worker_states"], job
        assert [e["event"] for e in job["timeline"]] == ["submitted", "failed"]
        assert not runs.exists()
        wait_for(lambda: http.get("/health/status").json["status"] == "ok", 10, what="health ok again")
        # and the worker runs jobs again
        again = bridge.call(bridge.client.create(job_request("test.record", {"tag": "after"}, "_any")))
        bridge.wait_status(again["job_id"], "completed", timeout=30)
        assert runs.read_text() == "after\n"
        assert "Traceback" not in worker.log()
