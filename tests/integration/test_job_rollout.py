"""Rollouts end to end: real nats-server, two real API processes, four real workers.

- ``ro-a`` and ``ro-c`` (group=web): DNS files are temp files, changes succeed;
- ``ro-b`` (group=web): its DNS "file" is a directory, so the change fails there;
- ``ro-d`` (group=web): SIGSTOPped in the tests that need a silent host (always
  SIGCONTed in ``finally``); its heartbeat is 10 s, so it stays in the registry.

Hostname order is the batch order: ro-a, ro-b, ro-c, ro-d. The APIs' ``job_timeout``
is 4 s: a host of a sent batch silent that long is ``no_response``. ``api`` accepts
the jobs; the last test kills it with -9 between two batches and starts another
API process on the same NATS, which takes the rollout over. DNS changes go to temp files, never the host's.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import testkit
from api_support import RESOLV, JobsApi, check_against_document, resolv_files, states
from testkit import WorkerProcess, make_token, paused, wait_for

pytestmark = pytest.mark.timeout(240)

ADMIN = make_token(["admin"], subject="rollout-admin")
A, B, C, D = "ro-a", "ro-b", "ro-c", "ro-d"
HOSTS = (A, B, C, D)
JOB_TIMEOUT = 4.0
API_ENV = {"OSAPI_API_SERVER_JOB_TIMEOUT": f"{JOB_TIMEOUT:g}s", "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": "1s"}


def dns(server: str) -> dict:
    return {"type": "network.dns.update", "data": {"interface_name": "lo", "servers": [server]}}


@dataclass
class Stack(JobsApi):
    workers: dict[str, WorkerProcess]
    resolv: dict[str, Path]
    kit: testkit.Stack

    def submit(self, body: dict) -> str:
        resp = self.post(body)
        assert resp.status == 201, resp.raw[:300]
        check_against_document(self.doc, "POST", "/api/v1/jobs", resp)
        return resp.json["job_id"]

    def reset_files(self) -> None:
        for host in (A, C, D):
            self.resolv[host].write_text(RESOLV)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("rollout")
    resolv = resolv_files(base, HOSTS, broken=(B,))
    with testkit.Stack(base) as kit:
        workers = {host: kit.start_worker(host, "group=web", heartbeat="10s" if host == D else None,
                                          resolv_conf=resolv[host]) for host in HOSTS}
        api = kit.start_api(env=API_ENV)
        kit.wait_workers(workers, api)
        doc = api.http().get("/api/v1/openapi.json", token=None).json
        yield Stack(api, doc, kit.env, ADMIN, ADMIN, workers, resolv, kit)


def stalled(stack: Stack):
    """``ro-d`` stopped (SIGSTOP) for the block; always continued (SIGCONT) after it."""
    return paused(stack.workers[D])


def batches(job: dict) -> dict[str, int]:
    return {host: item.get("batch") for host, item in job["hosts"].items()}


def runs(job: dict) -> dict[str, int]:
    """How many times each host started the job (from its timeline)."""
    counts = {h: 0 for h in job["hosts"]}
    for item in job["timeline"]:
        if item["event"] == "started":
            counts[item["hostname"]] = counts.get(item["hostname"], 0) + 1
    return counts


def total_jobs(stack: Stack) -> int:
    return stack.api.http(ADMIN).get("/api/v1/jobs?limit=1").json["total_items"]


def test_batch_1_max_failures_0_stops_after_the_failing_host_and_skips_the_rest(stack):
    stack.reset_files()
    job_id = stack.submit({"operation": dns("192.0.2.61"), "target_hostname": "group:web",
                           "rollout": {"batch": 1, "max_failures": 0}})
    job = stack.settled(job_id)
    assert states(job) == {A: "ok", B: "failed", C: "skipped", D: "skipped"}
    assert batches(job) == {A: 1, B: 2, C: 3, D: 4}
    assert job["summary"] == {"targeted": 4, "ok": 1, "failed": 1, "no_response": 0, "skipped": 2, "pending": 0}
    assert job["status"] == "partial_failure"
    assert "skipped" in job["worker_states"][C]["status"] and "max_failures (0)" in job["error"]
    assert runs(job) == {A: 1, B: 1, C: 0, D: 0}  # the skipped hosts never ran it
    assert "192.0.2.61" in stack.resolv[A].read_text()
    assert stack.resolv[C].read_text() == RESOLV and stack.resolv[D].read_text() == RESOLV
    # the skipped hosts can be retried
    retry = stack.api.http(ADMIN).request("POST", f"/api/v1/jobs/{job_id}/retry", {"only": ["skipped"]})
    assert retry.status == 201 and retry.json["hosts"] == [C, D], retry.raw


def test_batch_2_max_failures_1_goes_on_past_a_failure_and_a_silent_host_is_no_response(stack):
    stack.reset_files()
    with stalled(stack):
        job_id = stack.submit({"operation": dns("192.0.2.62"), "target_hostname": "group:web",
                               "rollout": {"batch": 2, "max_failures": 1, "pause": "1s"}})
        first = stack.job(job_id)
        assert batches(first) == {A: 1, B: 1, C: 2, D: 2}
        job = stack.settled(job_id)
        assert states(job) == {A: "ok", B: "failed", C: "ok", D: "no_response"}
        assert job["summary"]["no_response"] == 1 and job["summary"]["skipped"] == 0
        assert "192.0.2.62" in stack.resolv[C].read_text()
        # the second batch started only once the first had finished
        finished_1 = max(t["timestamp"] for t in job["timeline"] if t["hostname"] in (A, B)
                         and t["event"] in ("completed", "failed"))
        started_2 = min(t["timestamp"] for t in job["timeline"] if t["hostname"] == C)
        assert started_2 > finished_1


def test_a_percentage_batch_and_a_percentage_of_failures(stack):
    stack.reset_files()
    # 50% of 4 = 2 per batch; 25% of 4 = 1 failure tolerated: ro-b fails, the second batch runs
    job_id = stack.submit({"operation": dns("192.0.2.63"), "target_hostname": "group:web",
                           "rollout": {"batch": "50%", "max_failures": "25%", "pause": "0s"}})
    # a whole number may be written 2.0, as everywhere in the API
    assert batches(stack.settled(stack.submit({"operation": {"type": "system.hostname.get"},
                                               "target_hostname": "group:web",
                                               "rollout": {"batch": 2.0, "max_failures": 0.0}}))) == \
        {A: 1, B: 1, C: 2, D: 2}
    job = stack.settled(job_id)
    assert batches(job) == {A: 1, B: 1, C: 2, D: 2}
    assert states(job) == {A: "ok", B: "failed", C: "ok", D: "ok"}


@pytest.mark.parametrize("body, what", [
    ({"target_hostname": A, "rollout": {"batch": 1}}, "multi-host target"),
    ({"target_hostname": "_any", "rollout": {"batch": 1}}, "multi-host target"),
    ({"target_hostname": "group:web", "rollout": {"batch": 0}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {"batch": "0%"}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {"batch": "101%"}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {"batch": True}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {"batch": "1.5"}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1.5}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": {}}, "rollout.batch"),
    ({"target_hostname": "group:web", "rollout": None}, "rollout must be an object"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "max_failures": -1}}, "rollout.max_failures"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "pause": "1s\n"}}, "rollout.pause"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "pause": "-1s"}}, "rollout.pause"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "pause": "1s\x00"}}, "rollout.pause"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "pause": "*"}}, "rollout.pause"),
    ({"target_hostname": "group:web", "rollout": {"batch": 1, "extra": 1}}, "unknown field extra"),
])
def test_a_bad_rollout_is_a_400_and_stores_nothing(stack, body, what):
    before = total_jobs(stack)
    resp = stack.post({"operation": dns("192.0.2.64"), **body})
    assert resp.status == 400, resp.raw
    assert resp.json["error"] == "invalid field rollout" and what in resp.json["details"], resp.json
    check_against_document(stack.doc, "POST", "/api/v1/jobs", resp)
    assert total_jobs(stack) == before


def test_the_cli_flags_send_a_rollout_and_bad_flags_send_nothing(stack):
    stack.reset_files()
    res = stack.cli("job", "run", "--json-file", "-", "-T", "group:web", "--batch", "3", "--max-failures", "1",
                    "--dry-run", "-p", "200ms", "--json",
                    stdin=json.dumps(dns("192.0.2.65")))
    assert res.returncode == 1, (res.stdout, res.stderr)  # ro-b fails its dry run
    job = json.loads(res.stdout)
    assert batches(job) == {A: 1, B: 1, C: 1, D: 2}
    assert states(job) == {A: "ok", B: "failed", C: "ok", D: "ok"}
    assert stack.resolv[A].read_text() == RESOLV  # a dry run: nothing changed
    res = stack.cli("network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.66",
                    "-T", "group:web", "--yes", "--batch", "2", "--max-failures", "0")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "192.0.2.66" in stack.resolv[A].read_text() and stack.resolv[C].read_text() == RESOLV
    job_id = res.stdout.split()[1].rstrip(":")
    assert states(stack.job(job_id)) == {A: "ok", B: "failed", C: "skipped", D: "skipped"}
    add = stack.cli("job", "add", "--json-file", "-", "-T", "group:web", "--batch", "100%", "--pause", "0s",
                    "--json", stdin=json.dumps({"type": "system.hostname.get"}))
    assert add.returncode == 0, add.stderr
    assert states(stack.settled(json.loads(add.stdout)["job_id"])) == dict.fromkeys(HOSTS, "ok")
    before = total_jobs(stack)
    for argv in (("--batch", "0"), ("--batch", "x%"), ("--batch", "1", "--pause", "soon"),
                 ("--max-failures", "1"), ("--batch", "1", "--max-failures", "-1")):
        bad = stack.cli("job", "add", "--json-file", "-", "-T", "group:web", *argv,
                        stdin=json.dumps({"type": "system.hostname.get"}))
        assert bad.returncode == 2 and bad.stdout == "", (argv, bad.stderr)
    single = stack.cli("job", "add", "--json-file", "-", "-T", A, "--batch", "1",
                       stdin=json.dumps({"type": "system.hostname.get"}))
    assert single.returncode == 1 and "multi-host target" in single.stderr, single.stderr
    assert total_jobs(stack) == before


def test_kill_9_of_the_accepting_api_between_batches_and_the_other_api_completes_it(stack):
    """Runs last: it kills ``stack.api``."""
    stack.reset_files()
    job_id = stack.submit({"operation": dns("192.0.2.67"), "target_hostname": "group:web",
                           "rollout": {"batch": 1, "max_failures": "100%", "pause": "2s"}})
    wait_for(lambda: states(stack.job(job_id))[A] == "ok", 30, what="the first batch finishing")
    assert states(stack.job(job_id))[C] == "pending"
    stack.api.proc.send_signal(signal.SIGKILL)
    stack.api.proc.wait(timeout=10)
    other = stack.kit.start_api("other", API_ENV)  # stopped by the fixture
    job = stack.settled(job_id, api=other)
    assert states(job) == {A: "ok", B: "failed", C: "ok", D: "ok"}
    assert runs(job) == dict.fromkeys(HOSTS, 1)  # no host ran it twice because of the takeover
    assert "192.0.2.67" in stack.resolv[D].read_text()
    assert f"rollout {job_id}: driving it (lease taken from" in other.log()
