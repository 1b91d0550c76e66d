"""Stream and bucket settings: processes never change existing ones; `osapi job setup` does.

Real nats-servers: one for the single-node tests, a three-node JetStream cluster on
loopback (``testkit.cluster.NatsCluster``) for the replica test. Worker and API are
real processes; ``osapi job setup`` runs in-process through the CLI's ``main``.
"""

from __future__ import annotations

import io
import json

import pytest
from testkit.cluster import NatsCluster
from job_support import Bridge, base_env, job_request
from testkit import ApiProcess, WorkerProcess, clean_env, wait_for

from osapi.cli import Environment, main

OBJECTS = [("stream", "JOBS", "JOBS", "job.stream.replicas"),
           ("stream", "JOBS_DLQ", "JOBS_DLQ", "job.dlq.replicas"),
           ("bucket", "job-queue", "KV_job-queue", "job.kv.replicas"),
           ("bucket", "job-responses", "KV_job-responses", "job.kv.replicas"),
           ("bucket", "job-queue-workers", "KV_job-queue-workers", "job.kv.replicas"),
           ("bucket", "job-queue-idempotency", "KV_job-queue-idempotency", "job.kv.replicas"),
           ("bucket", "job-queue-rollouts", "KV_job-queue-rollouts", "job.kv.replicas"),
           ("bucket", "job-queue-fleet", "KV_job-queue-fleet", "job.kv.replicas"),
           ("stream", "AUDIT", "AUDIT", "audit.replicas")]
STREAMS = [stream for _, _, stream, _ in OBJECTS]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(env: dict, *argv: str, stdin: io.StringIO | None = None):
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), Environment(stdin=stdin or io.StringIO(""), stdout=out, stderr=err, environ=env))
    return int(status), out.getvalue(), err.getvalue()


def stream_configs(bridge: Bridge, names=STREAMS) -> dict:
    async def read():
        return {name: (await bridge.store.js.stream_info(name)).config for name in names}

    return bridge.call(read())


# ---------------------------------------------------------------- one server


def test_setup_shows_no_differences_on_a_fresh_setup_and_applies_a_changed_max_age(nats_server, tmp_path, caplog):
    env = base_env(nats_server, tmp_path / "state")
    bridge = Bridge(env)  # a process with the defaults creates everything
    try:
        status, out, err = run_cli(env, "job", "setup")
        assert status == 0, err
        assert out.startswith("no differences: every stream and bucket in NATS (nats://127.0.0.1:")
        status, out, _ = run_cli(env, "job", "setup", "--json")
        assert status == 0 and json.loads(out)["differences"] == [] and json.loads(out)["applied"] is False

        shorter = {**env, "OSAPI_JOB_STREAM_MAX_AGE": "1h"}
        # a process configured with 1h changes nothing and says so, once per setting
        with caplog.at_level("WARNING", logger="osapi.job.setup"):
            other = Bridge(shorter)
            other.call(other.client.setup())  # again, as the API does after a reconnect
            other.close()
        assert stream_configs(bridge, ["JOBS"])["JOBS"].max_age == 86400
        warning = ("stream JOBS: max_age is 1d in NATS but 1h in this process's configuration "
                   "(job.stream.max_age); keeping 1d (`osapi job setup --apply` changes it to the configured value)")
        assert caplog.text.count(warning) == 1, caplog.text
        assert "replicas" not in caplog.text

        status, out, _ = run_cli(shorter, "job", "setup")
        assert status == 1
        assert out.splitlines()[1].split() == ["OBJECT", "SETTING", "IN", "NATS", "CONFIGURED", "KEY"]
        assert out.splitlines()[3].split() == ["stream", "JOBS", "max_age", "1d", "1h", "job.stream.max_age"]
        assert "1 difference(s); `osapi job setup --apply` changes NATS to the configured values" in out
        status, out, _ = run_cli(shorter, "job", "setup", "--json")
        assert status == 1
        assert json.loads(out)["differences"] == [{"kind": "stream", "name": "JOBS", "setting": "max_age",
                                                  "cluster": 86400.0, "configured": 3600.0,
                                                  "key": "job.stream.max_age"}]

        # --apply without a terminal and without --yes refuses; a "no" on a terminal cancels
        status, out, err = run_cli(shorter, "job", "setup", "--apply")
        assert status == 2 and out == ""
        assert "refusing to change 1 stream(s)/bucket(s) in NATS (stream JOBS) without confirmation: " \
               "stdin is not a terminal; nothing was changed (add --yes to confirm)" in err
        status, out, err = run_cli(shorter, "job", "setup", "--apply", stdin=Tty("n\n"))
        assert status == 1 and "Proceed? [y/N]" in err and "cancelled: nothing was changed" in err
        assert stream_configs(bridge, ["JOBS"])["JOBS"].max_age == 86400

        status, out, err = run_cli(shorter, "job", "setup", "--apply", stdin=Tty("y\n"))
        assert status == 0, err
        assert out.splitlines()[-1] == "stream JOBS: updated"
        config = stream_configs(bridge, ["JOBS"])["JOBS"]
        assert config.max_age == 3600 and config.max_msgs == 10000 and config.num_replicas == 1
        assert run_cli(shorter, "job", "setup")[0] == 0
        assert run_cli(env, "job", "setup")[0] == 1  # the defaults now differ the other way
    finally:
        bridge.close()


def test_setup_apply_creates_what_is_missing_and_reports_a_refused_storage_change(nats_server, tmp_path):
    env = base_env(nats_server, tmp_path / "state")
    status, out, _ = run_cli(env, "job", "setup", "--json")
    assert status == 1
    assert [(d["kind"], d["name"], d["setting"], d["cluster"], d["configured"])
            for d in json.loads(out)["differences"]] == [(k, n, "exists", False, True) for k, n, _, _ in OBJECTS]

    status, out, err = run_cli(env, "job", "setup", "--apply", "--yes", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["applied"] is True
    assert report["results"] == [{"kind": k, "name": n, "action": "create", "status": "ok", "error": None}
                                 for k, n, _, _ in OBJECTS]
    assert run_cli(env, "job", "setup")[0] == 0

    memory = {**env, "OSAPI_JOB_DLQ_STORAGE": "memory", "OSAPI_JOB_DLQ_MAX_MSGS": "50"}
    status, out, err = run_cli(memory, "job", "setup", "--apply", "--yes")
    assert status == 1
    assert "stream JOBS_DLQ: update FAILED: stream configuration update can not change storage type" in out
    bridge = Bridge(env)
    try:
        config = stream_configs(bridge, ["JOBS_DLQ"])["JOBS_DLQ"]
        assert config.storage == "file" and config.max_msgs == 1000  # the refused update changed nothing
    finally:
        bridge.close()


@pytest.mark.parametrize("argv, extra, message", [
    (["--yes"], {}, "--yes only goes with --apply"),
    (["--apply", "now"], {}, "unrecognized arguments: now"),
    (["--apply", "--yes"], {"OSAPI_JOB_STREAM_NAME": "JOBS\nX"}, "job.stream_name"),
    (["--apply", "--yes"], {"OSAPI_JOB_KV_BUCKET": "job-*"}, "job.kv_bucket"),
    (["--apply", "--yes"], {"OSAPI_JOB_STREAM_NAME": "../JOBS"}, "job.stream_name"),
    (["--apply", "--yes"], {"OSAPI_JOB_STREAM_REPLICAS": "0"}, "job.stream.replicas"),
])
def test_setup_refuses_bad_usage_and_changes_nothing(nats_server, tmp_path, argv, extra, message):
    env = {**base_env(nats_server, tmp_path / "state"), **extra}
    status, out, err = run_cli(env, "job", "setup", *argv)
    assert status == 2 and out == "" and message in err, err
    status, out, _ = run_cli(base_env(nats_server, tmp_path / "state"), "job", "setup", "--json")
    assert [d["setting"] for d in json.loads(out)["differences"]] == ["exists"] * len(OBJECTS)  # nothing was created


def test_setup_without_nats_names_the_url(tmp_path):
    from testkit import free_port

    port = free_port()
    env = clean_env(OSAPI_NATS_URL=f"nats://user:s3cret@127.0.0.1:{port}", OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "s"))
    status, out, err = run_cli(env, "job", "setup", "--apply", "--yes")
    assert status == 1 and out == ""
    assert f"cannot connect to NATS at nats://127.0.0.1:{port}" in err and "s3cret" not in err


# ---------------------------------------------------------------- a three-node cluster


def test_default_processes_keep_a_clusters_three_replicas_until_job_setup_applies(tmp_path):
    cluster = NatsCluster(tmp_path / "cluster")
    procs: list = []
    bridge = None
    try:
        cluster.start()
        cluster.wait_ready()
        state = {"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "state")}
        three = clean_env(**cluster.env(), **state, OSAPI_JOB_STREAM_REPLICAS="3", OSAPI_JOB_KV_REPLICAS="3",
                          OSAPI_JOB_DLQ_REPLICAS="3", OSAPI_AUDIT_REPLICAS="3")
        bridge = Bridge(three)  # creates every stream and bucket at 3 replicas
        assert {n: c.num_replicas for n, c in stream_configs(bridge).items()} == {n: 3 for n in STREAMS}

        # a worker and an API with default settings (replicas 1), each on another member
        worker = WorkerProcess(tmp_path / "worker", clean_env(**cluster.env([1]), OSAPI_JOB_WORKER_HOSTNAME="w1"))
        procs.append(worker.start())
        api = ApiProcess(tmp_path / "api", clean_env(**cluster.env([2])))
        procs.append(api.start())
        api.wait_ready(timeout=30)
        wait_for(lambda: "jobs-worker-host-w1" in str(bridge.call(bridge.store.js.consumers_info("JOBS"))),
                 30, what=f"the worker's host consumer\n{worker.log()}")
        result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "w1"), 20.0, 1.0))
        assert result["results"][0]["hostname"] == "w1"

        assert {n: c.num_replicas for n, c in stream_configs(bridge).items()} == {n: 3 for n in STREAMS}
        for stream, consumer in (("JOBS", "jobs-worker-any"), ("JOBS_DLQ", "jobs-worker-dlq")):
            info = bridge.call(bridge.store.js.consumer_info(stream, consumer))
            assert len(info.cluster.replicas) == 2, (consumer, info.cluster)  # follows its stream: 3 copies
        # a host's own consumer is one copy (docs/jobs.md, "Host consumers: one copy"), on a member of its stream
        host = bridge.call(bridge.store.js.consumer_info("JOBS", "jobs-worker-host-w1"))
        assert host.config.num_replicas == 1 and not host.cluster.replicas, host.cluster
        assert host.cluster.leader in {"n0", "n1", "n2"}, host.cluster
        for log in (worker.log(), api.log()):
            for kind, name, _, key in OBJECTS:
                warning = (f"{kind} {name}: replicas is 3 in NATS but 1 in this process's configuration ({key}); "
                           "keeping 3 (`osapi job setup --apply` changes it to the configured value)")
                assert log.count(warning) == 1, log
            assert "updated" not in log

        default = clean_env(**cluster.env(), **state)
        status, out, err = run_cli(default, "job", "setup")
        assert status == 1, err
        rows = [line.split() for line in out.splitlines()[3:3 + len(OBJECTS)]]
        assert rows == [[kind, name, "replicas", "3", "1", key] for kind, name, _, key in OBJECTS]

        status, out, err = run_cli(default, "job", "setup", "--apply", "--yes")
        assert status == 0, err + out
        assert out.splitlines()[-len(OBJECTS):] == [f"{kind} {name}: updated" for kind, name, _, _ in OBJECTS]
        assert {n: c.num_replicas for n, c in stream_configs(bridge).items()} == {n: 1 for n in STREAMS}
        assert run_cli(default, "job", "setup")[0] == 0
    finally:
        for proc in procs:
            proc.stop()
        if bridge is not None:
            bridge.close()
        cluster.stop()



def test_an_api_waits_for_a_forming_cluster_and_says_what_it_waits_for(tmp_path):
    """Streams at 3 replicas cannot be created before the cluster has a meta leader (one member
    up) nor while fewer than 3 members are up: the API keeps trying, not ready, saying why."""
    cluster = NatsCluster(tmp_path / "cluster")
    api = None
    try:
        cluster.start(members=[0])
        env = clean_env(**cluster.env([0]), OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "state"),
                        OSAPI_JOB_STREAM_REPLICAS="3", OSAPI_JOB_KV_REPLICAS="3", OSAPI_JOB_DLQ_REPLICAS="3",
                        OSAPI_AUDIT_REPLICAS="3")
        api = ApiProcess(tmp_path / "api", env).start()

        def not_ready_because(text):
            resp = api.http().get("/health/ready", token=None)
            assert resp.status in (200, 503), resp.raw
            return resp.status == 503 and text in resp.json["error"]

        no_leader = "JetStream did not answer the creation of stream JOBS: a cluster answers only once it has a meta leader"
        wait_for(lambda: not_ready_because(no_leader), 40, interval=0.3, what=f"no meta leader\n{api.log()}")
        assert no_leader in api.log()

        cluster.start(members=[1])  # a majority: a meta leader, but 2 servers for 3 replicas
        few = ("JetStream cannot place stream JOBS on 3 servers (job.stream.replicas = 3): fewer than 3 servers "
               "of the cluster are up")
        wait_for(lambda: not_ready_because(few), 60, interval=0.3, what=f"too few servers\n{api.log()}")
        wait_for(lambda: few in api.log(), 10, interval=0.2, what=f"a log line\n{api.log()}")  # a new reason is logged at once

        cluster.start(members=[2])
        api.wait_ready(timeout=60)
        assert api.proc.poll() is None  # it waited; it never exited
        assert "Traceback" not in api.log()
    finally:
        if api is not None:
            api.stop()
        cluster.stop()
