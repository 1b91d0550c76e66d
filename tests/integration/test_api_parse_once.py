"""A request is parsed once, at the edge: its target and its operation data, never again inward.

The app runs in-process (its handlers, the ``NatsBridge`` and the ``JobClient`` on a
real nats-server), so the target parser (``osapi.domain.subjects.parse_target``), the
operations' validator (``Operation.check``) and the rollout check (``rollout.check``)
can be counted during one request. No worker runs: a synchronous call to a host
nobody serves ends in 404 after the quiet period, which is the whole trip to NATS
and back. A retry parses the stored job it repeats once: that job is its input.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from api_support import wsgi_call
from testkit import SIGNING_KEY, make_token

from osapi import config

ADMIN = {"Authorization": "Bearer " + make_token(["admin"], subject="admin-user")}
HOSTNAME = {"type": "system.hostname.get", "data": {}}


@pytest.fixture
def app(nats_server):
    from osapi.api.app import create_app
    from osapi.api.bridge import NatsBridge

    cfg = config.load(None, {**nats_server.env(), "OSAPI_API_SERVER_SECURITY_SIGNING_KEY": SIGNING_KEY,
                             "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": "200ms"})
    bridge = NatsBridge(cfg).start()
    try:
        deadline = time.monotonic() + 20
        while not bridge.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bridge.connected, bridge.problem()
        yield create_app(cfg, bridge)
    finally:
        bridge.close()


@pytest.fixture
def counts(monkeypatch):
    """How often each parser ran since the fixture started (reset with ``counts.clear()``)."""
    from osapi.domain import operations, subjects
    from osapi.job import rollout

    seen: dict[str, int] = {}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] = seen.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    original = subjects.parse_target
    wrapped = counting("target", original)
    for module in list(sys.modules.values()):  # every module that bound the function by name
        if getattr(module, "__name__", "").startswith("osapi") and getattr(module, "parse_target", None) is original:
            monkeypatch.setattr(module, "parse_target", wrapped)
    monkeypatch.setattr(operations.Operation, "check", counting("data", operations.Operation.check))
    monkeypatch.setattr(rollout, "check", counting("rollout", rollout.check))
    return seen


def _post_job(app, body: dict, headers: dict | None = None):
    return wsgi_call(app, "POST", "/api/v1/jobs", body=json.dumps(body).encode(),
                     headers={**ADMIN, "Content-Type": "application/json", **(headers or {})})


DOMAIN_CALLS = [
    ("GET", "/api/v1/system/hostname", b""),
    ("GET", "/api/v1/network/dns/lo", b""),
    ("PUT", "/api/v1/network/dns", b'{"interface_name": "lo", "servers": ["192.0.2.53"], "dry_run": true}'),
    ("POST", "/api/v1/network/ping", b'{"address": "127.0.0.1", "count": 1}'),
]


@pytest.mark.parametrize("method, path, body", DOMAIN_CALLS)
def test_a_domain_call_parses_its_target_and_data_once(app, counts, method, path, body):
    resp = wsgi_call(app, method, path, query="target_hostname=nobody.example", body=body,
                     headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status == 404, resp.raw  # the whole trip: submitted, nobody serves the host
    assert "names no registered worker host or label" in resp.json["details"]
    assert counts == {"target": 1, "data": 1}


@pytest.mark.parametrize("body, headers, expected", [
    ({"operation": HOSTNAME, "target_hostname": "nobody.example"}, {}, {"target": 1, "data": 1}),
    ({"operation": HOSTNAME, "target_hostname": "nobody.example"}, {"Idempotency-Key": "parse-once-1"},
     {"target": 1, "data": 1}),
    ({"operation": {"type": "network.dns.update", "data": {"interface_name": "lo", "servers": ["192.0.2.53"]}},
      "target_hostname": "group:nobody", "dry_run": True, "rollout": {"batch": 1}}, {},
     {"target": 1, "data": 1, "rollout": 1}),
], ids=["create", "idempotent-create", "rollout"])
def test_a_job_submission_parses_its_target_data_and_rollout_once(app, counts, body, headers, expected):
    resp = _post_job(app, body, headers)
    assert resp.status == 201, resp.raw
    assert counts == expected
    if headers:  # the replay is checked against the first request, again from one parse
        counts.clear()
        again = _post_job(app, body, headers)
        assert again.status == 200 and again.json["job_id"] == resp.json["job_id"]
        assert counts == expected


def test_a_retry_parses_the_stored_job_once(app, counts):
    job_id = _post_job(app, {"operation": HOSTNAME, "target_hostname": "nobody.example"}).json["job_id"]
    bridge = app.services.bridge

    async def fail(client):  # what a worker on nobody.example would have stored
        record = {"status": "failed", "data": None, "error": "boom", "hostname": "nobody.example",
                  "finished": "2024-01-01T00:00:00Z"}
        await client.store.put_response(job_id, "nobody.example", record)
        await client.store.add_event(job_id, "failed", "nobody.example", error="boom")

    bridge.call(fail, 15)
    counts.clear()
    resp = wsgi_call(app, "POST", f"/api/v1/jobs/{job_id}/retry", headers=ADMIN)
    assert resp.status == 201, resp.raw
    assert resp.json["hosts"] == ["nobody.example"]
    # the stored target twice: once for the status of the stored job (``status.target_is_broadcast``,
    # the read side, as for any GET of it), once for the new job (``JobClient.prepare``)
    assert counts == {"target": 2, "data": 1}
