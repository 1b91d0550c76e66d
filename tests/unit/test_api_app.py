"""The WSGI app in-process, without NATS: envelopes, input checks, 404/405/413, CORS, 503.

The bridge is never started, so any request that passes validation answers 503:
that is how these tests prove a bad request is refused before NATS is touched.
"""

from __future__ import annotations

import json
import logging

import pytest
from api_support import check_against_document, wsgi_call
from testkit import SIGNING_KEY, make_token

from osapi import config
from osapi.api.app import Api, create_app
from osapi.api.bridge import NatsBridge
from osapi.api.routing import MAX_BODY, Reply, Route

ADMIN = {"Authorization": "Bearer " + make_token(["admin"], subject="admin-user")}
READ = {"Authorization": "Bearer " + make_token(["read"], subject="reader")}


def _cfg(**env):
    environ = {"OSAPI_API_SERVER_SECURITY_SIGNING_KEY": SIGNING_KEY, "OSAPI_NATS_URL": "nats://127.0.0.1:9"}
    environ.update(env)
    return config.load(None, environ)


@pytest.fixture(scope="module")
def app():
    cfg = _cfg(OSAPI_API_SERVER_SECURITY_CORS_ALLOW_ORIGINS="https://ui.example")
    return create_app(cfg, NatsBridge(cfg))


def _envelope(resp, status):
    assert resp.status == status, resp.raw
    assert resp.header("content-type") == "application/json"
    body = resp.json
    assert set(body) >= {"error", "details", "code"} and body["code"] == status
    assert "Traceback" not in resp.raw.decode()
    return body


# ---------------------------------------------------------------- unauthenticated routes


def test_health_and_version_need_no_token(app):
    assert wsgi_call(app, "GET", "/health").json == {"status": "ok"}
    from osapi import __version__

    assert wsgi_call(app, "GET", "/api/v1/version").json == {"version": __version__}
    doc = wsgi_call(app, "GET", "/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")


def test_ready_without_nats_is_503_not_ready(app):
    resp = wsgi_call(app, "GET", "/health/ready")
    assert resp.status == 503
    assert resp.json["status"] == "not_ready"
    assert "nats://127.0.0.1:9" in resp.json["error"]


def test_health_status_needs_read_and_reports_degraded(app):
    assert wsgi_call(app, "GET", "/health/status").status == 401
    resp = wsgi_call(app, "GET", "/health/status", headers=READ)
    assert resp.status == 503
    body = resp.json
    assert body["status"] == "degraded"
    assert body["components"]["nats"]["status"] == "error"
    assert body["components"]["kv"]["status"] == "error"
    assert body["uptime_seconds"] >= 0
    # jobs stays an object: never counted by this process, so zeros, marked stale, with the reason
    jobs = body["jobs"]
    assert jobs["stale"] is True and jobs["as_of"] is None and "NATS is not connected" in jobs["error"]
    assert (jobs["total_jobs"], jobs["dlq_count"], jobs["operation_counts"]) == (0, 0, {})
    assert set(jobs["status_counts"]) == {"submitted", "processing", "completed", "failed", "partial_failure"}
    doc = wsgi_call(app, "GET", "/api/v1/openapi.json").json
    check_against_document(doc, "GET", "/health/status", resp)


# ---------------------------------------------------------------- routing errors


def test_unknown_path_is_404_envelope(app):
    body = _envelope(wsgi_call(app, "GET", "/api/v1/nothing-here"), 404)
    assert "/api/v1/nothing-here" in body["details"]


def test_wrong_method_is_405_with_allow(app):
    resp = wsgi_call(app, "PATCH", "/api/v1/jobs", headers=ADMIN)
    body = _envelope(resp, 405)
    assert resp.header("allow") == "GET, POST"
    assert "GET, POST" in body["details"]


def test_options_answers_allow(app):
    resp = wsgi_call(app, "OPTIONS", "/api/v1/jobs/abc")
    assert resp.status == 204
    assert resp.header("allow") == "DELETE, GET, OPTIONS"
    assert resp.header("access-control-allow-origin") is None
    _envelope(wsgi_call(app, "OPTIONS", "/api/v1/nope"), 404)


@pytest.mark.parametrize("path", ["/api/v1/jobs/status", "/api/v1/jobs/workers"])
def test_a_fixed_path_is_not_taken_by_a_sibling_parameter(app, path):
    """``/jobs/{job_id}`` does not shadow ``/jobs/status``: Allow lists only what the path serves."""
    resp = wsgi_call(app, "OPTIONS", path)
    assert resp.status == 204 and resp.header("allow") == "GET, OPTIONS"
    resp = wsgi_call(app, "DELETE", path, headers=ADMIN)
    body = _envelope(resp, 405)
    assert resp.header("allow") == "GET", body
    # a job id that merely starts like a fixed segment is still a job id
    assert wsgi_call(app, "OPTIONS", "/api/v1/jobs/statusx").header("allow") == "DELETE, GET, OPTIONS"


# ---------------------------------------------------------------- auth before anything


def test_write_route_with_read_token_is_403(app):
    body = _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=b"{}", headers=READ), 403)
    assert "write" in body["error"]


def test_auth_comes_before_input_validation(app):
    resp = wsgi_call(app, "POST", "/api/v1/jobs", body=b"{not json")
    _envelope(resp, 401)
    assert resp.header("www-authenticate").startswith("Bearer")


# ---------------------------------------------------------------- body checks


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "malformed JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"operation": NaN}', "NaN"),
    (b"[" * 5000 + b"]" * 5000, "nested deeper"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),
])
def test_malformed_json_is_400(app, raw, words):
    body = _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=raw, headers=ADMIN), 400)
    assert words in body["error"] + body["details"]


@pytest.mark.parametrize("payload, words", [
    (None, "request body is required"),
    ([], "must be a JSON object"),
    ("text", "must be a JSON object"),
    ({}, "operation"),
    ({"operation": "system.hostname.get"}, "operation must be an object"),
    ({"operation": {}}, "operation.type"),
    ({"operation": {"type": "system.nope.get"}}, "unknown operation type"),
    ({"operation": {"type": 5}}, "unknown operation type"),
    ({"operation": {"type": "system.hostname.get", "data": []}}, "operation.data must be an object"),
    ({"operation": {"type": "system.hostname.get", "data": {"x": 1}}}, "unknown field x"),
    ({"operation": {"type": "network.ping.do", "data": {"address": "127.0.0.1", "count": 11}}}, "count"),
    ({"operation": {"type": "network.ping.do", "data": {}}}, "address is required"),
    ({"operation": {"type": "network.dns.update", "data": {"interface_name": "eth0"}}}, "at least one"),
    ({"operation": {"type": "system.hostname.get"}, "extra": 1}, "unknown field extra"),
    ({"operation": {"type": "system.hostname.get", "junk": 1}}, "unknown field junk"),
    ({"operation": {"type": "system.hostname.get"}, "target_hostname": 7}, "target_hostname must be a string"),
])
def test_bad_job_bodies_are_400_naming_the_field(app, payload, words):
    raw = b"" if payload is None else json.dumps(payload).encode()
    body = _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=raw, headers=ADMIN), 400)
    assert words in body["error"] + " " + body["details"], body


@pytest.mark.parametrize("path, payload, words", [
    ("/api/v1/network/ping", {"address": "127.0.0.1", "count": 0}, "count"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "count": "3"}, "count"),
    ("/api/v1/network/ping", {"address": "not a host!"}, "address"),
    ("/api/v1/network/ping", {"count": 1}, "address is required"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "ttl": 3}, "unknown field ttl"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "target_hostname": ["a"]}, "target_hostname"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "target_hostname": "_any"},
     "unexpected field target_hostname in the request body"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "count": None}, "count must be an integer"),
    ("/api/v1/network/ping", {"address": "127.0.0.1", "count": 2.5}, "count must be an integer"),
])
def test_bad_domain_bodies_are_400(app, path, payload, words):
    resp = wsgi_call(app, "POST", path, body=json.dumps(payload).encode(), headers=ADMIN)
    body = _envelope(resp, 400)
    assert words in body["error"] + " " + body["details"], body


@pytest.mark.parametrize("payload, words", [
    ({"interface_name": "eth0"}, "at least one of servers or search_domains"),
    ({"servers": ["1.1.1.1"]}, "interface_name is required"),
    ({"interface_name": "eth0", "servers": ["not-an-ip"]}, "servers[0]"),
    ({"interface_name": "eth0", "servers": "1.1.1.1"}, "servers must be a list"),
    ({"interface_name": "eth0", "servers": None, "search_domains": ["a.example"]}, "servers must be a list, got null"),
    ({"interface_name": "eth0", "servers": ["1.1.1.1"], "search_domains": None}, "search_domains must be a list"),
    ({"interface_name": "eth0", "search_domains": ["bad domain"]}, "search_domains[0]"),
    ({"interface_name": "this-name-is-far-too-long", "servers": ["1.1.1.1"]}, "interface_name"),
])
def test_bad_dns_updates_are_400(app, payload, words):
    resp = wsgi_call(app, "PUT", "/api/v1/network/dns", body=json.dumps(payload).encode(), headers=ADMIN)
    body = _envelope(resp, 400)
    assert words in body["details"], body


def test_bad_path_parameter_is_400(app):
    body = _envelope(wsgi_call(app, "GET", "/api/v1/network/dns/bad%20name!", headers=READ), 400)
    assert "interface_name" in body["details"]
    body = _envelope(wsgi_call(app, "GET", "/api/v1/jobs/not*an*id", headers=READ), 400)
    assert "job_id" in body["error"]


# ---------------------------------------------------------------- query checks


@pytest.mark.parametrize("path, query, words", [
    ("/api/v1/jobs", "limit=0", "limit"),
    ("/api/v1/jobs", "limit=1001", "limit"),
    ("/api/v1/jobs", "limit=ten", "limit"),
    ("/api/v1/jobs", "limit=-1", "limit"),
    ("/api/v1/jobs", "offset=-5", "offset"),
    ("/api/v1/jobs", "offset=1.5", "offset"),
    ("/api/v1/jobs", "status=done", "status"),
    ("/api/v1/jobs", "limit=5&limit=6", "limit"),
    ("/api/v1/jobs", "page=2", "unknown query parameter page"),
    ("/api/v1/system/hostname", "target=_all", "unknown query parameter target"),
    ("/api/v1/system/hostname", "target_hostname=", "target_hostname"),
    ("/api/v1/system/hostname", "target_hostname=%20web1", "leading or trailing white space"),
    ("/api/v1/system/hostname", "target_hostname=web1%0A", "leading or trailing white space"),
    ("/api/v1/system/hostname", "target_hostname=group:web%0A", "target_hostname"),
    ("/api/v1/system/hostname", "target_hostname=web*", "not a hostname"),
    ("/api/v1/jobs", "offset=1000000000", "offset must be a whole number from 0 to 999999999"),
    ("/api/v1/jobs", "limit=%205", "limit"),
    ("/health/status", "verbose=1", "unknown query parameter verbose"),
])
def test_bad_query_parameters_are_400(app, path, query, words):
    body = _envelope(wsgi_call(app, "GET", path, query=query, headers=READ), 400)
    assert words in body["error"] + " " + body["details"], body


@pytest.mark.parametrize("method, path, query, body, headers, error, details", [
    ("GET", "/api/v1/system/hostname", "target_hostname=bad%20target!", b"", READ,
     "invalid query parameter target_hostname", "invalid target 'bad target!': not a hostname; use _any"),
    ("GET", "/api/v1/jobs", "limit=0", b"", READ, "invalid query parameter limit", "limit must be from 1 to 1000"),
    ("POST", "/api/v1/jobs", "", b'{"operation": {"type": "system.hostname.get"}, "target_hostname": "a b"}', ADMIN,
     "invalid field target_hostname", "invalid target 'a b': not a hostname"),
    ("PUT", "/api/v1/network/dns", "", b"{}", READ, "missing scope write",
     "the token of 'reader' (roles: read) grants: read"),
])
def test_errors_say_the_category_once_and_the_fact_in_details(app, method, path, query, body, headers, error, details):
    """Raw API users read ``error`` then ``details``: the details do not start by restating the error."""
    got = _envelope(wsgi_call(app, method, path, query=query, body=body, headers=headers),
                    403 if "scope" in error else 400)
    assert got["error"] == error and got["details"].startswith(details), got
    name = error.rsplit(" ", 1)[-1]
    assert not got["details"].startswith(f"{name} invalid") and "needs the" not in got["details"], got


def test_a_whole_number_written_as_a_float_is_accepted(app):
    """JSON (and JSON Schema) make 3.0 the integer 3: it passes validation (503: no NATS here)."""
    resp = wsgi_call(app, "POST", "/api/v1/network/ping", body=b'{"address": "127.0.0.1", "count": 3.0}',
                     headers=ADMIN)
    assert resp.status == 503, resp.raw


def test_valid_request_without_nats_is_503(app):
    body = _envelope(wsgi_call(app, "GET", "/api/v1/jobs", query="limit=5&status=failed", headers=READ), 503)
    assert "nats://127.0.0.1:9" in body["details"] and "reach" not in body["details"]  # the error says "not reachable"
    payload = json.dumps({"operation": {"type": "system.hostname.get"}}).encode()
    _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=payload, headers=ADMIN), 503)


def test_synchronous_calls_beyond_the_wait_slots_are_503_at_once_with_retry_after():
    """Every slot held (calls waiting on workers): one more synchronous call is refused at once."""
    import contextlib

    from osapi.api.domain import RETRY_AFTER, WaitSlots

    cfg = _cfg()
    app = create_app(cfg, NatsBridge(cfg))
    app.services.wait_slots = WaitSlots(2)
    doc = wsgi_call(app, "GET", "/api/v1/openapi.json").json
    dns = json.dumps({"interface_name": "eth0", "servers": ["192.0.2.1"]}).encode()
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(app.services.wait_slots.slot())
        for method, path, body, template in [
            ("GET", "/api/v1/system/hostname", b"", "/api/v1/system/hostname"),
            ("PUT", "/api/v1/network/dns", dns, "/api/v1/network/dns"),
        ]:
            resp = wsgi_call(app, method, path, query="target_hostname=h1", body=body, headers=ADMIN)
            got = _envelope(resp, 503)
            assert got["error"] == "too many synchronous calls waiting", got
            assert got["details"].startswith("2 synchronous calls are already waiting") and "POST /api/v1/jobs" in got["details"]
            assert resp.header("retry-after") == str(RETRY_AFTER)
            check_against_document(doc, method, template, resp)
        # a bad request is still refused for what it is, and the rest of the API answers
        assert wsgi_call(app, "GET", "/api/v1/system/hostname", query="target_hostname=a*b", headers=ADMIN).status == 400
        assert wsgi_call(app, "GET", "/health").json == {"status": "ok"}
    # slots free again (also after a call that failed inside one): the call reaches the bridge
    for _ in range(3):
        got = _envelope(wsgi_call(app, "GET", "/api/v1/system/hostname", headers=ADMIN), 503)
        assert got["error"] == "NATS is not reachable", got


# ---------------------------------------------------------------- body size


def test_body_over_one_mib_is_413_by_content_length(app):
    resp = wsgi_call(app, "POST", "/api/v1/jobs", body=b"{}", headers=ADMIN, content_length=str(MAX_BODY + 1))
    body = _envelope(resp, 413)
    assert "1048576" in body["details"]


def test_body_is_bounded_on_read_even_when_length_lies(app):
    # a WSGI server that passes a longer stream than the limit: the app reads at most MAX_BODY + 1
    big = b'{"operation": {"type": "' + b"a" * (MAX_BODY + 10) + b'"}}'
    _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=big, headers=ADMIN), 413)


def test_body_of_exactly_one_mib_is_read(app):
    payload = b'{"operation": {"type": "system.hostname.get"}, "target_hostname": "_any"}'
    padded = payload + b" " * (MAX_BODY - len(payload))
    _envelope(wsgi_call(app, "POST", "/api/v1/jobs", body=padded, headers=ADMIN), 503)


# ---------------------------------------------------------------- CORS


def test_cors_allowed_origin_on_errors_and_success(app):
    origin = {"Origin": "https://ui.example"}
    resp = wsgi_call(app, "GET", "/health", headers=origin)
    assert resp.header("access-control-allow-origin") == "https://ui.example"
    assert resp.header("vary") == "Origin"
    resp = wsgi_call(app, "GET", "/api/v1/jobs", headers=origin)
    assert resp.status == 401 and resp.header("access-control-allow-origin") == "https://ui.example"


def test_cors_other_origin_gets_nothing(app):
    resp = wsgi_call(app, "GET", "/health", headers={"Origin": "https://evil.example"})
    assert not [h for h in resp.headers if h.startswith("access-control-")]


def test_preflight_allowed_and_denied(app):
    pre = {"Origin": "https://ui.example", "Access-Control-Request-Method": "PUT",
           "Access-Control-Request-Headers": "authorization, content-type"}
    resp = wsgi_call(app, "OPTIONS", "/api/v1/network/dns", headers=pre)
    assert resp.status == 204 and resp.raw == b""
    assert resp.header("access-control-allow-origin") == "https://ui.example"
    assert resp.header("access-control-allow-methods") == "OPTIONS, PUT"
    assert resp.header("access-control-allow-headers") == "Authorization, Content-Type, Idempotency-Key"
    denied = wsgi_call(app, "OPTIONS", "/api/v1/network/dns", headers=dict(pre, Origin="https://evil.example"))
    assert denied.status == 204
    assert not [h for h in denied.headers if h.startswith("access-control-")]


# ---------------------------------------------------------------- bugs


def test_a_handler_bug_is_a_500_envelope_and_logged(caplog):
    def broken(call):
        raise KeyError("secret internals")

    cfg = _cfg()
    routes = [Route("GET", "/boom", broken, "always fails", "test", None),
              Route("GET", "/fine", lambda call: Reply(200, {"ok": True}), "works", "test", None)]
    app = Api(cfg, NatsBridge(cfg), SIGNING_KEY, routes)
    with caplog.at_level(logging.ERROR, logger="osapi.api"):
        resp = wsgi_call(app, "GET", "/api/v1/boom")
    body = _envelope(resp, 500)
    assert "secret internals" not in resp.raw.decode()
    assert body["error"] == "internal error"
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
    assert wsgi_call(app, "GET", "/api/v1/fine").json == {"ok": True}


def test_access_log_has_subject_never_token(app, caplog):
    token = ADMIN["Authorization"].split()[1]
    with caplog.at_level(logging.INFO, logger="osapi.api.access"):
        wsgi_call(app, "GET", "/api/v1/jobs", query="limit=1", headers=ADMIN)
    records = [r for r in caplog.records if r.name == "osapi.api.access"]
    assert records
    fields = records[-1].fields
    assert fields["method"] == "GET" and fields["path"] == "/api/v1/jobs"
    assert fields["status"] == 503 and fields["subject"] == "admin-user"
    assert isinstance(fields["duration_ms"], float)
    assert all(token not in (r.getMessage() + repr(getattr(r, "fields", ""))) for r in caplog.records)
