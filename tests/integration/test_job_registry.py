"""The worker registry against a real nats-server: entries the server kept past their TTL are gone for readers.

After an unclean nats-server stop, heartbeats came back from its store minutes
old and never expired (the server did not apply their ``Nats-TTL`` again). The
test writes such entries itself -- an old ``last_seen``, a short ``ttl``, no
per-message TTL, straight into the bucket -- next to a real, live worker, and
shows that every reader leaves them out (``GET /jobs/workers``, broadcast
expectations, the "is a worker live for this hostname" check) and removes them.
"""

from __future__ import annotations

import json

import pytest
from job_support import Bridge, base_env, worker_stack, job_request
from testkit import wait_for

from osapi import __version__
from osapi.domain.errors import JobTimeout, NoLiveWorker
from osapi.job.registry import is_stale

pytestmark = pytest.mark.timeout(90)

OLD = "2020-01-01T00:00:00.000Z"  # as a resurrected entry reads: its last heartbeat long ago


def ghost(hostname: str, instance: str, labels: dict | None = None) -> dict:
    return {"hostname": hostname, "labels": labels or {}, "version": __version__, "started_at": OLD,
            "last_seen": OLD, "ttl": 1, "pid": 4242, "instance": instance}


@pytest.fixture
def stack(nats_server, tmp_path):
    fleet = worker_stack(tmp_path / "fleet", nats=nats_server).start()
    bridge = None
    try:
        fleet.start_worker("live", "group=web")
        bridge = Bridge(base_env(nats_server, tmp_path / "state"))
        bridge.wait_workers(["live"])
        yield fleet, bridge
    finally:
        if bridge is not None:
            bridge.close()
        assert set(fleet.stop_workers().values()) == {0}, fleet.logs()
        fleet.stop()


def test_entries_past_their_ttl_are_ignored_and_removed(stack):
    fleet, bridge = stack
    store, registry = bridge.store, bridge.client.registry
    stream, prefix = store.stream_of("registry"), store.subject_of("registry", "")
    written = {"ghost.0badc0ffee01": ghost("ghost", "0badc0ffee01", {"group": "web"}),
               "live.0badc0ffee02": ghost("live", "0badc0ffee02", {"group": "web"})}  # a dead process of a live host

    async def write():
        for key, entry in written.items():  # no Nats-TTL: the server will never drop them by itself
            await store.js.publish(prefix + key, json.dumps(entry).encode())

    async def raw_stale():
        beats, now = await registry._heartbeats(), await registry._server_now_ns()
        return {b.subject[len(prefix):] for b in beats
                if b.entry is not None and is_stale(b.entry, b.stored_ns, now)}

    def keys() -> set[str]:
        found, _ = bridge.call(store.subjects(stream, f"{prefix}>"))
        return {s[len(prefix):] for s in found}

    bridge.call(write())
    assert set(written) <= keys()
    # their TTL (1 s) passes on the server's clock; nothing has read them through the registry since
    wait_for(lambda: bridge.call(raw_stale()) == set(written), 15, what="the written entries' TTL passing")
    assert set(written) <= keys()  # still stored: the server keeps them

    # broadcast expectations: the first reader leaves them out ...
    result = bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "group:web"), 20, 20))
    assert [r["hostname"] for r in result["results"]] == ["live"], result
    assert bridge.call(store.get_job(result["job_id"]))["expected_hosts"] == ["live"]
    # ... and removes them from the bucket (best effort, done by that read)
    assert not set(written) & keys()
    assert any(k.startswith("live.") for k in keys())  # the live worker's own entry stays

    # GET /jobs/workers: the live host once, its dead process not counted
    listing = bridge.call(bridge.client.workers())
    assert [(w["hostname"], w["processes"]) for w in listing["workers"]] == [("live", 1)]
    assert listing["total"] == 1

    # written again (as if the server restored them once more): a hostname target has no live worker
    bridge.call(write())
    wait_for(lambda: bridge.call(raw_stale()) == set(written), 15, what="the written entries' TTL passing")
    with pytest.raises(JobTimeout) as info:
        bridge.call(bridge.client.run(job_request("system.hostname.get", {}, "ghost"), 20, 0.5))
    assert isinstance(info.value, NoLiveWorker)  # the API's 404
    assert "'ghost' names no registered worker host or label" in str(info.value)
    assert not set(written) & keys()
    assert "removing the stale worker registry entry" not in fleet.logs()  # readers do it, not workers


def test_a_live_worker_is_never_taken_for_stale(stack):
    """Its heartbeats are younger than its TTL on the server's clock, whatever its own clock says."""
    fleet, bridge = stack
    registry = bridge.client.registry

    async def judged():
        beats, now = await registry._heartbeats(), await registry._server_now_ns()
        return [(b.entry["hostname"], is_stale(b.entry, b.stored_ns, now)) for b in beats if b.entry]

    for _ in range(3):
        assert bridge.call(judged()) == [("live", False)]
    # a worker whose clock is years behind writes an old last_seen: its heartbeat is fresh all the same
    skewed = {**ghost("skewed", "0badc0ffee03"), "ttl": 60}
    key = "skewed.0badc0ffee03"
    bridge.call(registry.beat(key, skewed, 60))
    try:
        assert sorted(bridge.call(judged())) == [("live", False), ("skewed", False)]
        listing = bridge.call(bridge.client.workers())
        assert [(w["hostname"], w["last_seen"]) for w in listing["workers"]][1] == ("skewed", OLD)
    finally:
        bridge.call(registry.remove(key))
    assert [w["hostname"] for w in bridge.call(bridge.client.workers())["workers"]] == ["live"]


def test_enrolled_labels_win_and_an_unchanged_fleet_bucket_is_not_read_again(stack):
    """Each registry read (every broadcast) used to read every enrolled host's entry; now the fleet
    bucket is read only when its last sequence moved, and the enrolled labels still win."""
    from osapi.fleet import hosts

    _, bridge = stack
    store, registry = bridge.store, bridge.client.registry
    stream = store.stream_of("fleet")

    def labels() -> dict:
        return {e["hostname"]: e["labels"] for e in bridge.call(registry.entries())}

    assert labels() == {"live": {"group": "web"}}
    bridge.call(hosts.enroll(store, bridge.cfg, "live", {"group": "db"}))
    assert labels() == {"live": {"group": "db"}}  # the enrolled labels, not the worker's own

    subjects = [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
    subs = [bridge.call(bridge.client.nc.subscribe(s)) for s in subjects]  # copies of every fleet bucket read
    try:
        for _ in range(3):
            assert labels() == {"live": {"group": "db"}}
            assert bridge.call(bridge.client.workers())["workers"][0]["labels"] == {"group": "db"}
        bridge.call(bridge.client.nc.flush())
        assert sum(s.pending_msgs for s in subs) == 0
        # a change is seen at the next read: a rotation with new labels, then a revocation
        bridge.call(hosts.enroll(store, bridge.cfg, "live", {"group": "ops"}, rotate=True))
        assert labels() == {"live": {"group": "ops"}}
        bridge.call(bridge.client.nc.flush())
        assert sum(s.pending_msgs for s in subs) > 0
        bridge.call(hosts.revoke(store, "live"))
        bridge.wait_workers(["live"])  # the revocation removed its entry; its next heartbeat brings it back
        assert labels() == {"live": {"group": "web"}}
    finally:
        for sub in subs:
            bridge.call(sub.unsubscribe())
