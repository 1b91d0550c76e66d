"""Connecting, setting up and waiting, against a real nats-server (no worker fleet).

Covers the first connect (bounded, names the URL, explains a wrong token),
idempotent race-safe setup, ``NatsUnavailable`` when the server goes away, a
worker started before its server, and ``run()``'s fallbacks: ``JobTimeout``
when nobody answers, the quiet period when the registry names no host, the
timeout when a registered host stays silent. For the fallbacks a coroutine in
the test answers jobs in a worker's place (a real subscriber on the real
server): it is the client's waiting that is under test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from job_support import Bridge, base_env, job_request
from testkit import NatsServer, WorkerProcess, free_port, wait_for

from osapi import config
from osapi.domain.errors import JobTimeout, NatsUnavailable

pytestmark = pytest.mark.timeout(90)


def cfg_for(env: dict):
    return config.load(None, env)


def test_first_connect_fails_fast_and_names_the_url(tmp_path):
    port = free_port()
    cfg = cfg_for({"OSAPI_NATS_URL": f"nats://127.0.0.1:{port}", "OSAPI_SUPERVISE_STATE_DIR": str(tmp_path)})
    from osapi.job.connection import connect

    started = time.monotonic()
    with pytest.raises(NatsUnavailable) as info:
        asyncio.run(connect(cfg, "t", first_timeout=1.0))
    assert time.monotonic() - started < 5
    assert f"nats://127.0.0.1:{port}" in str(info.value)
    assert "nats-server running" in str(info.value)


def test_wrong_token_is_explained(nats_server, tmp_path):
    cfg = cfg_for({"OSAPI_NATS_URL": nats_server.url, "OSAPI_NATS_TOKEN": "wrong-token",
                   "OSAPI_SUPERVISE_STATE_DIR": str(tmp_path)})
    from osapi.job.connection import connect

    with pytest.raises(NatsUnavailable) as info:
        asyncio.run(connect(cfg, "t", first_timeout=1.5))
    assert "authorization" in str(info.value) and "nats.token" in str(info.value)


def test_a_worker_with_a_wrong_token_says_so(nats_server, tmp_path):
    """The server answers -ERR 'Authorization Violation' and then resets the socket: the worker's message
    names the token (as the API's does), not the reset that followed."""
    env = base_env(nats_server, tmp_path / "state", {"OSAPI_JOB_WORKER_HOSTNAME": "badtoken",
                                                      "OSAPI_NATS_TOKEN": "wrong-token"})
    worker = WorkerProcess(tmp_path, env).start()
    try:
        wait_for(lambda: "cannot connect to NATS" in worker.log(), 20, what="the worker's connect error")
        assert worker.alive()  # it keeps retrying: the token file may be fixed under a supervisor
    finally:
        code = worker.stop()
    text = worker.log()
    line = next(x for x in text.splitlines() if "cannot connect to NATS" in x)
    assert "authorization violation (wrong or missing token)" in line, text
    assert "nats.token" in line and "Connection reset" not in line and "nats-server running" not in line, text
    assert "wrong-token" not in text
    assert code == 0, text


def test_an_idle_worker_stops_on_sigterm_and_says_so_last(nats_server, tmp_path):
    """Its idle pulls are given up at once (no job is held by them); the last log line says it stopped."""
    env = base_env(nats_server, tmp_path / "state", {"OSAPI_JOB_WORKER_HOSTNAME": "idle"})
    worker = WorkerProcess(tmp_path, env, ("--grace", "20s")).start()
    try:
        wait_for(lambda: "worker idle ready" in worker.log(), 20, what="the worker ready")
        os.kill(worker.pid, signal.SIGTERM)
        code = worker.proc.wait(timeout=30)
    finally:
        worker.stop()
    lines = [x for x in worker.log().splitlines() if x.strip()]
    assert code == 0, lines
    assert "worker idle stopped" in lines[-1] and "exit_status=0" in lines[-1], lines[-3:]
    assert not any("WARNING" in x or "ERROR" in x for x in lines if "test-only operations" not in x), lines


def test_setup_is_idempotent_and_safe_when_run_at_once(nats_server, tmp_path):
    env = base_env(nats_server, tmp_path / "state", {"OSAPI_JOB_KV_TTL": "1h", "OSAPI_JOB_DLQ_MAX_MSGS": "50"})
    cfg = cfg_for(env)
    from osapi.job.client import JobClient
    from osapi.job.connection import connect

    async def main():
        conns = [await connect(cfg, f"t{i}") for i in range(4)]
        try:
            clients = [JobClient(nc, cfg) for nc in conns]
            await asyncio.gather(*(c.setup() for c in clients))
            await asyncio.gather(*(c.setup() for c in clients))
            js = conns[0].jetstream()
            jobs = await js.stream_info("KV_job-queue")
            dlq = await js.stream_info("JOBS_DLQ")
            stream = await js.stream_info("JOBS")
            consumer = await js.consumer_info("JOBS", "jobs-worker-any")
            # a changed setting is not applied to the existing stream (`osapi job setup --apply` does that)
            cfg2 = cfg_for({**env, "OSAPI_JOB_KV_TTL": "2h"})
            await JobClient(conns[0], cfg2).setup()
            updated = await js.stream_info("KV_job-queue")
            return jobs, dlq, stream, consumer, updated
        finally:
            for nc in conns:
                await nc.close()

    jobs, dlq, stream, consumer, updated = asyncio.run(main())
    assert jobs.config.max_age == 3600 and jobs.config.allow_direct
    assert dlq.config.max_msgs == 50
    assert dlq.config.subjects == ["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.>"]
    assert stream.config.subjects == ["jobs.>"] and stream.config.max_msgs == 10000
    assert consumer.config.filter_subject == "jobs.*._any" and consumer.config.max_deliver == 5
    assert updated.config.max_age == 3600


def test_requests_fail_with_nats_unavailable_when_the_server_is_gone(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    bridge = Bridge(base_env(server, tmp_path / "state"))
    try:
        server.stop()
        wait_for(lambda: not bridge.nc.is_connected, 10, what="the client noticing")
        with pytest.raises(NatsUnavailable) as info:
            bridge.call(bridge.client.list())
        assert server.url in str(info.value)
        with pytest.raises(NatsUnavailable):
            bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "_any"), 5, 1))
    finally:
        bridge.close()
        server.stop()


def test_worker_started_before_its_server_waits_and_then_serves(tmp_path):
    server = NatsServer(tmp_path / "nats")  # port chosen, not started yet
    # the token written into the URL as well: it must never show in the worker's log
    env = base_env(server, tmp_path / "state", {"OSAPI_JOB_WORKER_HOSTNAME": "early",
                                                 "OSAPI_NATS_URL": f"nats://{server.token}@127.0.0.1:{server.port}"})
    worker = WorkerProcess(tmp_path, env, ("--heartbeat", "1s")).start()
    bridge = None
    try:
        wait_for(lambda: "cannot connect to NATS" in worker.log(), 15, what="the worker reporting the missing server")
        assert worker.alive()
        server.start()
        bridge = Bridge(base_env(server, tmp_path / "state"))
        bridge.wait_workers(["early"])
        result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "early"), 20, 5))
        assert result["results"][0]["hostname"] == "early"
    finally:
        if bridge is not None:
            bridge.close()
        code = worker.stop()
        server.stop()
    log = worker.log()
    assert code == 0, log
    assert f"nats://127.0.0.1:{server.port}" in log and server.token not in log


def rotate_token(server: NatsServer, token: str) -> None:
    """Give the running server another token (SIGHUP reload): it closes the clients using the old one."""
    from osapi import natsd

    server.conf.write_text(natsd.render_config(host=server.host, port=server.port, store_dir=server.store_dir,
                                               token=token))
    os.kill(server.proc.pid, signal.SIGHUP)


def test_the_api_bridge_connects_again_after_nats_closed_the_connection(nats_server, tmp_path):
    """nats-py closes a connection for good on an Authorization Violation; the API must not stay at 503."""
    from osapi.api.bridge import NatsBridge

    bridge = NatsBridge(cfg_for(base_env(nats_server, tmp_path / "state"))).start()
    try:
        wait_for(lambda: bridge.connected, 15, what="the bridge connected")
        first = bridge.nc
        rotate_token(nats_server, "rotated-" + nats_server.token)
        wait_for(lambda: first.is_closed, 15, what="NATS closing the connection")
        assert not bridge.connected
        rotate_token(nats_server, nats_server.token)  # the operator puts the right token back
        wait_for(lambda: bridge.connected and bridge.nc is not first, 20, what="the bridge connected again")
        assert bridge.call(lambda client: client.list(), 5)["total_items"] == 0
    finally:
        bridge.close()


def test_a_worker_whose_connection_nats_closed_exits_1_for_its_supervisor(nats_server, tmp_path):
    env = base_env(nats_server, tmp_path / "state", {"OSAPI_JOB_WORKER_HOSTNAME": "closing"})
    worker = WorkerProcess(tmp_path, env, ("--heartbeat", "1s")).start()
    try:
        wait_for(lambda: "worker closing ready" in worker.log(), 20, what="the worker ready")
        rotate_token(nats_server, "rotated-" + nats_server.token)
        code = worker.proc.wait(timeout=30)
    finally:
        worker.stop()
    text = worker.log()
    assert code == 1, text
    assert "NATS closed the connection for good; exiting with status 1" in text


@pytest.mark.parametrize("argv, message", [
    (["--heartbeat", "500ms"], "--heartbeat must be at least 1s"),
    (["--grace", "soon"], "--grace must be a duration"),
])
def test_worker_command_refuses_bad_flags(cli, argv, message):
    result = cli("job", "worker", "start", *argv)
    assert result.status == 2 and message in result.stderr


@pytest.mark.parametrize("env, message", [
    ({"OSAPI_JOB_WORKER_MAX_JOBS": "0"}, "job.worker.max_jobs"),
    ({"OSAPI_JOB_WORKER_HOSTNAME": "_reserved"}, "'_reserved' is not a valid hostname"),
    ({"OSAPI_JOB_WORKER_LABELS": "group=web..dev"}, "job.worker.labels"),
])
def test_worker_command_refuses_bad_configuration(cli, env, message):
    result = cli("job", "worker", "start", env=env)
    assert result.status == 2 and message in result.stderr


# ---------------------------------------------------------------- run() fallbacks


async def _answer_as(bridge, hostname: str, subject: str):
    """A stand-in worker for ``hostname``: answers every job published on ``subject``."""
    store = bridge.store

    async def on_job(msg):
        job_id = msg.data.decode()
        await store.put_response(job_id, hostname, {"status": "ok", "data": {"hostname": hostname}, "error": None})

    return await bridge.nc.subscribe(subject, cb=on_job)


def test_run_times_out_when_no_worker_answers(nats_server, tmp_path):
    bridge = Bridge(base_env(nats_server, tmp_path / "state"))
    try:
        started = time.monotonic()
        with pytest.raises(JobTimeout) as info:
            bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "_any"), 1.0, 1.0))
        assert 0.9 <= time.monotonic() - started < 10
        job = bridge.call(bridge.client.get(info.value.job_id))
        assert job["status"] == "submitted" and "1s" in str(info.value)
    finally:
        bridge.close()


def test_broadcast_with_an_empty_registry_ends_after_the_quiet_period(nats_server, tmp_path):
    bridge = Bridge(base_env(nats_server, tmp_path / "state"))
    try:
        sub = bridge.call(_answer_as(bridge, "ghost", "jobs.query._all"))
        started = time.monotonic()
        result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "_all"), 20.0, 0.5))
        elapsed = time.monotonic() - started
        bridge.call(sub.unsubscribe())
        assert result["results"] == [{"hostname": "ghost"}]
        assert 0.4 <= elapsed < 10  # the quiet period decided, not the 20 s timeout
    finally:
        bridge.close()


def test_broadcast_waits_for_a_registered_host_until_the_timeout(nats_server, tmp_path):
    bridge = Bridge(base_env(nats_server, tmp_path / "state"))
    try:
        entry = {"hostname": "silent", "labels": {}, "version": "0", "started_at": "x", "last_seen": "x"}
        bridge.call(bridge.client.registry.beat("silent.1", entry, 30))
        sub = bridge.call(_answer_as(bridge, "ghost", "jobs.query._all"))
        started = time.monotonic()
        result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "_all"), 2.0, 0.3))
        elapsed = time.monotonic() - started
        bridge.call(sub.unsubscribe())
        # "silent" is live in the registry: it was waited for, then reported (and stored) as no_response
        assert result["results"] == [
            {"hostname": "ghost"},
            {"hostname": "silent", "status": "no_response", "error": "no answer within 2s"},
        ]
        assert elapsed >= 1.9
        job = bridge.call(bridge.client.get(result["job_id"]))
        assert job["status"] == "failed"  # only "silent" has events: the stand-in writes none
        assert job["worker_states"]["silent"]["status"] == "no_response"
        assert job["hosts"] == {"silent": {"state": "no_response"}}
        assert job["responses"]["silent"] == {"status": "no_response", "data": None, "error": "no answer within 2s"}
        # once it leaves the registry, the quiet period ends the wait
        bridge.call(bridge.client.registry.remove("silent.1"))
        sub = bridge.call(_answer_as(bridge, "ghost", "jobs.query._all"))
        started = time.monotonic()
        result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "_all"), 20.0, 0.3))
        bridge.call(sub.unsubscribe())
        assert result["results"] == [{"hostname": "ghost"}] and time.monotonic() - started < 10
    finally:
        bridge.close()


def test_setup_keeps_objects_whose_settings_cannot_change_in_place(nats_server, tmp_path, caplog):
    """An operator's (or an older version's) stream and consumer are used as they are, with a warning."""
    cfg = cfg_for(base_env(nats_server, tmp_path / "state"))
    from nats.js import api

    from osapi.job.client import JobClient
    from osapi.job.connection import connect
    from osapi.job.store import Store

    async def main():
        nc = await connect(cfg, "t")
        try:
            js = nc.jetstream()
            await js.add_stream(name="JOBS", subjects=["jobs.>"], storage=api.StorageType.MEMORY)
            await js.add_consumer("JOBS", api.ConsumerConfig(name="jobs-worker-any", durable_name="jobs-worker-any",
                                                             filter_subject="jobs.*._any", max_waiting=16))
            await JobClient(nc, cfg).setup()
            await Store(nc, cfg).setup(update_consumers=True)  # what a worker does
            return await js.stream_info("JOBS"), await js.consumer_info("JOBS", "jobs-worker-any")
        finally:
            await nc.close()

    with caplog.at_level("WARNING", logger="osapi.job.setup"):
        stream, consumer = asyncio.run(main())
    assert stream.config.storage == api.StorageType.MEMORY and consumer.config.max_waiting == 16
    assert consumer.config.max_deliver == -1  # an update is all or nothing: the consumer stays as it was
    text = caplog.text
    # an existing stream is never changed: one warning per differing setting
    assert ("stream JOBS: storage is memory in NATS but file in this process's configuration "
            "(job.stream.storage); keeping memory") in text
    assert "stream JOBS: max_age is unlimited in NATS but 1d in this process's configuration" in text
    assert "consumer jobs-worker-any on JOBS exists with settings that cannot change in place" in text


def test_a_server_that_stops_answering_is_left_for_another_member_of_nats_url(tmp_path):
    """A member that vanished without closing the socket (SIGSTOP: as a dead or cut-off machine)
    is noticed by unanswered pings and the connection moves to the next URL of ``nats.url``."""
    first = NatsServer(tmp_path / "n1").start()
    second = NatsServer(tmp_path / "n2", token=first.token).start()
    by_port = {first.port: first, second.port: second}
    frozen = None
    try:
        cfg = cfg_for({"OSAPI_NATS_URL": f"{first.url},{second.url}", "OSAPI_NATS_TOKEN": first.token,
                       "OSAPI_SUPERVISE_STATE_DIR": str(tmp_path)})
        from osapi.job.connection import close, connect

        async def scenario():
            nonlocal frozen
            nc = await connect(cfg, "t")
            try:
                frozen = by_port[nc.connected_url.port]
                os.kill(frozen.proc.pid, signal.SIGSTOP)
                deadline = time.monotonic() + 30  # a bound, not a timing: nats-py's default waits 4 minutes
                while time.monotonic() < deadline:
                    if nc.is_connected and nc.connected_url.port != frozen.port:
                        break
                    await asyncio.sleep(0.2)
                assert nc.is_connected and nc.connected_url.port != frozen.port
                await nc.publish("still.working", b"x")
                await nc.flush(timeout=5)
            finally:
                await close(nc)

        asyncio.run(scenario())
    finally:
        if frozen is not None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        first.stop()
        second.stop()
