"""One worker host hangs: the API keeps answering everything else.

A real worker process is stopped with SIGSTOP (its long heartbeat keeps it in the
registry) and 48 synchronous calls to it wait inside the API -- more than the 8
threads the API once had. ``/health``, ``/health/ready`` and a call to the other
(healthy) host must still answer. Every client timeout is shorter than
``job_timeout``, so an API that cannot answer makes the test fail, not hang.
The stopped worker always gets SIGCONT; then it answers the waiting calls.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from testkit import Http, Stack, make_token, wait_for

ADMIN = make_token(["admin"], subject="ops")
WAITING = 48
JOB_TIMEOUT = 60.0  # seconds; every client timeout below is shorter
PROBE_TIMEOUT = 10.0
HUNG, HEALTHY = "hung-w1", "ok-w1"


@pytest.fixture
def parts(tmp_path):
    with Stack(tmp_path, {"OSAPI_API_SERVER_JOB_TIMEOUT": f"{JOB_TIMEOUT:g}s"}) as stack:
        stack.start_worker(HEALTHY, heartbeat="1s")
        hung = stack.start_worker(HUNG, heartbeat="60s")  # 60 s: stays registered while stopped
        yield stack.start_api(), hung


def _hostname(http: Http, host: str):
    return http.get(f"/api/v1/system/hostname?target_hostname={host}")


def _total_jobs(http: Http) -> int:
    resp = http.get("/api/v1/jobs/status")
    assert resp.status == 200, resp.raw
    return resp.json["total_jobs"]


def test_health_and_other_hosts_answer_while_many_calls_wait_on_a_hung_host(parts):
    api, hung = parts
    probe = Http(api.port, token=ADMIN, timeout=PROBE_TIMEOUT)
    for host in (HEALTHY, HUNG):
        wait_for(lambda host=host: _hostname(probe, host).status == 200, timeout=30, what=f"{host} answering")
    before = _total_jobs(probe)
    waiting = Http(api.port, token=ADMIN, timeout=JOB_TIMEOUT - 10)
    os.kill(hung.proc.pid, signal.SIGSTOP)
    pool = ThreadPoolExecutor(max_workers=WAITING)
    try:
        calls = [pool.submit(_hostname, waiting, HUNG) for _ in range(WAITING)]
        # every call is inside the API, waiting, once its job is stored
        wait_for(lambda: _total_jobs(probe) >= before + WAITING, timeout=30, interval=0.2,
                 what=f"{WAITING} jobs for {HUNG} stored")
        assert not any(call.done() for call in calls)

        health = probe.get("/health", token=None)
        assert (health.status, health.json) == (200, {"status": "ok"})
        ready = probe.get("/health/ready", token=None)
        assert (ready.status, ready.json) == (200, {"status": "ready"})
        other = _hostname(probe, HEALTHY)
        assert other.status == 200, other.raw
        assert [r["hostname"] for r in other.json["results"]] == [HEALTHY]
        assert not any(call.done() for call in calls)  # they were waiting all along
    finally:
        os.kill(hung.proc.pid, signal.SIGCONT)
        pool.shutdown(wait=True)  # bounded: each call's client timeout
    answers = [call.result() for call in calls]
    # the resumed worker answers the jobs that waited for it
    assert [a.status for a in answers] == [200] * WAITING, [a.raw for a in answers if a.status != 200][:3]
    assert {a.json["results"][0]["hostname"] for a in answers} == {HUNG}
