"""``GET /metrics`` (docs/api.md, Metrics): parsed with prometheus_client's own parser.

Two API processes on one nats-server and a worker: each exposes its own
counters; the gauges (jobs by status, dead letters, workers) come from the
shared store, so both report the same values.
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testkit import Stack, WorkerProcess, make_token, wait_for

HOST = "metrics-w1"
ADMIN = make_token(["admin"], subject="metrics-admin")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("metrics")) as stack:
        stack.start_worker(HOST)
        apis = [stack.start_api(name, env) for name, env in (("api1", {}),
                                                              ("api2", {"OSAPI_API_SERVER_METRICS_PUBLIC": "true"}))]
        stack.wait_answering(HOST, apis[0])
        yield tuple(apis)


def scrape(api, token=ADMIN) -> dict:
    """``{(sample name, frozenset(labels)): value}`` of one scrape, through the real parser."""
    resp = api.http(token).get("/metrics")
    assert resp.status == 200, resp.raw
    assert resp.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    out = {}
    for family in text_string_to_metric_families(resp.raw.decode("utf-8")):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_after_a_job_and_routes_are_patterns(stack):
    api, _ = stack
    http = api.http(ADMIN)
    before = scrape(api)
    job_ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in job_ids:  # three raw paths, one route pattern
        assert http.get(f"/api/v1/jobs/{job_id}").status == 404
    created = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.uptime.get"}})
    assert created.status == 201
    assert http.get(f"/api/v1/system/hostname?target_hostname={HOST}").status == 200
    assert http.get("/api/v1/definitely/not/a/route").status == 404
    after = scrape(api)

    route = "/api/v1/jobs/{job_id}"
    assert value(after, "osapi_http_requests_total", method="GET", route=route, status="404") - \
        value(before, "osapi_http_requests_total", method="GET", route=route, status="404") == 3
    assert value(after, "osapi_http_request_duration_seconds_count", route=route) - \
        value(before, "osapi_http_request_duration_seconds_count", route=route) == 3
    assert value(after, "osapi_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    labels = {dict(k[1]).get("route") for k in after if k[0] == "osapi_http_requests_total"}
    assert not any(job_id in str(labels) for job_id in job_ids) and "/api/v1/definitely/not/a/route" not in labels
    for op in ("system.uptime.get", "system.hostname.get"):
        assert value(after, "osapi_jobs_submitted_total", operation=op) - \
            value(before, "osapi_jobs_submitted_total", operation=op) == 1
    # the synchronous call was waited on: one more observation of its duration
    assert value(after, "osapi_job_duration_seconds_count", operation="system.hostname.get") - \
        value(before, "osapi_job_duration_seconds_count", operation="system.hostname.get") == 1
    assert value(after, "osapi_job_duration_seconds_bucket", operation="system.hostname.get", le="+Inf") == \
        value(after, "osapi_job_duration_seconds_count", operation="system.hostname.get")
    assert value(after, "osapi_nats_connected") == 1
    assert value(after, "osapi_workers") == 1
    assert ("osapi_broadcast_no_response_total", frozenset()) in after
    stats = http.get("/api/v1/jobs/status").json
    assert value(after, "osapi_dlq_jobs") == stats["dlq_count"]
    assert sum(value(after, "osapi_jobs", status=s) for s in stats["status_counts"]) == stats["total_jobs"]


def test_two_api_processes_agree_on_the_gauges_and_keep_their_own_counters(stack):
    first, second = stack
    http = first.http(ADMIN)
    created = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.load.get"}})
    assert created.status == 201
    wait_for(lambda: http.get(f"/api/v1/jobs/{created.json['job_id']}").json["status"] == "completed", 30,
             what="the job completed")  # nothing changes between the two scrapes
    a, b = scrape(first), scrape(second, token=None)  # the second serves /metrics without a token
    for name in ("osapi_jobs", "osapi_dlq_jobs", "osapi_workers"):
        assert {k: v for k, v in a.items() if k[0] == name} == {k: v for k, v in b.items() if k[0] == name}, name
    assert value(a, "osapi_jobs_submitted_total", operation="system.load.get") >= 1
    assert value(b, "osapi_jobs_submitted_total", operation="system.load.get") == 0


def test_a_broadcast_host_that_does_not_answer_is_counted(stack, tmp_path):
    api, _ = stack
    # a second registered host that never answers: a worker stopped with SIGSTOP after it registered
    import os
    import signal

    env = dict(api.env, OSAPI_JOB_WORKER_HOSTNAME="metrics-silent")
    silent = WorkerProcess(tmp_path / "silent", env, args=("--heartbeat", "1s")).start()
    try:
        http = api.http(ADMIN)
        wait_for(lambda: "metrics-silent" in {w["hostname"] for w in
                                              http.get("/api/v1/jobs/workers").json.get("workers", [])},
                 30, what="the silent worker registered")
        os.kill(silent.proc.pid, signal.SIGSTOP)
        before = scrape(api)
        # the silent host leaves the registry after its heartbeats stop; until then it is awaited
        resp = http.get("/api/v1/system/hostname?target_hostname=_all")
        assert resp.status == 200
        silent_hosts = [r for r in resp.json["results"] if r.get("status") == "no_response"]
        after = scrape(api)
        assert value(after, "osapi_broadcast_no_response_total") - \
            value(before, "osapi_broadcast_no_response_total") == len(silent_hosts) == 1
    finally:
        os.kill(silent.proc.pid, signal.SIGCONT)
        silent.stop()


def test_metrics_need_the_read_scope_unless_public(stack):
    api, public = stack
    resp = api.http().get("/metrics", token=False)
    assert resp.status == 401 and resp.header("WWW-Authenticate", ) is not None
    assert api.http().get("/metrics?x=1").status in (400, 401)
    assert public.http().get("/metrics", token=False).status == 200
    assert public.http().get("/metrics?x=1", token=False).status == 400
