"""The real-NATS harness works: connect with the token, create a KV bucket, put/get."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import NoServersError


def test_nats_server_with_jetstream_kv_round_trip(nats_server):
    async def go():
        nc = await nats.connect(nats_server.url, token=nats_server.token, connect_timeout=5)
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket="harness-check")
            rev = await kv.put("greeting", b"hello")
            entry = await kv.get("greeting")
            info = await js.account_info()
            return rev, entry.value, info.storage
        finally:
            await nc.close()

    rev, value, _storage = asyncio.run(go())
    assert rev == 1
    assert value == b"hello"
    assert nats_server.store_dir.is_dir()  # JetStream writes under the temp store dir


def test_nats_server_requires_the_token(nats_server):
    async def go():
        return await nats.connect(nats_server.url, token="wrong", connect_timeout=2,
                                  max_reconnect_attempts=0, allow_reconnect=False)

    with pytest.raises(Exception) as exc:
        asyncio.run(go())
    assert "Authorization" in str(exc.value) or isinstance(exc.value, NoServersError)


def test_nats_server_is_stopped_by_pid(tmp_path):
    from testkit import NatsServer

    server = NatsServer(tmp_path / "n").start()
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
