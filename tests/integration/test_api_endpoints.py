"""The REST API end to end: real Waitress, real nats-server, two real workers.

One stack per module (NATS, workers ``api-w1`` (group=web.dev) and ``api-w2``
(group=web.prod), the API, and a second API with ``job_timeout=1s`` for the 504
case). Every answer is checked against the served OpenAPI document. DNS changes
go to per-worker temp files (``job.worker.dns.resolv_conf``), never the host's.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import testkit
from api_support import check_against_document
from testkit import ApiProcess, Http, WorkerProcess, make_token, recv_all, wait_for

from osapi import __version__
from osapi.api.app import all_routes

ADMIN = make_token(["admin"], subject="admin-user")
WRITE = make_token(["write"], subject="writer")
READ = make_token(["read"], subject="reader")
HOSTS = {"api-w1", "api-w2"}
RESOLV = "# managed by the test\nnameserver 192.0.2.1\nsearch example.test\noptions ndots:2\n"
QUIET = 15.0  # broadcast_quiet_period of the main API: a broadcast must answer well before it


@dataclass
class Stack:
    api: ApiProcess
    fast: ApiProcess  # job_timeout=1s
    workers: list[WorkerProcess]
    resolv: dict[str, Path]
    doc: dict

    def http(self, token: str | None = ADMIN) -> Http:
        return self.api.http(token)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("api-stack")
    with testkit.Stack(base) as kit:
        resolv = {}
        workers = []
        for host, group in (("api-w1", "web.dev"), ("api-w2", "web.prod")):
            resolv[host] = base / f"{host}.resolv.conf"
            resolv[host].write_text(RESOLV)
            workers.append(kit.start_worker(host, f"group={group}", resolv_conf=resolv[host]))
        api = kit.start_api(env={"OSAPI_API_SERVER_JOB_TIMEOUT": "20s",
                                 "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": f"{QUIET:g}s",
                                 "OSAPI_API_SERVER_SECURITY_CORS_ALLOW_ORIGINS": "https://ui.example"})
        fast = kit.start_api("api-fast", {"OSAPI_API_SERVER_JOB_TIMEOUT": "1s"})
        kit.wait_workers(HOSTS, api)
        doc = api.http().get("/api/v1/openapi.json", token=None).json
        yield Stack(api, fast, workers, resolv, doc)


def _ok(stack: Stack, method: str, template: str, resp, status: int = 200):
    assert resp.status == status, (resp.status, resp.raw[:500])
    check_against_document(stack.doc, method, template, resp)
    return resp.json


def _total(stack: Stack) -> int:
    return stack.http(READ).get("/api/v1/jobs?limit=1").json["total_items"]


# ---------------------------------------------------------------- system


@pytest.mark.parametrize("what, keys", [
    ("hostname", {"hostname", "labels"}),
    ("status", {"hostname", "uptime", "uptime_seconds", "load_average", "memory", "disks", "os_info"}),
    ("uptime", {"hostname", "uptime", "uptime_seconds"}),
    ("os", {"hostname", "distribution", "version"}),
    ("disk", {"hostname", "disks"}),
    ("memory", {"hostname", "total", "free", "used"}),
    ("load", {"hostname", "1min", "5min", "15min"}),
])
def test_system_endpoints_any(stack, what, keys):
    body = _ok(stack, "GET", f"/api/v1/system/{what}", stack.http(READ).get(f"/api/v1/system/{what}"))
    assert len(body["results"]) == 1
    item = body["results"][0]
    assert set(item) >= keys, item
    assert item["hostname"] in HOSTS
    assert len(body["job_id"]) >= 32


def test_status_shape_details(stack):
    item = stack.http(READ).get("/api/v1/system/status?target_hostname=api-w1").json["results"][0]
    assert item["hostname"] == "api-w1"
    assert item["memory"]["total"] >= item["memory"]["free"] > 0
    assert all(set(d) == {"name", "device", "fstype", "total", "used", "free"} for d in item["disks"])
    assert set(item["load_average"]) == {"1min", "5min", "15min"}


def test_named_host_and_labels_of_hostname(stack):
    body = stack.http(READ).get("/api/v1/system/hostname?target_hostname=api-w2").json
    assert body["results"] == [{"hostname": "api-w2", "labels": {"group": "web.prod"}}]


def test_broadcast_all_answers_from_every_worker_without_the_quiet_period(stack):
    started = time.monotonic()
    body = _ok(stack, "GET", "/api/v1/system/hostname",
               stack.http(READ).get("/api/v1/system/hostname?target_hostname=_all"))
    elapsed = time.monotonic() - started
    assert {r["hostname"] for r in body["results"]} == HOSTS
    assert elapsed < QUIET, f"broadcast took {elapsed:.1f}s: it waited for the quiet period"


@pytest.mark.parametrize("target, hosts", [
    ("group:web", HOSTS),
    ("group:web.dev", {"api-w1"}),
    ("group:web.prod", {"api-w2"}),
])
def test_label_targets(stack, target, hosts):
    body = stack.http(READ).get(f"/api/v1/system/uptime?target_hostname={target}").json
    assert {r["hostname"] for r in body["results"]} == hosts


# ---------------------------------------------------------------- network


def test_dns_get_and_update_on_one_host(stack):
    http = stack.http(WRITE)
    got = _ok(stack, "GET", "/api/v1/network/dns/{interface_name}",
              http.get("/api/v1/network/dns/lo?target_hostname=api-w1"))
    assert got["results"] == [{"hostname": "api-w1", "servers": ["192.0.2.1"], "search_domains": ["example.test"]}]

    put = http.request("PUT", "/api/v1/network/dns?target_hostname=api-w1",
                       {"interface_name": "lo", "servers": ["192.0.2.53", "2001:db8::53"]})
    body = _ok(stack, "PUT", "/api/v1/network/dns", put, 202)
    assert body["results"] == [{"hostname": "api-w1", "status": "ok", "changed": True}]
    text = stack.resolv["api-w1"].read_text()
    assert "nameserver 192.0.2.53\nnameserver 2001:db8::53\n" in text
    assert "options ndots:2" in text and "search example.test" in text
    assert stack.resolv["api-w2"].read_text() == RESOLV  # the other host is untouched

    again = http.request("PUT", "/api/v1/network/dns?target_hostname=api-w1",
                         {"interface_name": "lo", "servers": ["192.0.2.53", "2001:db8::53"]})
    assert _ok(stack, "PUT", "/api/v1/network/dns", again, 202)["results"][0]["changed"] is False

    # the target is the query parameter only: in the body it is refused, and nothing is stored
    total = _total(stack)
    for query in ("", "?target_hostname=api-w1"):
        moved = http.request("PUT", f"/api/v1/network/dns{query}",
                             {"interface_name": "lo", "servers": ["192.0.2.99"], "target_hostname": "api-w1"})
        err = _ok(stack, "PUT", "/api/v1/network/dns", moved, 400)
        assert err["error"] == "unexpected field target_hostname in the request body", err
    assert _total(stack) == total
    assert "192.0.2.99" not in stack.resolv["api-w1"].read_text()


def test_dns_update_broadcast_and_failure_per_host(stack):
    http = stack.http(ADMIN)
    put = http.request("PUT", "/api/v1/network/dns?target_hostname=_all",
                       {"interface_name": "lo", "search_domains": ["corp.test"]})
    body = _ok(stack, "PUT", "/api/v1/network/dns", put, 202)
    assert {r["hostname"] for r in body["results"]} == HOSTS
    assert all(r["status"] == "ok" for r in body["results"])
    for path in stack.resolv.values():
        assert "search corp.test" in path.read_text()

    before = stack.resolv["api-w2"].read_text()
    bad = http.request("PUT", "/api/v1/network/dns?target_hostname=api-w2",
                       {"interface_name": "nosuch0", "servers": ["192.0.2.9"]})
    result = _ok(stack, "PUT", "/api/v1/network/dns", bad, 202)["results"]
    assert len(result) == 1 and result[0]["hostname"] == "api-w2" and result[0]["status"] == "failed"
    assert "nosuch0" in result[0]["error"]
    assert stack.resolv["api-w2"].read_text() == before


def _file_state(path: Path) -> tuple:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino, sorted(p.name for p in path.parent.iterdir())


def test_dns_dry_run_through_put_leaves_every_file_byte_identical(stack):
    http = stack.http(WRITE)
    current = {h: http.get(f"/api/v1/network/dns/lo?target_hostname={h}").json["results"][0] for h in HOSTS}
    files = {h: _file_state(p) for h, p in stack.resolv.items()}
    put = http.request("PUT", "/api/v1/network/dns?target_hostname=_all",
                       {"interface_name": "lo", "servers": ["198.51.100.77"], "dry_run": True})
    body = _ok(stack, "PUT", "/api/v1/network/dns", put, 202)
    assert {r["hostname"] for r in body["results"]} == HOSTS
    for item in body["results"]:
        was = {k: current[item["hostname"]][k] for k in ("servers", "search_domains")}
        assert item == {"hostname": item["hostname"], "status": "ok", "changed": True, "dry_run": True,
                        "before": was, "after": {**was, "servers": ["198.51.100.77"]}}
    assert {h: _file_state(p) for h, p in stack.resolv.items()} == files  # bytes, mtime, inode, no temp file
    job = http.get(f"/api/v1/jobs/{body['job_id']}").json
    assert job["operation"]["data"]["dry_run"] is True  # the stored job says it was a dry run

    # dry_run: false is an ordinary update
    off = http.request("PUT", "/api/v1/network/dns?target_hostname=api-w1",
                       {"interface_name": "lo", "servers": current["api-w1"]["servers"], "dry_run": False})
    assert _ok(stack, "PUT", "/api/v1/network/dns", off, 202)["results"] == [
        {"hostname": "api-w1", "status": "ok", "changed": False}]


def test_dns_dry_run_through_post_jobs_leaves_the_file_byte_identical(stack):
    http = stack.http(WRITE)
    files = {h: _file_state(p) for h, p in stack.resolv.items()}
    created = http.request("POST", "/api/v1/jobs", {
        "operation": {"type": "network.dns.update", "data": {"interface_name": "lo", "search_domains": []}},
        "target_hostname": "api-w2", "dry_run": True})
    job_id = _ok(stack, "POST", "/api/v1/jobs", created, 201)["job_id"]

    def done():
        job = http.get(f"/api/v1/jobs/{job_id}").json
        return job if job["status"] in ("completed", "failed") else None

    job = wait_for(done, timeout=20, what="dry-run job finished")
    _ok(stack, "GET", "/api/v1/jobs/{job_id}", http.get(f"/api/v1/jobs/{job_id}"))
    assert job["status"] == "completed", job
    assert job["operation"] == {"type": "network.dns.update",
                                "data": {"interface_name": "lo", "search_domains": [], "dry_run": True}}
    result = job["responses"]["api-w2"]["data"]
    assert result["dry_run"] is True and result["after"]["search_domains"] == []
    assert result["changed"] is (result["before"]["search_domains"] != [])
    assert {h: _file_state(p) for h, p in stack.resolv.items()} == files


def test_ping_loopback(stack):
    resp = stack.http(WRITE).request("POST", "/api/v1/network/ping?target_hostname=api-w1",
                                     {"address": "127.0.0.1", "count": 1})
    item = _ok(stack, "POST", "/api/v1/network/ping", resp)["results"][0]
    assert item["hostname"] == "api-w1"
    assert item["packets_sent"] == 1 and item["packets_received"] == 1 and item["packet_loss"] == 0


# ---------------------------------------------------------------- jobs


def test_job_lifecycle(stack):
    http = stack.http(ADMIN)
    before = _total(stack)
    created = http.request("POST", "/api/v1/jobs",
                           {"operation": {"type": "system.load.get", "data": {}}, "target_hostname": "api-w1"})
    body = _ok(stack, "POST", "/api/v1/jobs", created, 201)
    job_id = body["job_id"]
    assert body["status"] == "submitted"
    assert created.header("location") == f"/api/v1/jobs/{job_id}"

    def done():
        job = http.get(f"/api/v1/jobs/{job_id}")
        return job if job.json["status"] == "completed" else None

    job = done() or wait_for(done, timeout=20, what="job completed")
    data = _ok(stack, "GET", "/api/v1/jobs/{job_id}", job)
    assert data["id"] == job_id and data["target_hostname"] == "api-w1"
    assert data["operation"] == {"type": "system.load.get", "data": {}}
    assert data["responses"]["api-w1"]["status"] == "ok"
    assert data["worker_states"]["api-w1"]["status"] == "completed"
    assert data["hostname"] == "api-w1" and set(data["result"]) == {"1min", "5min", "15min"}
    assert [e["event"] for e in data["timeline"]][0] == "submitted"

    listing = _ok(stack, "GET", "/api/v1/jobs", http.get("/api/v1/jobs?limit=5"))
    assert listing["total_items"] == before + 1
    assert listing["items"][0]["id"] == job_id  # newest first
    assert len(listing["items"]) <= 5
    only = http.get("/api/v1/jobs?status=completed&limit=1000").json
    assert all(item["status"] == "completed" for item in only["items"])
    assert job_id in {item["id"] for item in only["items"]}
    page = http.get(f"/api/v1/jobs?limit=1&offset={listing['total_items'] - 1}").json
    assert len(page["items"]) == 1
    assert http.get(f"/api/v1/jobs?offset={listing['total_items'] + 5}").json["items"] == []

    stats = _ok(stack, "GET", "/api/v1/jobs/status", http.get("/api/v1/jobs/status"))
    assert stats["total_jobs"] >= 1 and stats["operation_counts"].get("system.load.get", 0) >= 1

    deleted = http.request("DELETE", f"/api/v1/jobs/{job_id}")
    _ok(stack, "DELETE", "/api/v1/jobs/{job_id}", deleted, 204)
    assert deleted.raw == b""
    gone = http.get(f"/api/v1/jobs/{job_id}")
    _ok(stack, "GET", "/api/v1/jobs/{job_id}", gone, 404)
    assert job_id in gone.json["details"]
    _ok(stack, "DELETE", "/api/v1/jobs/{job_id}", http.request("DELETE", f"/api/v1/jobs/{job_id}"), 404)
    assert _total(stack) == before


# ---------------------------------------------------------------- idempotency keys


def _keys_stored(stack) -> int:
    """Entries of the idempotency bucket, read through a NATS monitoring-free route: its stream info."""
    import asyncio

    from osapi import config
    from osapi.job.connection import close, connect

    cfg = config.load(None, stack.api.env)

    async def count() -> int:
        nc = await connect(cfg, "test-keys")
        try:
            info = await nc.jetstream().stream_info(f"KV_{cfg.job.kv_bucket}-idempotency")
            return info.state.messages
        finally:
            await close(nc)

    return asyncio.run(count())


HOSTNAME_JOB = {"operation": {"type": "system.hostname.get", "data": {}}, "target_hostname": "api-w1"}


def test_the_same_idempotency_key_twice_gives_one_job_on_every_api_process(stack):
    key = "retry-after-timeout-1"
    before = _total(stack)
    first = stack.http(WRITE).request("POST", "/api/v1/jobs", HOSTNAME_JOB, headers={"Idempotency-Key": key})
    created = _ok(stack, "POST", "/api/v1/jobs", first, 201)
    assert first.header("idempotent-replayed") is None
    stored = _keys_stored(stack)
    # the same request, written differently (defaults given, other key order), to this API and to another one
    same = {"target_hostname": "api-w1", "operation": {"data": {}, "type": "system.hostname.get"}}
    for api in (stack.api, stack.fast):
        again = api.http(WRITE).request("POST", "/api/v1/jobs", same, headers={"Idempotency-Key": key})
        assert _ok(stack, "POST", "/api/v1/jobs", again, 200) == created
        assert again.header("idempotent-replayed") == "true"
        assert again.header("location") == f"/api/v1/jobs/{created['job_id']}"
    assert _total(stack) == before + 1 and _keys_stored(stack) == stored  # one job; a replay stores nothing

    # the same key with another request: 422, nothing stored
    other = stack.http(WRITE).request("POST", "/api/v1/jobs", {**HOSTNAME_JOB, "target_hostname": "api-w2"},
                                      headers={"Idempotency-Key": key})
    err = _ok(stack, "POST", "/api/v1/jobs", other, 422)
    assert "different request body" in err["details"]
    # another token subject has its own keys
    mine = stack.http(ADMIN).request("POST", "/api/v1/jobs", HOSTNAME_JOB, headers={"Idempotency-Key": key})
    assert _ok(stack, "POST", "/api/v1/jobs", mine, 201)["job_id"] != created["job_id"]
    assert _total(stack) == before + 2


def _post_with_key(stack, key: bytes) -> bytes:
    """POST /jobs with the raw header bytes ``key`` (http.client would refuse some of them)."""
    body = json.dumps(HOSTNAME_JOB).encode()
    raw = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode()
           + b"\r\nIdempotency-Key: " + key + b"\r\nContent-Type: application/json\r\n"
           + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", stack.api.port), timeout=10) as sock:
        sock.sendall(raw)
        return recv_all(sock)


@pytest.mark.parametrize("key", [b"", b" ", b"x" * 201, "caf\u00e9".encode("latin-1"), "caf\u00e9".encode(),
                                 b"a\tb", b"*"])
def test_a_bad_idempotency_key_is_400_and_stores_nothing(stack, key):
    before, stored = _total(stack), _keys_stored(stack)
    head, _, payload = _post_with_key(stack, key).partition(b"\r\n\r\n")
    if key == b"*":  # a wildcard is an ordinary character of a key: it never reaches a subject
        assert head.startswith(b"HTTP/1.1 201"), head
        assert _total(stack) == before + 1
        return
    assert head.startswith(b"HTTP/1.1 400"), head
    body = json.loads(payload)
    assert body["error"] == "invalid header Idempotency-Key" and "\n" not in body["details"], body
    assert _total(stack) == before and _keys_stored(stack) == stored


@pytest.mark.parametrize("value", [b"a\x00b", b"a\nb", b"a\rb", b"a\x7fb", b"\xff\xfe"])
def test_control_bytes_in_an_idempotency_key_never_make_a_job(stack, value):
    before, stored = _total(stack), _keys_stored(stack)
    answer = _post_with_key(stack, value)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:300]  # Waitress or the API: no job
    assert _total(stack) == before and _keys_stored(stack) == stored


def test_unknown_job_is_404(stack):
    resp = stack.http(READ).get("/api/v1/jobs/00000000-0000-4000-8000-000000000000")
    body = _ok(stack, "GET", "/api/v1/jobs/{job_id}", resp, 404)
    assert body["error"] == "job not found" and "not found" not in body["details"]
    assert body["details"].startswith("no job 00000000-0000-4000-8000-000000000000: never submitted")


def test_workers(stack):
    body = _ok(stack, "GET", "/api/v1/jobs/workers", stack.http(READ).get("/api/v1/jobs/workers"))
    by_host = {w["hostname"]: w for w in body["workers"]}
    assert set(by_host) >= HOSTS and body["total"] == len(body["workers"])
    assert by_host["api-w1"]["labels"] == {"group": "web.dev"}
    assert by_host["api-w1"]["version"] == __version__


# ---------------------------------------------------------------- health, version, document


def test_health_family(stack):
    http = stack.http(None)
    _ok(stack, "GET", "/health", http.get("/health", token=None))
    assert _ok(stack, "GET", "/health/ready", http.get("/health/ready", token=None)) == {"status": "ready"}
    assert _ok(stack, "GET", "/api/v1/version", http.get("/api/v1/version", token=None)) == {"version": __version__}
    assert http.get("/health/status", token=None).status == 401
    status = _ok(stack, "GET", "/health/status", stack.http(READ).get("/health/status"))
    assert status["status"] == "ok" and status["version"] == __version__
    assert status["components"]["nats"]["status"] == "ok" and status["components"]["kv"]["status"] == "ok"
    assert status["jobs"]["total_jobs"] >= 0 and status["uptime_seconds"] > 0
    assert status["jobs"]["stale"] is False and "error" not in status["jobs"] and "as_of" not in status["jobs"]


def test_served_document_lists_every_route(stack):
    assert stack.doc["info"]["version"] == __version__
    documented = {(m.upper(), p) for p, ops in stack.doc["paths"].items() for m in ops}
    served = {(r.method, r.full_path) for r in all_routes()}
    assert documented == served


# ---------------------------------------------------------------- 504


def test_no_such_host_is_404_and_the_job_stays(stack):
    """A typo'd hostname is the caller's error (404), never a 5xx that HTTP clients retry."""
    resp = stack.fast.http(READ).get("/api/v1/system/hostname?target_hostname=no-such-host.example")
    body = _ok(stack, "GET", "/api/v1/system/hostname", resp, 404)
    assert body["code"] == 404 and body["job_id"]
    # the category once, in error; the fact in details (which target, which job, how long)
    assert body["error"] == "no live worker matches target"
    assert body["details"].startswith("'no-such-host.example' names no registered worker host or label; job "
                                      + body["job_id"] + " stays queued")
    assert "matches" not in body["details"] and "1s" in body["details"]
    job = stack.http(READ).get(f"/api/v1/jobs/{body['job_id']}").json
    assert job["target_hostname"] == "no-such-host.example" and job["status"] == "submitted"


# ---------------------------------------------------------------- bad input leaves nothing


BAD_REQUESTS = [
    ("POST", "/api/v1/jobs", b"{oops", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", b"", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", b"[1, 2]", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.reboot.do"}}).encode(), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "network.ping.do", "data": {"address": 5}}}).encode(),
     "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"},
                                         "target_hostname": "bad target!"}).encode(), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"},
                                         "target_hostname": "group:"}).encode(), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"},
                                         "target_hostname": "grou p:web"}).encode(), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"}, "priority": 1}).encode(),
     "/api/v1/jobs"),
    ("POST", "/api/v1/network/ping", json.dumps({"address": "127.0.0.1", "count": 99}).encode(),
     "/api/v1/network/ping"),
    ("POST", "/api/v1/network/ping?target_hostname=a..b", json.dumps({"address": "127.0.0.1"}).encode(),
     "/api/v1/network/ping"),
    ("POST", "/api/v1/network/ping?target_hostname=api-w1",
     json.dumps({"address": "127.0.0.1", "target_hostname": "api-w2"}).encode(), "/api/v1/network/ping"),
    ("PUT", "/api/v1/network/dns", json.dumps({"interface_name": "lo"}).encode(), "/api/v1/network/dns"),
    ("PUT", "/api/v1/network/dns", json.dumps({"interface_name": "lo", "servers": ["999.1.1.1"]}).encode(),
     "/api/v1/network/dns"),
    # dry run: a boolean, and only for a modify operation
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"}, "dry_run": True}).encode(),
     "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "system.load.get"}, "dry_run": False}).encode(),
     "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "network.dns.update", "data": {
        "interface_name": "lo", "servers": ["192.0.2.9"]}}, "dry_run": "yes"}).encode(), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", json.dumps({"operation": {"type": "network.dns.update", "data": {
        "interface_name": "lo", "servers": ["192.0.2.9"], "dry_run": True}}}).encode(), "/api/v1/jobs"),
    ("PUT", "/api/v1/network/dns?target_hostname=api-w1",
     json.dumps({"interface_name": "lo", "servers": ["192.0.2.9"], "dry_run": "true"}).encode(), "/api/v1/network/dns"),
    ("PUT", "/api/v1/network/dns?target_hostname=api-w1",
     json.dumps({"interface_name": "lo", "servers": ["192.0.2.9"], "dry_run": None}).encode(), "/api/v1/network/dns"),
    ("POST", "/api/v1/network/ping?target_hostname=api-w1",
     json.dumps({"address": "127.0.0.1", "dry_run": True}).encode(), "/api/v1/network/ping"),
    ("GET", "/api/v1/system/hostname?target_hostname=label:", None, "/api/v1/system/hostname"),
    ("GET", "/api/v1/system/hostname?target_hostname=*", None, "/api/v1/system/hostname"),
    ("GET", "/api/v1/system/hostname?target_hostname=jobs.>", None, "/api/v1/system/hostname"),
    ("GET", "/api/v1/system/hostname?host=api-w1", None, "/api/v1/system/hostname"),
    ("GET", "/api/v1/network/dns/bad%21name", None, "/api/v1/network/dns/{interface_name}"),
    ("GET", "/api/v1/jobs?limit=5000", None, "/api/v1/jobs"),
    ("GET", "/api/v1/jobs?status=finished", None, "/api/v1/jobs"),
    ("GET", "/api/v1/jobs?offset=x", None, "/api/v1/jobs"),
]


@pytest.mark.parametrize("method, path, raw, template", BAD_REQUESTS,
                         ids=[f"{m} {p} {(r or b'')[:40]!r}" for m, p, r, _ in BAD_REQUESTS])
def test_bad_input_is_400_and_stores_nothing(stack, method, path, raw, template):
    before = _total(stack)
    resp = stack.http(ADMIN).request(method, path, raw=raw, headers={"Content-Type": "application/json"})
    body = _ok(stack, method, template, resp, 400)
    assert body["error"] and body["details"]
    assert _total(stack) == before


INJECTED = "fe80::1%lo\noptions debug ndots:15\nnameserver 127.0.0.9"


def _job(op_type: str, data: dict, target: str = "_any") -> bytes:
    return json.dumps({"operation": {"type": op_type, "data": data}, "target_hostname": target}).encode()


HOSTILE_REQUESTS = [
    # resolv.conf line injection through an IPv6 zone id, on both ways in
    ("PUT", "/api/v1/network/dns?target_hostname=api-w1",
     json.dumps({"interface_name": "lo", "servers": [INJECTED]}).encode(), "/api/v1/network/dns"),
    ("POST", "/api/v1/jobs", _job("network.dns.update", {"interface_name": "lo", "servers": [INJECTED]}, "api-w1"),
     "/api/v1/jobs"),
    ("PUT", "/api/v1/network/dns", json.dumps({"interface_name": "lo", "servers": ["fe80::1%a b"]}).encode(),
     "/api/v1/network/dns"),
    ("PUT", "/api/v1/network/dns",
     json.dumps({"interface_name": "lo", "search_domains": ["a.example\nnameserver 127.0.0.9"]}).encode(),
     "/api/v1/network/dns"),
    ("POST", "/api/v1/network/ping", json.dumps({"address": "fe80::1%lo\nx"}).encode(), "/api/v1/network/ping"),
    # interface names Linux refuses, and a trailing newline
    ("GET", "/api/v1/network/dns/lo%0A", None, "/api/v1/network/dns/{interface_name}"),
    ("GET", "/api/v1/network/dns/.", None, "/api/v1/network/dns/{interface_name}"),
    ("GET", "/api/v1/network/dns/..", None, "/api/v1/network/dns/{interface_name}"),
    ("PUT", "/api/v1/network/dns", json.dumps({"interface_name": "lo\n", "servers": ["192.0.2.9"]}).encode(),
     "/api/v1/network/dns"),
    ("PUT", "/api/v1/network/dns", json.dumps({"interface_name": "..", "servers": ["192.0.2.9"]}).encode(),
     "/api/v1/network/dns"),
    ("POST", "/api/v1/jobs", _job("network.dns.get", {"interface_name": "lo\n"}), "/api/v1/jobs"),
    ("POST", "/api/v1/jobs", _job("network.dns.get", {"interface_name": "."}), "/api/v1/jobs"),
    # a newline inside a target would reach a NATS subject
    ("POST", "/api/v1/jobs", _job("system.load.get", {}, "group\n:web"), "/api/v1/jobs"),
    ("GET", "/api/v1/system/hostname?target_hostname=group:web%0A.dev", None, "/api/v1/system/hostname"),
]


@pytest.mark.parametrize("method, path, raw, template", HOSTILE_REQUESTS,
                         ids=[f"{m} {p} {(r or b'')[:60]!r}" for m, p, r, _ in HOSTILE_REQUESTS])
def test_hostile_values_are_400_store_nothing_and_leave_resolv_conf(stack, method, path, raw, template):
    before = _total(stack)
    files = {host: path.read_text() for host, path in stack.resolv.items()}
    resp = stack.http(ADMIN).request(method, path, raw=raw, headers={"Content-Type": "application/json"})
    body = _ok(stack, method, template, resp, 400)
    assert body["error"] and body["details"]
    assert "\n" not in body["details"]  # the value is quoted (repr), never a raw newline
    assert _total(stack) == before
    assert {host: path.read_text() for host, path in stack.resolv.items()} == files


def test_a_job_id_with_a_trailing_newline_is_400(stack):
    job = stack.http(ADMIN).request("POST", "/api/v1/jobs", {"operation": {"type": "system.load.get"}}).json
    job_id = job["job_id"]
    assert stack.http(READ).get(f"/api/v1/jobs/{job_id}").status == 200
    resp = stack.http(READ).get(f"/api/v1/jobs/{job_id}%0A")
    assert _ok(stack, "GET", "/api/v1/jobs/{job_id}", resp, 400)["error"] == "invalid job_id"


def test_oversized_body_is_413_envelope_and_stores_nothing(stack):
    before = _total(stack)
    # a declared length over 1 MiB: refused before the body is read
    with socket.create_connection(("127.0.0.1", stack.api.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{")
        answer = recv_all(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(payload) == {"error": "request body too large",
                                   "details": "the limit is 1048576 bytes (1 MiB)", "code": 413}
    # a chunked body that grows past 1 MiB
    with socket.create_connection(("127.0.0.1", stack.api.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server may close once it has refused
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert _total(stack) == before


def test_unknown_route_and_method_through_waitress(stack):
    http = stack.http(ADMIN)
    resp = http.get("/api/v2/jobs")
    assert resp.status == 404 and resp.json["code"] == 404
    resp = http.request("PATCH", "/api/v1/network/dns")
    assert resp.status == 405 and resp.header("allow") == "PUT" and resp.json["code"] == 405


# ---------------------------------------------------------------- auth matrix through the server


def _claims_token(**over) -> str:
    import jwt

    from testkit import SIGNING_KEY

    now = int(time.time())
    payload = {"sub": "x", "roles": ["admin"], "iat": now, "exp": now + 600, "iss": "osapi", **over}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, SIGNING_KEY, algorithm="HS256")


AUTH_CASES = {
    "no token": None,
    "wrong key": make_token(key="some-other-signing-key-" + "q" * 32),
    "expired": make_token(now=time.time() - 7200, expires_in=60),
    "missing exp": _claims_token(exp=None),
    "alg none": __import__("jwt").encode({"sub": "x", "roles": ["admin"], "iat": 1, "exp": 4102444800,
                                          "iss": "osapi"}, None, algorithm="none"),
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
@pytest.mark.parametrize("method, path", [("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"),
                                          ("GET", "/api/v1/system/hostname"), ("GET", "/health/status")])
def test_401_matrix(stack, case, method, path):
    before = _total(stack)
    token = AUTH_CASES[case]
    resp = stack.http().request(method, path, {"operation": {"type": "system.load.get"}} if method == "POST" else None,
                                token=token)
    assert resp.status == 401, resp.raw
    assert resp.header("www-authenticate").startswith("Bearer")
    assert resp.json["code"] == 401 and resp.json["details"]
    assert _total(stack) == before


@pytest.mark.parametrize("header", ["Basic YTpi", "Bearer", "Bearer a b", "Bearer abc.def"])
def test_malformed_authorization_header_is_401(stack, header):
    resp = stack.http().get("/api/v1/jobs", token=None, headers={"Authorization": header})
    assert resp.status == 401 and resp.header("www-authenticate").startswith("Bearer")


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v1/jobs", {"operation": {"type": "system.load.get"}}),
    ("PUT", "/api/v1/network/dns", {"interface_name": "lo", "servers": ["192.0.2.7"]}),
    ("POST", "/api/v1/network/ping", {"address": "127.0.0.1"}),
    ("DELETE", "/api/v1/jobs/00000000-0000-4000-8000-000000000000", None),
])
def test_read_token_on_write_route_is_403(stack, method, path, body):
    before = _total(stack)
    resp = stack.http(READ).request(method, path, body)
    assert resp.status == 403 and "write" in resp.json["error"]
    assert _total(stack) == before


# ---------------------------------------------------------------- CORS through the server


def test_cors(stack):
    http = stack.http(READ)
    allowed = http.get("/api/v1/jobs/status", headers={"Origin": "https://ui.example"})
    assert allowed.status == 200
    assert allowed.header("access-control-allow-origin") == "https://ui.example" and allowed.header("vary") == "Origin"
    denied = http.get("/api/v1/jobs/status", headers={"Origin": "https://evil.example"})
    assert denied.status == 200 and denied.header("access-control-allow-origin") is None
    pre = http.request("OPTIONS", "/api/v1/jobs", token=None, headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert pre.status == 204
    assert pre.header("access-control-allow-methods") == "GET, OPTIONS, POST"
    assert pre.header("access-control-allow-headers") == "Authorization, Content-Type, Idempotency-Key"
    assert pre.header("access-control-allow-origin") == "https://ui.example"
    no_cors = stack.fast.http(READ).get("/api/v1/version", headers={"Origin": "https://ui.example"})
    assert no_cors.header("access-control-allow-origin") is None  # empty allow_origins


def test_access_log(stack):
    stack.http(READ).get("/api/v1/jobs/status")
    log = stack.api.log()
    assert "path=/api/v1/jobs/status status=200" in log and "subject=reader" in log
    assert READ not in log and ADMIN not in log


# ---------------------------------------------------------------- operations added through the table


NEW_OPERATIONS = {
    "/api/v1/network/interfaces": ("interfaces", {"name", "mac", "mtu", "up", "addresses"}),
    "/api/v1/system/processes": ("processes", {"pid", "name", "user", "cpu_percent", "memory_rss", "status",
                                               "started_at"}),
    "/api/v1/system/users": ("users", {"name", "uid", "gid", "home", "shell"}),
}


@pytest.mark.parametrize("path", list(NEW_OPERATIONS))
@pytest.mark.parametrize("target, hosts", [
    (None, None), ("_any", None), ("_all", HOSTS), ("api-w1", {"api-w1"}), ("group:web.prod", {"api-w2"}),
    ("group:web", HOSTS),
])
def test_new_operations_answer_for_every_target_form(stack, path, target, hosts):
    query = "" if target is None else f"?target_hostname={target}"
    body = _ok(stack, "GET", path, stack.http(READ).get(path + query))
    found = {r["hostname"] for r in body["results"]}
    if hosts is None:
        assert len(found) == 1 and found <= HOSTS
    else:
        assert found == hosts
    field, keys = NEW_OPERATIONS[path]
    for item in body["results"]:
        assert set(item) == {"hostname", field} and item[field]
        assert all(set(entry) == keys for entry in item[field])


def test_processes_sort_and_limit(stack):
    body = _ok(stack, "GET", "/api/v1/system/processes",
               stack.http(READ).get("/api/v1/system/processes?target_hostname=_all&sort=cpu&limit=3"))
    for item in body["results"]:
        cpu = [p["cpu_percent"] for p in item["processes"]]
        assert 1 <= len(cpu) <= 3 and cpu == sorted(cpu, reverse=True)
    item = stack.http(READ).get("/api/v1/system/processes?target_hostname=api-w1").json["results"][0]
    rss = [p["memory_rss"] or 0 for p in item["processes"]]
    assert 1 <= len(rss) <= 10 and rss == sorted(rss, reverse=True)  # defaults: memory, 10


def test_users_and_interfaces_are_the_hosts(stack):
    users = stack.http(READ).get("/api/v1/system/users?target_hostname=api-w1").json["results"][0]["users"]
    assert {"name": "root", "uid": 0, "gid": 0} == {k: v for k, v in users[0].items() if k in ("name", "uid", "gid")}
    assert "x" not in {value for user in users for value in user.values()}  # no password field of /etc/passwd
    ifaces = stack.http(READ).get("/api/v1/network/interfaces?target_hostname=api-w2").json["results"][0]
    lo = next(i for i in ifaces["interfaces"] if i["name"] == "lo")
    assert lo["up"] and {"family": "inet", "address": "127.0.0.1", "prefixlen": 8} in lo["addresses"]


@pytest.mark.parametrize("query, details", [
    ("limit=0", "limit must be from 1 to 100, got 0"),
    ("limit=101", "limit must be from 1 to 100, got 101"),
    ("limit=-1", "limit must be a whole number from 1 to 100"),
    ("limit=1.5", "limit must be a whole number from 1 to 100"),
    ("limit=abc", "limit must be a whole number from 1 to 100"),
    ("limit=", "limit must be a whole number from 1 to 100"),
    ("limit=5&limit=6", "given more than once"),
    ("sort=name", "sort must be one of memory, cpu, got 'name'"),
    ("sort=cpu%0A", "sort must be one of memory, cpu"),
    ("sort=cpu%00", "sort must be one of memory, cpu"),
    ("sort=*", "sort must be one of memory, cpu"),
    ("sort=..%2Fcpu", "sort must be one of memory, cpu"),
    ("pid=1", "accepts: target_hostname, sort, limit"),
])
def test_processes_bad_query_is_400_and_submits_nothing(stack, query, details):
    before = _total(stack)
    body = _ok(stack, "GET", "/api/v1/system/processes",
               stack.http(READ).get(f"/api/v1/system/processes?{query}"), 400)
    assert details in body["details"]
    assert _total(stack) == before


@pytest.mark.parametrize("path", ["/api/v1/system/users", "/api/v1/network/interfaces"])
def test_users_and_interfaces_take_no_query_but_the_target(stack, path):
    before = _total(stack)
    body = _ok(stack, "GET", path, stack.http(READ).get(f"{path}?limit=1"), 400)
    assert body["error"] == "unknown query parameter limit"
    assert _total(stack) == before


def test_processes_data_through_post_jobs(stack):
    http = stack.http(WRITE)
    before = _total(stack)
    for data in ({"limit": 0}, {"sort": "name"}, {"limit": "5"}, {"limit": None}, {"top": 1}):
        resp = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.processes.get", "data": data},
                                                     "target_hostname": "api-w1"})
        assert resp.status == 400, (data, resp.json)
    assert _total(stack) == before
    resp = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.processes.get",
                                                               "data": {"sort": "cpu", "limit": 2}},
                                                 "target_hostname": "api-w1"})
    assert resp.status == 201, resp.json
    job_id = resp.json["job_id"]
    job = wait_for(lambda: (lambda j: j if j["status"] == "completed" else None)(
        http.get(f"/api/v1/jobs/{job_id}").json), timeout=30, what="the processes job completed")
    assert job["operation"]["data"] == {"sort": "cpu", "limit": 2}
    assert len(job["responses"]["api-w1"]["data"]["processes"]) <= 2
