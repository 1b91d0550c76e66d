"""An enrolled host's credentials, enforced by nats-server itself (README.md, "Fleet hosts").

A real nats-server configured as ``osapi nats server start`` configures it (users
from osapi's users file), the control plane connected with the NATS token, hosts
enrolled through ``osapi.fleet.hosts`` and rendered by a ``Renderer``; then RAW
nats-py connections with a host's user and password (nothing of osapi between
them and the server): every action a worker needs works, every refused action is
refused by the server, and nothing it tried to change changed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import nats.errors
import pytest
from fleet_support import FleetNats, RawHost
from job_support import Bridge, base_env
from testkit import wait_for

from osapi.fleet import hosts
from osapi.job import status as st
from osapi.job.store import dumps

WAIT = 1.0  # seconds a refused request may wait for an answer that never comes (the server says why at once)


@pytest.fixture
def fleet(tmp_path):
    server = FleetNats(tmp_path / "nats").start()
    bridge = None
    try:
        bridge = Bridge(base_env(server, tmp_path / "state"))
        yield server, bridge
    finally:
        if bridge is not None:
            bridge.close()
        server.stop()


def enroll(server, bridge, hostname: str, labels: dict | None = None, rotate: bool = False) -> dict:
    entry = bridge.call(hosts.enroll(bridge.store, bridge.cfg, hostname, labels, rotate))
    bridge.call(server.renderer().once(bridge.store))
    return entry


def connect(server, bridge, entry: dict, reconnect: bool = False) -> RawHost:
    """Connect as ``entry`` once the server applied its reload (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return bridge.call(RawHost().connect(server.url, entry["user"], entry["password"], reconnect))
        except Exception:  # noqa: BLE001 - the reload is not applied yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def refused(bridge, host: RawHost, fragment: str, action) -> None:
    """``action`` (a coroutine function of the raw connection) is refused by the server, naming ``fragment``."""
    async def run():
        try:
            await asyncio.wait_for(action(host.nc), WAIT)
        except Exception:  # noqa: BLE001 - a refused request times out or errors: the server's error says why
            pass
        await host.nc.flush(timeout=2)

    bridge.call(run())
    wait_for(lambda: host.refused(fragment), timeout=10, what=f"a permissions violation naming {fragment} (errors: {host.errors})")


def submit(bridge, target: str) -> str:
    async def go():
        job = await bridge.client.create(bridge.client.prepare({"type": "system.hostname.get", "data": {}}, target))
        return job["job_id"]

    return bridge.call(go())


async def pull(nc, consumer: str, stream: str = "JOBS"):
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(consumer, stream)
    msgs = await sub.fetch(1, timeout=5)
    return msgs[0]


def test_a_host_can_do_what_its_worker_does_and_nothing_else(fleet):
    server, bridge = fleet
    a = enroll(server, bridge, "a", {"group": "web.dev"})
    ab = enroll(server, bridge, "a.b")
    host = connect(server, bridge, a)
    other = connect(server, bridge, ab)
    store = bridge.store
    try:
        # ---- allowed: take a job from _any and from its own consumer, read it, answer it, ack it
        any_job = submit(bridge, "_any")
        msg = bridge.call(pull(host.nc, "jobs-worker-any"))
        assert msg.data.decode() == any_job
        label_job = submit(bridge, "group:web")
        own = bridge.call(pull(host.nc, bridge.store.names.host_consumer("a")))
        assert own.data.decode() == label_job

        async def work(nc):
            js = nc.jetstream()
            body = await js.get_msg("KV_job-queue", subject=f"$KV.job-queue.jobs.{any_job}", direct=True)
            # a miss of a direct get is confirmed by the stream leader (Store._job_from_leader, still_stored)
            led = await js.get_msg("KV_job-queue", subject=f"$KV.job-queue.jobs.{any_job}")
            assert json.loads(led.data)["id"] == any_job
            nanos = time.time_ns()
            await js.publish(f"$KV.job-queue.status.{any_job}.started.a.{nanos}", b"{}")
            await js.publish(f"$KV.job-responses.{any_job}.a", dumps({"status": "ok", "hostname": "a"}))
            await js.publish("$KV.job-queue-workers.a.inst1", dumps({"hostname": "a", "labels": {}}), msg_ttl=15)
            await msg.ack_sync()
            await own.ack_sync()
            # the job-body read of a worker's store: one batch direct get with the keys in the body
            reply = await nc.request("$JS.API.DIRECT.GET.KV_job-queue",
                                     json.dumps({"multi_last": [f"$KV.job-queue.jobs.{any_job}"], "batch": 10}).encode(),
                                     timeout=5)
            return json.loads(body.data), reply

        job_body, _ = bridge.call(work(host.nc))
        assert job_body["id"] == any_job
        assert "started" in {e.event for e in bridge.events(any_job) if e.host == "a"}
        assert bridge.call(store.response(any_job, "a"))["status"] == "ok"

        # probes between worker instances: subscribe to one, answer a request from another host
        async def probe():
            async def answer(m):
                await m.respond(b"yes")

            await host.nc.subscribe("_osapi.worker.inst1.running", cb=answer)
            await host.nc.flush()
            for attempt in range(5):  # bounded: a users reload (SIGHUP) of the enrollments above may be in flight
                try:
                    return await other.nc.request("_osapi.worker.inst1.running", b"job", timeout=5)
                except nats.errors.NoRespondersError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)

        assert bridge.call(probe()).data == b"yes"
        assert not host.errors and not other.errors

        # ---- refused by the server
        job = submit(bridge, "a")  # a job for a, to try other hosts' writes on
        nanos = time.time_ns()
        cases = [
            ("jobs.query._any", lambda nc: nc.jetstream().publish("jobs.query._any", uuid.uuid4().hex.encode())),
            ("$KV.job-queue.jobs.", lambda nc: nc.jetstream().publish(f"$KV.job-queue.jobs.{uuid.uuid4()}", b"{}")),
            # another hostname (a must not touch a.b, nor the reverse: below)
            (f"status.{job}.completed.a.b.", lambda nc: nc.jetstream().publish(
                f"$KV.job-queue.status.{job}.completed.a.b.{nanos}", b"{}")),
            (f"$KV.job-responses.{job}.a.b", lambda nc: nc.jetstream().publish(f"$KV.job-responses.{job}.a.b", b"{}")),
            ("$KV.job-queue-workers.a.b.x", lambda nc: nc.jetstream().publish("$KV.job-queue-workers.a.b.x", b"{}")),
            ("$KV.job-responses.", lambda nc: nc.jetstream().publish(f"$KV.job-responses.{job}.z", b"{}")),
            # other hosts' responses, the fleet bucket
            ("$JS.API.DIRECT.GET.KV_job-responses", lambda nc: nc.jetstream().get_msg(
                "KV_job-responses", subject=f"$KV.job-responses.{any_job}.a", direct=True)),
            ("$JS.API.DIRECT.GET.KV_job-queue-fleet", lambda nc: nc.jetstream().get_msg(
                "KV_job-queue-fleet", subject="$KV.job-queue-fleet.a", direct=True)),
            ("$JS.API.STREAM.MSG.GET.KV_job-responses", lambda nc: nc.jetstream().get_msg(
                "KV_job-responses", subject=f"$KV.job-responses.{any_job}.a")),
            # streams, consumers, buckets, keys
            ("$JS.API.STREAM.CREATE.EVIL", lambda nc: nc.jetstream().add_stream(name="EVIL", subjects=["evil.>"])),
            ("$JS.API.STREAM.UPDATE.JOBS", lambda nc: nc.request("$JS.API.STREAM.UPDATE.JOBS", b"{}", timeout=3)),
            ("$JS.API.STREAM.DELETE.JOBS", lambda nc: nc.jetstream().delete_stream("JOBS")),
            ("$JS.API.STREAM.PURGE.KV_job-queue", lambda nc: nc.jetstream().purge_stream("KV_job-queue")),
            ("$JS.API.STREAM.MSG.DELETE.KV_job-queue", lambda nc: nc.jetstream().delete_msg("KV_job-queue", 1)),
            ("$JS.API.CONSUMER.DURABLE.CREATE.JOBS", lambda nc: nc.jetstream().add_consumer("JOBS", durable_name="evil")),
            ("$JS.API.CONSUMER.DELETE.JOBS", lambda nc: nc.jetstream().delete_consumer("JOBS", "jobs-worker-any")),
            # another host's consumer
            ("$JS.API.CONSUMER.MSG.NEXT.JOBS." + bridge.store.names.host_consumer("a.b"),
             lambda nc: pull(nc, bridge.store.names.host_consumer("a.b"))),
        ]
        for fragment, action in cases:
            refused(bridge, host, fragment, action)

        # the reverse: a.b cannot write under a
        refused(bridge, other, f"status.{job}.completed.a.", lambda nc: nc.jetstream().publish(
            f"$KV.job-queue.status.{job}.completed.a.{nanos}", b"{}"))
        refused(bridge, other, f"$KV.job-responses.{job}.a", lambda nc: nc.jetstream().publish(
            f"$KV.job-responses.{job}.a", b"{}"))
        refused(bridge, other, "$KV.job-queue-workers.a.y", lambda nc: nc.jetstream().publish(
            "$KV.job-queue-workers.a.y", b"{}"))

        # subscriptions: everything, another host's inbox
        async def sub_all(nc):
            await nc.subscribe(">")
            await nc.flush()
        refused(bridge, host, "Subscription to \">\"", sub_all)

        async def sub_inbox(nc):
            await nc.subscribe(f"_INBOX.{ab['user']}.>")
            await nc.flush()
        refused(bridge, host, f"_INBOX.{ab['user']}", sub_inbox)

        # nothing changed: no stream, consumer or foreign key appeared, the streams are whole
        assert st.COMPLETED not in {e.event for e in bridge.events(job)}
        assert bridge.call(store.response(job, "a.b")) is None
        names = bridge.call(_stream_names(bridge))
        assert "EVIL" not in names and "JOBS" in names
        assert bridge.call(bridge.store.js.consumer_info("JOBS", "jobs-worker-any")).name == "jobs-worker-any"
        assert bridge.call(store.get_job(any_job)) is not None
    finally:
        bridge.call(host.close())
        bridge.call(other.close())


async def _stream_names(bridge) -> list[str]:
    return [s.config.name for s in await bridge.store.js.streams_info()]


def test_rotate_and_revoke(fleet):
    server, bridge = fleet
    first = enroll(server, bridge, "web1")
    old = connect(server, bridge, first)
    with pytest.raises(hosts.AlreadyEnrolled):
        bridge.call(hosts.enroll(bridge.store, bridge.cfg, "web1", None))
    second = enroll(server, bridge, "web1", rotate=True)
    assert second["password"] != first["password"]
    # the old connection is dropped by the server, the old password refused, the new one works
    wait_for(lambda: old.closed.is_set(), timeout=10, what="the old credentials' connection dropped")
    with pytest.raises(Exception):
        bridge.call(RawHost().connect(server.url, first["user"], first["password"]))
    new = connect(server, bridge, second)
    bridge.call(hosts.revoke(bridge.store, "web1"))
    bridge.call(server.renderer().once(bridge.store))
    wait_for(lambda: new.closed.is_set(), timeout=10, what="the revoked host's connection dropped")
    with pytest.raises(Exception):
        bridge.call(RawHost().connect(server.url, second["user"], second["password"]))
    with pytest.raises(hosts.NotEnrolled):
        bridge.call(hosts.revoke(bridge.store, "web1"))


def _other(password: str) -> str:
    """``password`` with its last character changed."""
    return password[:-1] + ("1" if password[-1] != "1" else "2")


def test_the_server_checks_the_stored_bcrypt_hashes_and_no_password_is_stored(fleet):
    server, bridge = fleet
    entry = enroll(server, bridge, "web1")
    stored = json.loads(bridge.call(bridge.store.kv("fleet").get("web1")).value)
    assert set(stored) == {"hostname", "labels", "enrolled_at", "user", "password_hash"}
    assert stored["password_hash"].startswith("$2b$04$") and entry["password"] not in json.dumps(stored)
    host = connect(server, bridge, entry)  # raw nats-py with the bundle's password, checked against the hash
    try:
        for wrong in (_other(entry["password"]), stored["password_hash"], ""):
            with pytest.raises(Exception, match="(?i)authorization"):
                bridge.call(RawHost().connect(server.url, entry["user"], wrong))
        # the control plane's user: the token is its password, kept as a hash too
        bridge.call(bridge.call(RawHost().connect(server.url, "osapi", server.token)).close())
        with pytest.raises(Exception, match="(?i)authorization"):
            bridge.call(RawHost().connect(server.url, "osapi", _other(server.token)))
        written = "".join(path.read_text() for path in server.workdir.glob("nats-users.*"))
        assert stored["password_hash"] in written and server.token not in written and entry["password"] not in written
        log = server.log.read_text()
        assert "Reloaded server configuration" in log and "[WRN]" not in log, log
    finally:
        bridge.call(host.close())
