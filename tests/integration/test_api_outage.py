"""NATS goes away and comes back: the API answers 503 meanwhile and recovers by itself.

A real nats-server is stopped, then started again on the same port with the same
store directory; the API process (and the worker) keep running throughout.
"""

from __future__ import annotations

import pytest
from testkit import ApiProcess, NatsServer, Stack, clean_env, make_token, wait_for

ADMIN = make_token(["admin"], subject="ops")


def _is(status):
    return lambda resp: resp.status == status


@pytest.fixture
def parts(tmp_path):
    """nats-server, a worker and an API (not yet ready); the test may stop and start the server again."""
    with Stack(tmp_path, {"OSAPI_API_SERVER_JOB_TIMEOUT": "15s"}) as stack:
        stack.start_worker("outage-w1", name="worker")
        yield stack.nats, stack.start_api(ready=False)


def test_503_while_nats_is_down_and_recovery(parts):
    nats, api = parts
    http = api.http(ADMIN)
    api.wait_ready()
    wait_for(lambda: http.get("/api/v1/system/hostname?target_hostname=outage-w1").status == 200,
             timeout=30, what="the worker answering")
    created = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.uptime.get"}})
    assert created.status == 201
    job_id = created.json["job_id"]
    counted = http.get("/api/v1/jobs/status").json
    assert counted["total_jobs"] >= 2

    nats.stop()
    down = api.wait_ready(want=503)
    assert down.json["status"] == "not_ready" and f":{nats.port}" in down.json["error"]
    for method, path, body in [
        ("GET", "/api/v1/jobs", None),
        ("GET", f"/api/v1/jobs/{job_id}", None),
        ("POST", "/api/v1/jobs", {"operation": {"type": "system.uptime.get"}}),
        ("GET", "/api/v1/system/hostname", None),
        ("GET", "/api/v1/jobs/workers", None),
    ]:
        resp = http.request(method, path, body)
        assert resp.status == 503, (method, path, resp.status, resp.raw)
        assert resp.json["code"] == 503 and resp.json["error"] == "NATS is not reachable"
        assert f":{nats.port}" in resp.json["details"]
    status = http.get("/health/status")
    assert status.status == 503 and status.json["status"] == "degraded"
    assert status.json["components"]["nats"]["status"] == "error"
    # the job counts: the last ones this API got, marked stale, with when and why
    jobs = status.json["jobs"]
    assert {k: jobs[k] for k in counted} == counted and jobs["stale"] is True
    assert jobs["as_of"].endswith("Z") and "NATS" in jobs["error"]
    # validation still answers without NATS: a bad request is 400, not 503
    assert http.request("POST", "/api/v1/jobs", {"operation": {"type": "nope"}}).status == 400

    nats.start()  # the same port, token and store
    api.wait_ready(timeout=30)
    assert http.get(f"/api/v1/jobs/{job_id}").json["id"] == job_id  # the store survived
    assert http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.uptime.get"}}).status == 201
    answered = wait_for(
        lambda: (r := http.get("/api/v1/system/hostname?target_hostname=outage-w1")).status == 200 and r,
        timeout=30, what="the worker answering after the restart")
    assert answered.json["results"][0]["hostname"] == "outage-w1"
    assert http.get("/health/status").json["status"] == "ok"
    assert "Traceback" not in api.log()


def test_api_started_before_nats_connects_when_it_appears(tmp_path):
    """NATS down at start: the API serves 503 and connects once nats-server is up.

    Then nats-server is replaced by one with an empty store on the same port: the
    API sets the stream and buckets up again by itself.
    """
    from testkit import free_port

    port = free_port()
    token = "t" * 32
    api = ApiProcess(tmp_path / "api", clean_env(OSAPI_NATS_URL=f"nats://127.0.0.1:{port}",
                                                 OSAPI_NATS_TOKEN=token)).start()
    servers = []
    try:
        http = api.http(ADMIN)
        assert http.get("/api/v1/jobs").status == 503
        servers.append(NatsServer(tmp_path / "nats-a", port=port, token=token).start())
        api.wait_ready(timeout=30)
        listing = http.get("/api/v1/jobs")
        assert listing.status == 200 and listing.json == {"total_items": 0, "items": []}
        assert http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.os.get"}}).status == 201

        servers[0].stop()
        api.wait_ready(want=503)
        servers.append(NatsServer(tmp_path / "nats-b", port=port, token=token).start())  # empty store
        api.wait_ready(timeout=30)
        created = wait_for(lambda: (r := http.request("POST", "/api/v1/jobs",
                                                      {"operation": {"type": "system.os.get"}})).status == 201 and r,
                           timeout=30, what="a job accepted by the new server")
        assert http.get(f"/api/v1/jobs/{created.json['job_id']}").status == 200
        assert http.get("/api/v1/jobs").json["total_items"] == 1
    finally:
        code = api.stop()
        for server in servers:
            server.stop()
    assert code == 0, api.log()


def test_a_submission_answered_503_while_nats_is_stalled_leaves_no_phantom_job(parts):
    """nats-server stalled (SIGSTOP, not killed) while a job is submitted: 5xx, and nothing runs later.

    The stalled server still holds the requests in its socket buffer: after SIGCONT it stores
    the job body the API gave up on. That job must end ``failed`` with the reason (or be gone),
    never stay ``submitted``, and no worker may run it.
    """
    import os
    import signal
    import threading

    nats, api = parts
    http = api.http(ADMIN)
    api.wait_ready()
    wait_for(lambda: http.get("/api/v1/system/hostname?target_hostname=outage-w1").status == 200,
             timeout=30, what="the worker answering")
    before = {j["id"] for j in http.get("/api/v1/jobs?limit=1000").json["items"]}
    answers: dict = {}

    def post():
        answers["post"] = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.uptime.get"},
                                                               "target_hostname": "outage-w1"})

    def sync():
        answers["sync"] = http.get("/api/v1/system/hostname?target_hostname=outage-w1")

    os.kill(nats.proc.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=post), threading.Thread(target=sync)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        os.kill(nats.proc.pid, signal.SIGCONT)
    assert answers["post"].status == 503, answers["post"].raw
    assert answers["sync"].status == 503, answers["sync"].raw
    assert answers["post"].json["error"] == "NATS is not reachable"

    def settled():
        resp = http.get("/api/v1/jobs?limit=1000")
        if resp.status != 200:
            return None
        new = [j for j in resp.json["items"] if j["id"] not in before]
        return {"jobs": new} if all(j["status"] == "failed" for j in new) else None

    new = wait_for(settled, timeout=40, what="every job of a refused submission failed or gone")["jobs"]
    for job in new:
        assert "submission failed" in job["error"] and "503" in job["error"], job
        assert not [e for e in job["timeline"] if e["event"] in ("acknowledged", "started", "completed")], job
    # the worker is alive and answers: it simply never got (or skipped) the refused jobs
    assert http.get("/api/v1/system/hostname?target_hostname=outage-w1").status == 200
    for job in new:
        again = http.get(f"/api/v1/jobs/{job['id']}").json
        assert again["status"] == "failed" and [e["event"] for e in again["timeline"]] == \
            [e["event"] for e in job["timeline"]]
    assert "Traceback" not in api.log()
