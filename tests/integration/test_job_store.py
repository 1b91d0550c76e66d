"""The job store and client without workers, against a real nats-server.

Request counts come from the connection's own ``out_msgs`` statistic: the
test's ``Bridge`` connection carries nothing but the calls under test, so the
difference is exactly the number of messages (requests) a call sent.
Worker results are written here by the test in a worker's place (the same
``Store`` calls a worker makes): it is the reading side that is under test.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from job_support import Bridge, base_env

from osapi.worker import deadletter
from osapi.job import status as st
from osapi.job.client import JobClient
from osapi.domain.errors import JobStoreFull

pytestmark = pytest.mark.timeout(120)

HOSTNAME = {"type": "system.hostname.get", "data": {}}


def sent(bridge, coro):
    """Run ``coro`` on the bridge; return (its result, the messages it sent)."""
    before = bridge.nc.stats["out_msgs"]
    result = bridge.call(coro)
    return result, bridge.nc.stats["out_msgs"] - before


def fresh_client(bridge) -> JobClient:
    """A client with empty caches on the same connection: another API process, as it were."""
    return JobClient(bridge.nc, bridge.cfg)


def create_many(bridge, count: int, target: str = "w1") -> list[str]:
    async def create():
        return await asyncio.gather(*(bridge.client.create(JobClient.prepare(HOSTNAME, target)) for _ in range(count)))

    return [c["job_id"] for c in bridge.call(create())]


def answer_all(bridge, ids: list[str], host: str = "w1") -> None:
    """What a worker writes for each job: acknowledged, started, its response, completed."""
    store = bridge.store

    async def answer(job_id):
        await store.add_event(job_id, st.ACKNOWLEDGED, host, delivery=1, instance="x")
        await store.add_event(job_id, st.STARTED, host, delivery=1)
        await store.put_response(job_id, host, {"status": "ok", "data": {"hostname": host}, "error": None})
        await store.add_event(job_id, st.COMPLETED, host)

    async def run():
        for start in range(0, len(ids), 50):
            await asyncio.gather(*(answer(i) for i in ids[start:start + 50]))

    bridge.call(run())


# ---------------------------------------------------------------- 1.2 cancelled submissions


def test_a_cancelled_submission_is_marked_failed_and_not_published(bridge):
    """The API gives up on a call (cancels it, answering 503) in the middle of the submission: no half-stored job.

    The caller was answered an error, so the job must never run: it is not published, and it is marked failed.
    """
    store = bridge.store
    original = store.add_event

    async def scenario():
        entered, gate = asyncio.Event(), asyncio.Event()

        async def slow_add_event(*args, **kwargs):
            entered.set()
            await gate.wait()
            return await original(*args, **kwargs)

        store.add_event = slow_add_event
        try:
            task = asyncio.ensure_future(bridge.client.create(JobClient.prepare(HOSTNAME, "w1")))
            await asyncio.wait_for(entered.wait(), 10)  # the job body is stored; its event is next
            task.cancel()
            await asyncio.sleep(0.05)
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            store.add_event = original

    bridge.call(scenario())

    (job_id,) = bridge.call(store.all_job_ids())
    job = bridge.wait_status(job_id, "failed", timeout=10)
    assert job["error"] == "submission failed: the caller stopped waiting and was answered 503"
    assert [e["event"] for e in job["timeline"]] == ["submitted", "failed"]
    assert job["worker_states"] == {st.SUBMISSION_HOST: {"status": "failed", "error": job["error"], "duration": None}}
    assert bridge.call(store.js.stream_info(store.names.stream)).state.messages == 0  # never published


# ---------------------------------------------------------------- 1.8 a full store


def test_a_full_job_store_is_its_own_error_and_leaves_no_half_job(nats_server, tmp_path):
    from osapi.api.errors import from_exception

    bridge = Bridge(base_env(nats_server, tmp_path / "state", {"OSAPI_JOB_KV_MAX_BYTES": "20000"}))
    try:
        error = None
        for _ in range(500):
            try:
                bridge.call(bridge.client.create(JobClient.prepare(HOSTNAME, "w1")))
            except JobStoreFull as exc:
                error = exc
                break
        assert error is not None, "500 jobs fitted in 20000 bytes"
        assert "maximum bytes exceeded" in str(error) and "job.kv.max_bytes = 20000" in str(error)
        api = from_exception(error)
        assert (api.status, api.error) == (503, "job store full (job.kv.max_bytes)")
        assert "job.kv.max_bytes = 20000" in api.details and "store full" not in api.details  # said once
        # the refused job is not half there: every stored job has its submitted event and its notification
        bridge.call(bridge.client.settle(10))  # the failed submission's cleanup runs in the background
        store = bridge.store
        ids = bridge.call(store.all_job_ids())
        events = bridge.call(store.all_events())
        assert sorted(events) == sorted(ids)
        assert bridge.call(store.js.stream_info(store.names.stream)).state.messages == len(ids)
    finally:
        bridge.close()


# ---------------------------------------------------------------- 4.1 - 4.3 request counts


def test_statistics_and_status_filters_do_not_reread_bodies_beyond_the_cache(bridge, monkeypatch):
    from osapi.job import store as store_module

    monkeypatch.setattr(store_module, "CACHE_SIZE", 20)  # far fewer bodies kept than jobs stored
    ids = create_many(bridge, 300)
    answer_all(bridge, ids[:100])
    client = fresh_client(bridge)
    first, _ = sent(bridge, client.stats())
    assert first["total_jobs"] == 300
    assert first["status_counts"]["completed"] == 100 and first["status_counts"]["submitted"] == 200
    assert first["operation_counts"] == {"system.hostname.get": 300}
    again, requests = sent(bridge, client.stats())
    assert again == first
    assert requests <= 5, f"stats() sent {requests} requests with every job summarised already"
    listed, requests = sent(bridge, client.list(status="completed", limit=10))
    assert listed["total_items"] == 100 and [j["id"] for j in listed["items"]] == list(reversed(ids[:100]))[:10]
    assert requests <= 10, f"list(status=…) sent {requests} requests"


def test_a_large_page_is_read_in_a_few_batch_requests(bridge):
    ids = create_many(bridge, 300)
    answer_all(bridge, ids)  # 4 events a job: 1200 results, more than one batch request returns
    page, requests = sent(bridge, fresh_client(bridge).list(limit=300))
    assert [j["id"] for j in page["items"]] == list(reversed(ids))
    assert all(j["status"] == "completed" and j["result"] == {"hostname": "w1"} for j in page["items"])
    assert requests <= 12, f"a page of 300 jobs sent {requests} requests"
    # the same objects as one read per job
    assert page["items"][:5] == [bridge.call(bridge.client.get(i)) for i in list(reversed(ids))[:5]]


def test_the_registry_is_read_in_one_request(bridge):
    registry = bridge.client.registry
    entry = {"labels": {}, "version": "0", "started_at": "x", "last_seen": "x"}

    async def beat_all():
        await asyncio.gather(*(registry.beat(f"h{i:02d}.{i}", {**entry, "hostname": f"h{i:02d}"}, 30)
                               for i in range(40)))

    bridge.call(beat_all())
    listing, requests = sent(bridge, bridge.client.workers())
    assert listing["total"] == 40 and [w["hostname"] for w in listing["workers"]] == [f"h{i:02d}" for i in range(40)]
    assert requests == 2  # one batch get of every entry, one stream info for the server's clock (at once)


# ---------------------------------------------------------------- 1.6 dead letters of other consumers


def test_dead_letters_of_consumers_osapi_does_not_own_are_ignored(bridge):
    store = bridge.store
    job_id = bridge.call(bridge.client.create(JobClient.prepare(HOSTNAME, "_all")))["job_id"]
    seq = bridge.call(store.js.get_last_msg(store.names.stream, "jobs.query._all")).seq

    def advisory(consumer: str) -> bytes:
        return json.dumps({"stream_seq": seq, "consumer": consumer, "deliveries": 1}).encode()

    for foreign in ("audit-tap", "jobs-worker-hostile", "jobs-worker-dlq"):
        assert bridge.call(deadletter.handle(store, advisory(foreign))) is None
    assert [e.event for e in bridge.events(job_id)] == ["submitted"]
    # an osapi host consumer's advisory is handled (the control)
    assert bridge.call(deadletter.handle(store, advisory("jobs-worker-host-ghost"))) == job_id
    assert "failed" in [e.event for e in bridge.events(job_id)]


# ---------------------------------------------------------------- consumer settings belong to the workers


def test_the_api_creates_missing_consumers_but_only_workers_update_them(nats_server, tmp_path):
    from osapi import config
    from osapi.job.connection import close, connect
    from osapi.job.setup import HOST_CONSUMER_INACTIVE, ensure_consumer, host_consumer_config
    from osapi.job.store import Store

    env = base_env(nats_server, tmp_path / "state")
    api_cfg = config.load(None, env)
    changed = config.load(None, {**env, "OSAPI_JOB_CONSUMER_MAX_DELIVER": "3"})

    async def main():
        nc = await connect(api_cfg, "t")
        try:
            js = nc.jetstream()
            await JobClient(nc, api_cfg).setup()  # an empty server: the API creates what is missing
            created = (await js.consumer_info("JOBS", "jobs-worker-any")).config.max_deliver
            await JobClient(nc, changed).setup()  # an API with other settings leaves it alone
            kept = (await js.consumer_info("JOBS", "jobs-worker-any")).config.max_deliver
            await Store(nc, changed).setup(update_consumers=True)  # a worker's settings win
            updated = (await js.consumer_info("JOBS", "jobs-worker-any")).config.max_deliver
            await ensure_consumer(js, "JOBS", host_consumer_config(api_cfg, "w1", {}))
            host = await js.consumer_info("JOBS", "jobs-worker-host-w1")
            return created, kept, updated, host.config.inactive_threshold
        finally:
            await close(nc)

    created, kept, updated, inactive = asyncio.run(main())
    assert (created, kept, updated) == (5, 5, 3)
    assert inactive == HOST_CONSUMER_INACTIVE == 7 * 86400


def test_a_worker_that_finds_its_consumers_as_configured_sends_no_update(nats_server, tmp_path):
    """An update is a meta-leader proposal: a fleet starting together must not send one per worker."""
    from osapi import config
    from osapi.job.connection import close, connect
    from osapi.job.setup import Names, ensure_consumer, host_consumer_config
    from osapi.job.store import Store

    env = base_env(nats_server, tmp_path / "state")
    cfg = config.load(None, env)
    changed = config.load(None, {**env, "OSAPI_JOB_CONSUMER_MAX_DELIVER": "3"})

    async def main():
        nc = await connect(cfg, "t")
        watcher = await connect(cfg, "watch")
        creates: list[str] = []
        async def seen(msg):
            creates.append(msg.subject)

        try:
            sub = await watcher.subscribe("$JS.API.CONSUMER.CREATE.>", cb=seen)
            await watcher.flush()
            js = nc.jetstream()
            await Store(nc, cfg).setup(update_consumers=True)
            await ensure_consumer(js, "JOBS", host_consumer_config(cfg, "w1.example", {"a": "b"}))
            await nc.flush()
            await watcher.flush()
            first = len(creates)
            for _ in range(2):  # the same settings again: nothing to update
                await Store(nc, cfg).setup(update_consumers=True)
                await ensure_consumer(js, "JOBS", host_consumer_config(cfg, "w1.example", {"a": "b"}))
            await nc.flush()
            await watcher.flush()
            same = len(creates) - first
            await Store(nc, changed).setup(update_consumers=True)  # other settings: updated
            await ensure_consumer(js, "JOBS", host_consumer_config(changed, "w1.example", {"a": "b"}))
            await nc.flush()
            await watcher.flush()
            any_deliver = (await js.consumer_info("JOBS", "jobs-worker-any")).config.max_deliver
            host_deliver = (await js.consumer_info("JOBS", Names.from_config(cfg).host_consumer("w1.example"))).config.max_deliver
            await sub.unsubscribe()
            return first, same, len(creates) - first - same, any_deliver, host_deliver
        finally:
            await close(watcher)
            await close(nc)

    first, same, updated, any_deliver, host_deliver = asyncio.run(main())
    assert first == 3  # -any, -dlq, the host's: created
    assert same == 0
    assert updated == 2 and any_deliver == 3 and host_deliver == 3  # -dlq has no max_deliver


def test_the_jobs_stream_takes_more_than_a_thousand_host_consumers(bridge):
    """nats-server refuses a stream's 1,001st consumer unless the stream sets max_consumers."""
    from osapi.job.setup import JOBS_MAX_CONSUMERS, ensure_consumer, host_consumer_config

    js = bridge.store.js

    async def add_all():
        for i in range(1001):
            await ensure_consumer(js, "JOBS", host_consumer_config(bridge.cfg, f"h{i}", {}))
        return (await js.stream_info("JOBS")).state.consumer_count

    assert bridge.call(add_all()) == 1001 + 1  # the hosts' and the shared -any
    assert bridge.call(js.stream_info("JOBS")).config.max_consumers == JOBS_MAX_CONSUMERS


def test_a_first_delivery_reads_only_its_hosts_events_and_a_failed_submission(bridge):
    """A broadcast's host reading every host's events makes a broadcast O(N²); a redelivery still reads all."""
    store = bridge.store
    job_id = "0b7e3c1e-8f44-4a57-9d6c-1a2b3c4d5e6f"
    job = {"id": job_id, "created": "2026-01-01T00:00:00Z", "created_ns": 1, "target_hostname": "_all",
           "broadcast": True, "operation": {"type": "system.hostname.get", "data": {}}, "kind": "query",
           "subject": "jobs.query.all", "expected_hosts": ["a.example", "b", "a"]}

    async def fill():
        await store.put_job(job)
        await store.add_event(job_id, st.SUBMITTED, "_all")
        for host in ("a.example", "b", "a"):
            await store.add_event(job_id, st.ACKNOWLEDGED, host)
            await store.add_event(job_id, st.STARTED, host)
        await store.add_event(job_id, st.FAILED, st.SUBMISSION_HOST, error="x")

    bridge.call(fill())
    everything = bridge.call(store.job_and_events(job_id))
    mine = bridge.call(store.job_and_events(job_id, "a.example"))
    short = bridge.call(store.job_and_events(job_id, "a"))
    assert everything[0]["id"] == mine[0]["id"] == short[0]["id"] == job_id
    assert len(everything[1]) == 8
    assert sorted((e.event, e.host) for e in mine[1]) == [
        (st.ACKNOWLEDGED, "a.example"), (st.FAILED, st.SUBMISSION_HOST), (st.STARTED, "a.example")]
    assert sorted((e.event, e.host) for e in short[1]) == [
        (st.ACKNOWLEDGED, "a"), (st.FAILED, st.SUBMISSION_HOST), (st.STARTED, "a")]
    assert st.abandoned(mine[1])


def test_batch_reads_share_one_reply_subscription_and_the_after_answer_check_reads_no_body(bridge, monkeypatch):
    """At N hosts a broadcast made 2N SUB/UNSUB (each propagated to every cluster node) and N re-reads of a
    body listing all N hosts: batch reads now reply to one subscription, and ``still_stored`` reads the
    ``submitted`` event only; a deleted job is "not stored" (confirmed by the stream leader)."""
    store, nc = bridge.store, bridge.nc
    job_id = "1c7e3c1e-8f44-4a57-9d6c-1a2b3c4d5e70"
    hosts = [f"host-{i:04d}" for i in range(1000)]
    job = {"id": job_id, "created": "2026-01-01T00:00:00Z", "created_ns": 1, "target_hostname": "_all",
           "broadcast": True, "operation": {"type": "system.hostname.get", "data": {}}, "kind": "query",
           "subject": "jobs.query.all", "expected_hosts": hosts}

    async def fill():
        await store.put_job(job)
        await store.add_event(job_id, st.SUBMITTED, "_all")

    bridge.call(fill())
    subscribed = []
    subscribe = nc.subscribe

    async def counting(subject, *args, **kwargs):
        subscribed.append(subject)
        return await subscribe(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "subscribe", counting)

    async def reads():
        return await asyncio.gather(*(store.job_and_events(job_id, h) for h in hosts[:20]))

    found = bridge.call(reads())
    found += bridge.call(reads())
    assert all(j is not None and j["expected_hosts"] == hosts for j, _ in found)
    assert len(subscribed) <= 1, subscribed  # 40 batch reads: at most the one reply subscription

    before = nc.stats["in_bytes"]
    assert bridge.call(store.still_stored(job_id)) is True
    read = nc.stats["in_bytes"] - before
    assert read < 2000 < len(json.dumps(job)), read  # the event, not the ~13 KB body

    bridge.call(store.purge_job(job_id))
    assert bridge.call(store.still_stored(job_id)) is False
    assert bridge.call(store.still_stored("2c7e3c1e-8f44-4a57-9d6c-1a2b3c4d5e71")) is False  # never stored


# ---------------------------------------------------------------- statistics kept up to date incrementally


def test_statistics_follow_every_change_and_agree_with_a_fresh_count(bridge):
    """One client's index (read incrementally) against a new client's full listing, after each kind of change."""
    from osapi.domain.ids import new_job_id

    client, store = bridge.client, bridge.store

    def counts() -> dict:
        mine = bridge.call(client.stats())
        assert mine == bridge.call(fresh_client(bridge).stats())
        return {k: v for k, v in mine["status_counts"].items() if v} | {"total": mine["total_jobs"]}

    ids = create_many(bridge, 30)
    assert counts() == {"submitted": 30, "total": 30}
    answer_all(bridge, ids[:10])
    assert counts() == {"submitted": 20, "completed": 10, "total": 30}
    bridge.call(store.add_event(ids[10], st.ACKNOWLEDGED, "w1"))
    assert counts() == {"submitted": 19, "processing": 1, "completed": 10, "total": 30}
    bridge.call(store.add_event(ids[10], st.FAILED, "w1", error="boom"))
    assert counts() == {"submitted": 19, "failed": 1, "completed": 10, "total": 30}

    # a final status that changes: a broadcast host that did not answer (no_response) answers late
    op, data, target = client.prepare(HOSTNAME, "_all")
    broadcast = bridge.call(client._submit(new_job_id(), op, data, target, {"h1", "h2"}))["job_id"]
    bridge.call(store.add_event(broadcast, st.COMPLETED, "h1"))
    bridge.call(store.add_event(broadcast, st.NO_RESPONSE, "h2", error="no answer", reason="no-answer"))
    assert counts() == {"submitted": 19, "failed": 1, "completed": 10, "partial_failure": 1, "total": 31}
    bridge.call(store.add_event(broadcast, st.COMPLETED, "h2"))
    assert counts() == {"submitted": 19, "failed": 1, "completed": 11, "total": 31}
    listed = bridge.call(client.list(status="completed", limit=100))
    assert listed["total_items"] == 11 and listed["items"][0]["id"] == broadcast

    # deleted jobs leave the counts and the status filters
    bridge.call(client.delete(ids[0]))
    bridge.call(client.delete(ids[20]))
    assert counts() == {"submitted": 18, "failed": 1, "completed": 10, "total": 29}
    assert ids[0] not in {j["id"] for j in bridge.call(client.list(status="completed", limit=100))["items"]}


def test_concurrent_statistics_share_their_computations(bridge):
    create_many(bridge, 50)
    client = fresh_client(bridge)
    bridge.call(client.stats())
    runs = client.index._runs

    async def at_once():
        return await asyncio.gather(*(client.stats() for _ in range(8)))

    results = bridge.call(at_once())
    assert all(r == results[0] for r in results) and results[0]["total_jobs"] == 50
    assert client.index._runs - runs <= 2, "8 callers at once: one computation running, one for the rest"
    # a caller that comes after a change sees it (no result older than the call is handed out)
    create_many(bridge, 1)
    assert bridge.call(client.stats())["total_jobs"] == 51


def test_a_recreated_job_store_is_listed_again(bridge):
    """A nats-server that comes back with a new store: sequences start over, the index starts over too."""
    client, store = bridge.client, bridge.store
    ids = create_many(bridge, 5)
    answer_all(bridge, ids)
    assert bridge.call(client.stats())["status_counts"]["completed"] == 5
    bridge.call(store.js.delete_stream(store.stream_of("jobs")))
    bridge.call(client.setup())
    create_many(bridge, 2)
    stats = bridge.call(client.stats())
    assert stats["total_jobs"] == 2 and stats["status_counts"]["submitted"] == 2
    assert stats == bridge.call(fresh_client(bridge).stats())


# ---------------------------------------------------------------- idempotency keys


def _once(bridge, client, key: str, operation: dict = HOSTNAME, target: str = "w1", dry_run: bool = False,
          subject: str = "tester"):
    from osapi.job import idempotency

    digest = idempotency.body_hash({"operation": operation, "target_hostname": target, "dry_run": dry_run})
    return bridge.call(client.create_once(JobClient.prepare(operation, target, dry_run), idempotency.slot(subject, key),
                                          digest))


def _entries(bridge) -> int:
    info = bridge.call(bridge.store.js.stream_info(bridge.store.stream_of("idempotency")))
    return info.state.messages


def test_the_same_key_and_request_twice_make_one_job_across_api_processes(bridge):
    before = bridge.call(bridge.store.count_jobs())
    first, replayed = _once(bridge, bridge.client, "key-1")
    assert not replayed and first["status"] == "submitted"
    stored = _entries(bridge)
    for client in (bridge.client, fresh_client(bridge)):  # this API process and another one
        again, replayed = _once(bridge, client, "key-1")
        assert replayed and again == first
    assert bridge.call(bridge.store.count_jobs()) == before + 1
    assert _entries(bridge) == stored  # a replay stores nothing
    # the key belongs to its token subject: another subject's same key is another request
    other, replayed = _once(bridge, bridge.client, "key-1", subject="someone-else")
    assert not replayed and other["job_id"] != first["job_id"]


def test_a_key_whose_job_was_deleted_submits_anew(bridge):
    """A replay never names a job that is gone: after DELETE, the same key and body make a new job."""
    first, replayed = _once(bridge, bridge.client, "key-deleted")
    assert not replayed
    bridge.call(bridge.client.delete(first["job_id"]))
    second, replayed = _once(bridge, bridge.client, "key-deleted")
    assert not replayed and second["job_id"] != first["job_id"]
    assert bridge.call(bridge.client.get(second["job_id"]))["id"] == second["job_id"]
    again, replayed = _once(bridge, fresh_client(bridge), "key-deleted")
    assert replayed and again == second  # and that one is replayed as usual


def test_the_same_key_with_another_request_is_a_conflict_and_stores_nothing(bridge):
    from osapi.domain.errors import IdempotencyConflict

    _once(bridge, bridge.client, "key-2")
    before, stored = bridge.call(bridge.store.count_jobs()), _entries(bridge)
    for change in ({"target": "w2"}, {"operation": {"type": "system.load.get", "data": {}}}):
        with pytest.raises(IdempotencyConflict, match="different request body"):
            _once(bridge, bridge.client, "key-2", **change)
    assert bridge.call(bridge.store.count_jobs()) == before and _entries(bridge) == stored


def test_concurrent_requests_with_one_key_make_one_job(bridge):
    from osapi.job import idempotency

    before = bridge.call(bridge.store.count_jobs())
    digest = idempotency.body_hash({"operation": HOSTNAME, "target_hostname": "w1", "dry_run": False})
    name = idempotency.slot("tester", "key-3")
    clients = [bridge.client] + [fresh_client(bridge) for _ in range(4)]

    async def all_at_once():
        request = JobClient.prepare(HOSTNAME, "w1")
        return await asyncio.gather(*(c.create_once(request, name, digest) for c in clients))

    answers = bridge.call(all_at_once())
    assert len({a["job_id"] for a, _ in answers}) == 1
    assert sorted(replayed for _, replayed in answers) == [False, True, True, True, True]
    assert bridge.call(bridge.store.count_jobs()) == before + 1


def test_a_failed_submission_frees_its_key_for_the_retry(bridge):
    from osapi.job import idempotency
    from osapi.domain.errors import NatsUnavailable

    client = bridge.client
    digest = idempotency.body_hash({"operation": HOSTNAME, "target_hostname": "w1", "dry_run": False})
    name = idempotency.slot("tester", "key-4")

    async def failing() -> dict:
        raise NatsUnavailable("the submission failed (test)")

    with pytest.raises(NatsUnavailable):
        bridge.call(client.idempotency.once(name, digest, "0" * 32, failing, client._submitted))
    bridge.call(client.settle(10))
    before = bridge.call(bridge.store.count_jobs())
    answer, replayed = _once(bridge, client, "key-4")  # the retry: a new job, not "in progress"
    assert not replayed and bridge.call(bridge.store.count_jobs()) == before + 1


def test_a_pending_key_waits_then_is_in_progress_and_a_stale_one_is_taken_over(bridge, monkeypatch):
    import time

    from osapi.job import idempotency
    from osapi.domain.errors import IdempotencyInProgress
    from osapi.domain.ids import new_job_id

    monkeypatch.setattr(idempotency, "WAIT", 0.3)
    digest = idempotency.body_hash({"operation": HOSTNAME, "target_hostname": "w1", "dry_run": False})
    kv = bridge.store.kv("idempotency")

    def pending(key: str, job_id: str, age: float) -> None:
        record = {"state": "pending", "body": digest, "job_id": job_id, "since_ns": time.time_ns() - int(age * 1e9)}
        bridge.call(kv.put(idempotency.slot("tester", key), json.dumps(record).encode()))

    before = bridge.call(bridge.store.count_jobs())
    pending("key-5", new_job_id(), 0)  # another request is submitting right now
    with pytest.raises(IdempotencyInProgress, match="still submitting"):
        _once(bridge, bridge.client, "key-5")
    assert bridge.call(bridge.store.count_jobs()) == before

    # its request died before it stored a job: the next request claims the key and submits
    pending("key-6", new_job_id(), idempotency.STALE + 1)
    answer, replayed = _once(bridge, bridge.client, "key-6")
    assert not replayed and bridge.call(bridge.store.count_jobs()) == before + 1

    # its request died after storing its job: that job is the answer, no second one
    first = bridge.call(bridge.client.create(JobClient.prepare(HOSTNAME, "w1")))
    pending("key-7", first["job_id"], idempotency.STALE + 1)
    answer, replayed = _once(bridge, bridge.client, "key-7")
    assert replayed and answer == first
    assert bridge.call(bridge.store.count_jobs()) == before + 2
