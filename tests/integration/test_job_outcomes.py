"""Every host's outcome and retry, end to end: real nats-server, real API, three real workers.

- ``out-ok`` (group=web.a, zone=z1): its DNS file is a temp file, changes succeed;
- ``out-bad`` (group=web.b, zone=z2): its DNS "file" is a directory, so every DNS read
  or change fails there (a provider that cannot run on that host);
- ``out-stalled`` (group=web.c, zone=z1): SIGSTOPped in the tests that need a silent
  host (always SIGCONTed in ``finally``); its heartbeat is 10 s, so it stays in the
  registry (expected by broadcasts) for 30 s after it stops.

The API's ``job_timeout`` is 4 s: a host silent that long after submission is
``no_response``. DNS changes go to temp files, never the host's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import testkit
from api_support import RESOLV, JobsApi, check_against_document, resolv_files, states
from testkit import WorkerProcess, make_token, paused, wait_for

pytestmark = pytest.mark.timeout(180)

ADMIN = make_token(["admin"], subject="outcomes-admin")
READ = make_token(["read"], subject="outcomes-reader")
OK, BAD, STALLED = "out-ok", "out-bad", "out-stalled"
JOB_TIMEOUT = 4.0
DNS = {"type": "network.dns.update", "data": {"interface_name": "lo", "servers": ["192.0.2.53"]}}
HOSTNAME = {"type": "system.hostname.get", "data": {}}


@dataclass
class Stack(JobsApi):
    workers: dict[str, WorkerProcess]
    resolv: dict[str, Path]

    def submit(self, operation: dict, target: str) -> str:
        resp = self.post({"operation": operation, "target_hostname": target})
        assert resp.status == 201, resp.raw[:300]
        return resp.json["job_id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("outcomes")
    resolv = resolv_files(base, (OK, BAD, STALLED), broken=(BAD,))
    with testkit.Stack(base) as kit:
        workers = {}
        for host, labels, heartbeat in ((OK, "group=web.a,zone=z1", None), (BAD, "group=web.b,zone=z2", None),
                                        (STALLED, "group=web.c,zone=z1", "10s")):
            workers[host] = kit.start_worker(host, labels, heartbeat=heartbeat, resolv_conf=resolv[host])
        api = kit.start_api(env={"OSAPI_API_SERVER_JOB_TIMEOUT": f"{JOB_TIMEOUT:g}s",
                                 "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": "1s"})
        kit.wait_workers(workers, api)
        doc = api.http().get("/api/v1/openapi.json", token=None).json
        yield Stack(api, doc, kit.env, ADMIN, READ, workers, resolv)


def stalled(stack: Stack):
    """``out-stalled`` stopped (SIGSTOP) for the block; always continued (SIGCONT) after it."""
    return paused(stack.workers[STALLED])


def hosts_with_events(job: dict) -> set[str]:
    return {t["hostname"] for t in job["timeline"] if t["event"] != "submitted"}


def test_a_broadcast_shows_every_hosts_outcome_and_a_retry_hits_exactly_the_failed_and_silent_hosts(stack):
    with stalled(stack):
        job_id = stack.submit(DNS, "group:web")
        job = stack.job(job_id)
        assert states(job)[STALLED] == "pending"
        assert job["summary"]["targeted"] == 3 and job["status"] in ("submitted", "processing")
        job = stack.settled(job_id)  # the silent host decides after job_timeout
        assert states(job) == {OK: "ok", BAD: "failed", STALLED: "no_response"}
        assert job["summary"] == {"targeted": 3, "ok": 1, "failed": 1, "no_response": 1, "skipped": 0, "pending": 0}
        assert job["status"] == "partial_failure"
        assert job["worker_states"][STALLED]["status"] == "no_response"
        assert f"{STALLED}: no answer within {JOB_TIMEOUT:g}s of submission" in job["error"]
        assert "1 of 3 hosts failed, 1 did not answer" in job["error"]
        assert stack.resolv[OK].read_text() != RESOLV  # the change ran where it could

        only_failed = stack.http().request("POST", f"/api/v1/jobs/{job_id}/retry", {"only": ["failed"]})
        assert only_failed.status == 201, only_failed.raw
        check_against_document(stack.doc, "POST", "/api/v1/jobs/{job_id}/retry", only_failed)
        assert only_failed.json["hosts"] == [BAD] and only_failed.json["retry_of"] == job_id
        assert only_failed.header("Location") == f"/api/v1/jobs/{only_failed.json['job_id']}"

        resp = stack.http().request("POST", f"/api/v1/jobs/{job_id}/retry")  # no body: all three states
        assert resp.status == 201, resp.raw
        retry = resp.json
        assert retry["hosts"] == [BAD, STALLED] and retry["retry_of"] == job_id
        view = stack.job(retry["job_id"])
        assert view["retry_of"] == job_id and view["operation"] == job["operation"]
        assert view["target_hostname"] == "group:web"
        assert set(view["hosts"]) == {BAD, STALLED} and view["summary"]["targeted"] == 2
        wait_for(lambda: states(stack.job(retry["job_id"]))[BAD] == "failed", 20, what="out-bad failing the retry")
    # out-stalled continues: it answers the first job late (its own state wins) and runs the retry
    retried = stack.settled(retry["job_id"])
    assert states(retried) == {BAD: "failed", STALLED: "ok"} and retried["status"] == "partial_failure"
    assert OK not in hosts_with_events(retried)  # exactly those hosts: out-ok never took it
    assert stack.resolv[STALLED].read_text() != RESOLV
    wait_for(lambda: states(stack.job(job_id))[STALLED] == "ok", 20, what="the late answer deciding its host")
    # the retry of the failed host only: out-bad, nobody else
    only = stack.settled(only_failed.json["job_id"])
    assert states(only) == {BAD: "failed"} and hosts_with_events(only) == {BAD}


def test_a_synchronous_call_reports_silent_hosts_as_no_response_and_the_cli_exits_3(stack):
    with stalled(stack):
        res = stack.cli("system", "hostname", "-T", "zone:z1")  # out-ok answers, out-stalled does not
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert f"1 of 2 hosts did not answer: {STALLED}" in res.stderr
        assert "osapi client job retry --job-id" in res.stderr
        row = [line for line in res.stdout.splitlines() if line.startswith(STALLED)][0]
        assert "no answer within" in row
        job_id = res.stdout.split()[1]
        job = stack.job(job_id)
        assert states(job) == {OK: "ok", STALLED: "no_response"}
        assert job["responses"][STALLED]["status"] == "no_response"
        assert job["timeline"][-1]["event"] == "no_response"
        # a failed host as well: exit 1
        res = stack.cli("network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.54",
                        "-T", "group:web", "--yes")
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert f"1 of 3 hosts failed: {BAD}; 1 did not answer" in res.stderr
        # job run: the only problem is the silent host -> 3; a failed host -> 1
        run = stack.cli("job", "run", "--json-file", "-", "-T", "zone:z1", "-p", "200ms",
                        stdin='{"type": "system.uptime.get"}')
        assert run.returncode == 3, (run.stdout, run.stderr)
        assert f"1 of 2 hosts did not answer: {STALLED}" in run.stderr
        retry = stack.cli("job", "retry", "--job-id", job_id, "--only", "no_response", "--json")
        assert retry.returncode == 0, retry.stderr
        body = json.loads(retry.stdout)
        assert body["hosts"] == [STALLED] and body["retry_of"] == job_id
    assert states(stack.settled(body["job_id"])) == {STALLED: "ok"}
    assert hosts_with_events(stack.job(body["job_id"])) == {STALLED}


def test_a_one_host_job_lists_the_host_that_took_it(stack):
    job_id = stack.submit(HOSTNAME, OK)
    job = stack.settled(job_id)
    assert job["hosts"] == {OK: {"state": "ok"}}
    assert job["summary"] == {"targeted": 1, "ok": 1, "failed": 0, "no_response": 0, "skipped": 0, "pending": 0}
    # a retry of a job where every host is ok: 409, nothing submitted
    before = stack.http(READ).get("/api/v1/jobs?limit=1").json["total_items"]
    resp = stack.http().request("POST", f"/api/v1/jobs/{job_id}/retry", {"only": ["failed", "no_response"]})
    assert resp.status == 409, resp.raw
    check_against_document(stack.doc, "POST", "/api/v1/jobs/{job_id}/retry", resp)
    assert "no host of job" in resp.json["details"] and f"{OK}: ok" in resp.json["details"]
    assert stack.http(READ).get("/api/v1/jobs?limit=1").json["total_items"] == before
    res = stack.cli("job", "retry", "--job-id", job_id)
    assert res.returncode == 1 and "HTTP 409" in res.stderr


@pytest.fixture(scope="module")
def failed_job(stack) -> str:
    """A job with a failed host (out-bad cannot run DNS reads)."""
    job_id = stack.submit({"type": "network.dns.get", "data": {"interface_name": "lo"}}, BAD)
    assert states(stack.settled(job_id)) == {BAD: "failed"}
    return job_id


@pytest.mark.parametrize("path_id, body, status, error", [
    (str(uuid.uuid4()), None, 404, "job not found"),
    (str(uuid.uuid4()), {"only": ["failed"]}, 404, "job not found"),
    ("not a job\n", None, 400, "invalid job_id"),
    ("{job}", {"only": []}, 400, "invalid field only"),
    ("{job}", {"only": ["ok"]}, 400, "invalid field only"),
    ("{job}", {"only": ["failed\n"]}, 400, "invalid field only"),
    ("{job}", {"only": "failed"}, 400, "invalid field only"),
    ("{job}", {"only": None}, 400, "invalid field only"),
    ("{job}", {"only": ["failed"], "hosts": ["out-ok"]}, 400, "unknown field hosts in the request body"),
    ("{job}", ["failed"], 400, "invalid request body"),
])
def test_bad_retries_are_refused_and_submit_nothing(stack, failed_job, path_id, body, status, error):
    job_id = path_id.replace("{job}", failed_job)
    before = stack.http(READ).get("/api/v1/jobs?limit=1").json["total_items"]
    resp = stack.http().request("POST", f"/api/v1/jobs/{quote(job_id, safe='')}/retry", body)
    assert resp.status == status, resp.raw
    assert resp.json["error"] == error, resp.json
    if "job_id" not in error:  # a path the document's pattern refuses has no route to check against
        check_against_document(stack.doc, "POST", "/api/v1/jobs/{job_id}/retry", resp)
    assert stack.http(READ).get("/api/v1/jobs?limit=1").json["total_items"] == before


def test_retry_needs_the_write_scope(stack):
    resp = stack.http(READ).request("POST", f"/api/v1/jobs/{uuid.uuid4()}/retry", {})
    assert resp.status == 403
