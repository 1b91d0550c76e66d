"""NATS credentials in a URL never reach logs, error messages or answers (review finding 5.1)."""

from __future__ import annotations

import pytest

from osapi import config
from osapi.errors import ConfigError
from osapi.config import redact_url
from osapi.job.connection import describe

SECRET = "s3cretT0ken"


@pytest.mark.parametrize("url, shown", [
    (f"nats://{SECRET}@127.0.0.1:4222", "nats://127.0.0.1:4222"),
    (f"nats://user:{SECRET}@nats.example:4222", "nats://nats.example:4222"),
    (f"tls://user:pa/{SECRET}@[::1]:4222", "tls://[::1]:4222"),
    (f"{SECRET}@host:4222", "host:4222"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_describe_lists_every_url_without_credentials():
    cfg = config.load(None, {"OSAPI_NATS_URL": f"nats://{SECRET}@10.0.0.1:4222,nats://a:{SECRET}@10.0.0.2:4222"})
    assert describe(cfg) == "nats://10.0.0.1:4222, nats://10.0.0.2:4222"


def test_an_invalid_url_is_refused_without_echoing_its_credentials():
    with pytest.raises(ConfigError) as info:
        config.load(None, {"OSAPI_NATS_URL": f"nats://{SECRET}@bad host:4222"})
    assert "nats.url" in str(info.value) and "bad host:4222" in str(info.value)
    assert SECRET not in str(info.value)


def test_the_api_bridge_shows_redacted_urls():
    from osapi.api.bridge import NatsBridge

    bridge = NatsBridge(config.load(None, {"OSAPI_NATS_URL": f"nats://{SECRET}@127.0.0.1:1"}))
    try:
        assert bridge.urls == ["nats://127.0.0.1:1"]
        assert SECRET not in bridge.problem() and "nats://127.0.0.1:1" in bridge.problem()
    finally:
        bridge.loop.close()
