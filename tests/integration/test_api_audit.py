"""The audit log (docs/api.md, Audit log) end to end: real nats-server, worker, API and CLI.

One entry per request to ``/api/v1…`` and ``/health/status``, refused ones
included; values from the request are data (a forged path stays one entry); no
token or body in it; entries written while NATS is away are stored once it is back.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from api_support import check_against_document
from testkit import Stack, make_token, wait_for

ADMIN = make_token(["admin"], subject="audit-admin")
WRITE = make_token(["write"], subject="audit-writer")
HOST = "audit-w1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("audit")) as stack:
        stack.start_worker(HOST)
        api = stack.start_api()
        stack.wait_answering(HOST, api)
        yield api


def _since() -> str:
    """Now, to the microsecond: entries are stored (and timed by the stream) after their request."""
    now = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + f".{now % 10**9 // 1000:06d}Z"


def _entries(api, since: str, who: str | None = None, want: int | None = None) -> list[dict]:
    """Every entry since ``since`` but the audit reads themselves, oldest first; waits for ``want`` of them."""
    def read():
        query = f"since={since}&limit=1000" + (f"&subject={who}" if who else "")
        resp = api.http(ADMIN).get(f"/api/v1/audit?{query}")
        assert resp.status == 200, resp.raw
        items = [i for i in resp.json["items"] if not i["path"].startswith("/api/v1/audit")]
        return list(reversed(items))

    if want is None:
        return read()
    return wait_for(lambda: (got := read()) and len(got) >= want and got, 20, what=f"{want} audit entries")


def test_mixed_requests_make_exactly_one_entry_each(stack):
    api = stack
    tag = uuid.uuid4().hex[:8]
    reader = make_token(["read"], subject=f"reader-{tag}")
    secret_body = f"body-marker-{tag}"
    http = api.http(reader)
    job_id = str(uuid.uuid4())
    sent = [  # (method, path, body, token, expected status)
        ("GET", "/api/v1/jobs?limit=1", None, reader, 200),
        ("GET", "/api/v1/jobs", None, None, 401),
        ("GET", "/api/v1/jobs", None, reader + "x", 401),
        ("DELETE", f"/api/v1/jobs/{job_id}", None, reader, 403),
        ("GET", "/api/v1/jobs?limit=0", None, reader, 400),
        ("GET", f"/api/v1/nope-{tag}", None, reader, 404),
        ("PUT", "/api/v1/jobs", None, reader, 405),
        ("POST", "/api/v1/jobs", {"operation": {"type": "system.hostname.get", "data": {}},
                                  "target_hostname": HOST}, WRITE, 201),
        ("POST", "/api/v1/jobs", {"operation": {"type": "nope", "data": {"x": secret_body}}}, WRITE, 400),
        ("GET", f"/api/v1/system/hostname?target_hostname={HOST}", None, reader, 200),
        ("GET", "/health/status", None, reader, 200),
        ("GET", "/api/v1/version", None, None, 200),
    ]
    # entries are stored after their answer, in order: once a marker is stored, the entries of
    # earlier requests (earlier tests) are too, and none of them can fall after `since`
    marker = f"/api/v1/marker-{tag}"
    before = _since()
    assert http.get(marker).status == 404
    wait_for(lambda: any(e["path"] == marker for e in _entries(api, before)), 20, what="the marker's entry")
    since = _since()
    answers = []
    for method, path, body, token, status in sent:
        resp = http.request(method, path, body, token=token or False)
        assert resp.status == status, (method, path, resp.status, resp.raw)
        answers.append(resp)
    # not audited: outside /api/v1 and /health/status
    assert http.get("/health", token=False).status == 200
    assert http.get("/health/ready", token=False).status == 200

    entries = _entries(api, since, want=len(sent))
    time.sleep(0.5)  # an extra entry would have to arrive now
    entries = _entries(api, since)
    assert len(entries) == len(sent), [(e["method"], e["path"], e["status"]) for e in entries]
    for entry, (method, path, _body, token, status) in zip(entries, sent):
        assert (entry["method"], entry["path"], entry["status"]) == (method, path.split("?")[0], status)
        assert entry["source_ip"] == "127.0.0.1"
        assert isinstance(entry["duration_ms"], (int, float)) and entry["duration_ms"] >= 0
        assert entry["timestamp"].endswith("Z") and uuid.UUID(entry["id"])
        if token in (reader, WRITE):  # a valid token, whether the route needs one or not
            assert entry["subject"] == (f"reader-{tag}" if token == reader else "audit-writer"), entry
            assert entry["roles"] == (["read"] if token == reader else ["write"])
        elif token is None or token.endswith("x"):
            assert entry["subject"] is None and entry["roles"] == [], entry
    created = next(e for e in entries if e["status"] == 201)
    assert created["job_id"] == answers[7].json["job_id"]
    assert (created["operation"], created["target"]) == ("system.hostname.get", HOST)
    synchronous = next(e for e in entries if e["path"] == "/api/v1/system/hostname")
    assert synchronous["job_id"] == answers[9].json["job_id"] and synchronous["target"] == HOST
    assert "job_id" not in entries[0] and "operation" not in entries[0]
    text = json.dumps(entries)
    assert reader not in text and WRITE not in text and secret_body not in text
    assert "limit=" not in text  # no query strings
    # the subject filter: this test's reader only
    mine = _entries(api, since, who=f"reader-{tag}")
    assert [(e["method"], e["status"]) for e in mine] == [(m, s) for m, _p, _b, t, s in sent if t == reader]
    assert all(e["subject"] == f"reader-{tag}" for e in mine)
    # the status filter, and the page is what the document says
    resp = api.http(ADMIN).get(f"/api/v1/audit?since={since}&status=403")
    assert resp.status == 200 and [e["path"] for e in resp.json["items"]] == [f"/api/v1/jobs/{job_id}"]
    doc = api.http().get("/api/v1/openapi.json", token=False).json
    check_against_document(doc, "GET", "/api/v1/audit", resp)


@pytest.mark.parametrize("raw_path, stored", [
    ("/api/v1/jobs%0A{\"id\":\"forged\",\"status\":200}", "/api/v1/jobs\n{\"id\":\"forged\",\"status\":200}"),
    ("/api/v1/jobs%0D%0AX-Forged:%201", "/api/v1/jobs\r\nX-Forged: 1"),
    ("/api/v1/jobs%00nul", "/api/v1/jobs\x00nul"),
    ("/api/v1/jobs/%FF%FEbad", "/api/v1/jobs/\\xff\\xfebad"),
    ("/api/v1/" + "a" * 5000, "/api/v1/" + "a" * 1015 + "…"),
])
def test_a_hostile_path_stays_one_entry_stored_as_data(stack, raw_path, stored):
    api = stack
    who = f"hostile-{uuid.uuid4().hex[:8]}"
    since = _since()
    resp = api.http(make_token(["read"], subject=who)).get(raw_path)
    assert resp.status in (400, 404), resp.status
    [entry] = _entries(api, since, who=who, want=1)
    assert entry["path"] == stored and len(entry["path"]) <= 1024
    assert entry["status"] == resp.status and entry["subject"] == who
    assert "forged" != entry["id"]


def test_refused_query_parameters(stack):
    http = stack.http(ADMIN)
    for query in ("since=yesterday", "since=2024-02-30T00:00:00Z", "since=2024-01-01T24:00:00Z", "status=99",
                  "status=600", "limit=0", "limit=1001", "subject=", "offset=-1", "bogus=1"):
        resp = http.get(f"/api/v1/audit?{query}")
        assert resp.status == 400, (query, resp.raw)
        assert resp.json["code"] == 400 and resp.json["error"].startswith(("invalid query", "unknown query"))
    assert stack.http(make_token(["write"], subject="w")).get("/api/v1/audit").status == 403
    assert http.get("/api/v1/audit?since=2024-01-01T00:00:00.123456789%2B05:30&limit=1").status == 200
    future = http.get("/api/v1/audit?since=9999-12-31T23:59:59Z").json
    assert future == {"total_items": 0, "items": []}


def test_pages_newest_first_with_a_total(stack):
    api = stack
    who = f"pager-{uuid.uuid4().hex[:8]}"
    http = api.http(make_token(["read"], subject=who))
    since = _since()
    for i in range(7):
        assert http.get(f"/api/v1/jobs?limit={i + 1}").status == 200
    _entries(api, since, who=who, want=7)
    admin = api.http(ADMIN)
    first = admin.get(f"/api/v1/audit?subject={who}&limit=3").json
    second = admin.get(f"/api/v1/audit?subject={who}&limit=3&offset=3").json
    last = admin.get(f"/api/v1/audit?subject={who}&limit=3&offset=6").json
    assert first["total_items"] == second["total_items"] == last["total_items"] == 7
    ids = [e["id"] for e in first["items"] + second["items"] + last["items"]]
    assert len(ids) == len(set(ids)) == 7
    assert ids == sorted(ids, reverse=True)  # UUIDv7: newest first


def test_cli_audit_list_and_export(stack, cli):
    api = stack
    who = f"cli-{uuid.uuid4().hex[:8]}"
    http = api.http(make_token(["read"], subject=who))
    since = _since()
    for _ in range(3):
        assert http.get("/api/v1/jobs/status").status == 200
    _entries(api, since, who=who, want=3)
    env = {"OSAPI_API_CLIENT_URL": f"http://127.0.0.1:{api.port}", "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN": ADMIN}
    listed = cli("client", "audit", "list", "--subject", who, "--limit", "2", env=env)
    assert listed.status == 0, listed.stderr
    assert listed.stdout.count("/api/v1/jobs/status") == 2 and who in listed.stdout
    as_json = cli("client", "audit", "list", "--subject", who, "--json", env=env)
    assert as_json.status == 0 and json.loads(as_json.stdout)["total_items"] == 3
    exported = cli("client", "audit", "export", "--since", since, env=env)
    assert exported.status == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    mine = [e for e in lines if e["subject"] == who]
    assert len(mine) == 3 and all(e["path"] == "/api/v1/jobs/status" for e in mine)
    assert [e["id"] for e in lines] == sorted(e["id"] for e in lines)  # oldest first
    bad = cli("client", "audit", "list", "--since", "yesterday", env=env)
    assert bad.status == 2 and "--since" in bad.stderr and bad.stdout == ""


def test_entries_made_while_nats_is_away_are_stored_when_it_is_back(tmp_path):
    with Stack(tmp_path) as stack:
        api = stack.start_api()
        who = "offline-reader"
        http = api.http(make_token(["read"], subject=who))
        since = _since()
        stack.nats.stop()
        api.wait_ready(want=503)
        statuses = [http.get("/api/v1/jobs").status for _ in range(5)]
        assert statuses == [503] * 5
        stack.nats.start()  # the same port, token and store
        api.wait_ready(timeout=30)
        entries = _entries(api, since, who=who, want=5)
        time.sleep(0.5)
        entries = _entries(api, since, who=who)
        assert [(e["path"], e["status"]) for e in entries] == [("/api/v1/jobs", 503)] * 5
