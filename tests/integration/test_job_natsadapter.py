"""The nats-py internals of ``osapi/job/natsadapter.py``, on real objects from a real nats-server.

If a nats-py release renames or drops one of them, the first test fails and
names it (``KeyValue._pre``, ``PullSubscription._sub``, ``Subscription._pending_queue``):
change the adapter, nothing else. The others check that the internals still
mean what the adapter assumes: a KV handle stores under the prefix and in the
stream it reports, and the queue holds a job delivered after a pull stopped waiting.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from osapi.job import natsadapter

pytestmark = pytest.mark.timeout(60)

STREAM = "ADAPTERTEST"
CONSUMER = "adapter-test"


@contextlib.asynccontextmanager
async def pull_subscription(js):
    """A pull subscription bound to a fresh consumer of a fresh stream (both removed afterwards)."""
    from nats.js import api

    await js.add_stream(name=STREAM, subjects=["adaptertest.>"], storage=api.StorageType.MEMORY)
    await js.add_consumer(STREAM, api.ConsumerConfig(durable_name=CONSUMER, ack_policy=api.AckPolicy.EXPLICIT,
                                                     filter_subject="adaptertest.>"))
    sub = await js.pull_subscribe_bind(CONSUMER, STREAM)
    try:
        yield sub
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await js.delete_stream(STREAM)


def _version() -> str:
    import nats.aio.client

    return getattr(nats.aio.client, "__version__", "?")


def test_nats_py_still_has_the_internals_osapi_uses(bridge):
    store = bridge.client.store

    async def check():
        missing = []
        for role in ("jobs", "responses", "registry"):
            missing += natsadapter.missing_internals(kv=store.kv(role))  # made by setup (ensure_all)
        missing += natsadapter.missing_internals(kv=natsadapter.kv_handle(store.js, "x", "KV_x", direct=True))
        async with pull_subscription(store.js) as sub:
            missing += natsadapter.missing_internals(pull_sub=sub)
        return sorted(set(missing))

    missing = bridge.call(check())
    assert missing == [], (f"nats-py {_version()} no longer has {', '.join(missing)}: "
                           "osapi/job/natsadapter.py must be changed for this release")


def test_the_check_names_what_is_missing(bridge):
    """Take each internal away from a real object: the check names exactly that one."""
    store = bridge.client.store
    kv = natsadapter.kv_handle(store.js, "x", "KV_x", direct=True)
    del kv._pre
    assert natsadapter.missing_internals(kv=kv) == ["KeyValue._pre"]
    kv._stream = None
    assert natsadapter.missing_internals(kv=kv) == ["KeyValue._stream", "KeyValue._pre"]

    async def check():
        async with pull_subscription(store.js) as sub:
            core = sub._sub
            queue = core._pending_queue
            try:
                core._pending_queue = None
                without_queue = natsadapter.missing_internals(pull_sub=sub)
                del sub._sub
                without_core = natsadapter.missing_internals(pull_sub=sub)
            finally:
                sub._sub, core._pending_queue = core, queue
            return without_queue, without_core

    without_queue, without_core = bridge.call(check())
    assert without_queue == ["Subscription._pending_queue"]
    assert without_core == ["PullSubscription._sub"]


def test_a_kv_handle_stores_under_the_prefix_and_stream_it_reports(bridge):
    store = bridge.client.store
    bucket = store.names.jobs_bucket
    kv = natsadapter.kv_handle(store.js, bucket, f"KV_{bucket}", direct=True)
    assert natsadapter.kv_prefix(kv) == f"$KV.{bucket}." and natsadapter.kv_stream(kv) == f"KV_{bucket}"
    assert store.kv_prefix("jobs") == natsadapter.kv_prefix(kv) and store.stream_of("jobs") == f"KV_{bucket}"

    async def write_and_read():
        await kv.put("adapter.check", b"stored")
        subject = natsadapter.kv_prefix(kv) + "adapter.check"
        got, end = await store.direct_batch(natsadapter.kv_stream(kv), {"multi_last": [subject], "batch": 10})
        listed, _ = await store.subjects(natsadapter.kv_stream(kv), subject)
        return [(m.headers.get("Nats-Subject"), m.data) for m in got], end.get("Status"), listed

    got, status, listed = bridge.call(write_and_read())
    subject = f"$KV.{bucket}.adapter.check"
    assert got == [(subject, b"stored")] and status == "204" and list(listed) == [subject]


def test_queued_messages_takes_a_job_delivered_after_the_pull_stopped_waiting(bridge):
    """What a worker stopping mid-pull sees: the server still holds the pull request, a job arrives."""
    js = bridge.client.store.js

    async def scenario():
        async with pull_subscription(js) as sub:
            fetch = asyncio.ensure_future(sub.fetch(1, timeout=30))
            for _ in range(200):  # the server has the pull request
                if (await js.consumer_info(STREAM, CONSUMER)).num_waiting:
                    break
                await asyncio.sleep(0.02)
            fetch.cancel()  # the worker stops waiting; the request stays open on the server
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            await js.publish("adaptertest.job", b"late")
            taken: list = []
            for _ in range(250):
                taken = list(natsadapter.queued_messages(sub))
                if taken:
                    break
                await asyncio.sleep(0.02)
            left = list(natsadapter.queued_messages(sub))
            for msg in taken:
                await msg.nak()
            again = await sub.fetch(1, timeout=10)  # handed back: delivered again at once
            await again[0].ack()
            return [m.data for m in taken], left, again[0].data, again[0].metadata.num_delivered

    taken, left, again, delivered = bridge.call(scenario())
    assert taken == [b"late"] and left == []
    assert again == b"late" and delivered == 2
