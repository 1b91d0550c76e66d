"""osapi.client and the client commands' error paths, against a tiny real HTTP server.

The server below is a plain ``http.server`` on loopback that answers canned
responses and records every request: it stands in for odd or failing servers
(a proxy's HTML page, a hung socket, a non-HTTP listener) that the real API
never is. What the client does against the real API is tested in
``tests/integration/test_cli_client*.py``.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from osapi.client import ApiClient, ApiError, check_url, join_error, resolve_token
from osapi.config import load
from osapi.errors import ConfigError

TOKEN_ENV = "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"


class Stub:
    """Canned answers by (method, path); every request is recorded."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                stub.requests.append({
                    "method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                    "headers": dict(self.headers), "body": json.loads(body) if body else None,
                })
                route = stub.routes.get(
                    (self.command, parts.path),
                    (404, {"Content-Type": "application/json"},
                     json.dumps({"error": "not found", "details": f"no route {parts.path}", "code": 404}).encode()),
                )
                status, headers, payload = route() if callable(route) else route
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def json(self, method: str, path: str, body, status: int = 200) -> None:
        self.routes[(method, "/api/v1" + path)] = (
            status, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def raw(self, method: str, path: str, status: int, text: str, ctype: str = "text/html") -> None:
        self.routes[(method, "/api/v1" + path)] = (status, {"Content-Type": ctype}, text.encode())

    def sent(self, method: str | None = None) -> list[dict]:
        return [r for r in self.requests if method is None or r["method"] == method]


@pytest.fixture
def stub():
    server = Stub()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


def error_envelope(status: int, error: str, details: str = "") -> dict:
    return {"error": error, "details": details, "code": status}


HOSTNAME_OK = {"job_id": "j-1", "results": [{"hostname": "web1", "labels": {"group": "web"}}]}


# ---------------------------------------------------------------- ApiClient


def test_get_sends_the_token_and_target_and_returns_the_body(stub):
    stub.json("GET", "/system/hostname", HOSTNAME_OK)
    body = ApiClient(stub.url, "tok-123").system("hostname", "_all")
    assert body == HOSTNAME_OK
    [req] = stub.sent()
    assert req["path"] == "/api/v1/system/hostname"
    assert req["query"] == {"target_hostname": ["_all"]}
    assert req["headers"]["Authorization"] == "Bearer tok-123"


def test_url_may_carry_the_api_prefix_and_a_trailing_slash(stub):
    stub.json("GET", "/jobs/status", {"total_jobs": 0})
    assert ApiClient(stub.url + "/api/v1/", "t").job_stats() == {"total_jobs": 0}
    assert stub.sent()[0]["path"] == "/api/v1/jobs/status"


def test_path_segments_are_escaped_so_input_cannot_change_the_route(stub):
    with pytest.raises(ApiError):
        ApiClient(stub.url, "t").job_get("../system/hostname")
    assert stub.sent()[0]["path"] == "/api/v1/jobs/..%2Fsystem%2Fhostname"


def test_put_and_post_send_json_bodies_with_the_target_in_the_query(stub):
    stub.json("PUT", "/network/dns", {"job_id": "j", "results": []}, status=202)
    stub.json("POST", "/network/ping", {"job_id": "j", "results": []})
    stub.json("POST", "/jobs", {"job_id": "j", "status": "submitted"}, status=201)
    client = ApiClient(stub.url, "t")
    client.dns_update("eth0", ["1.1.1.1"], None, "web1")
    client.ping("127.0.0.1", 2, "_any")
    client.job_create({"type": "system.load.get", "data": {}}, "_all")
    put, ping, job = stub.sent()
    assert put["body"] == {"interface_name": "eth0", "servers": ["1.1.1.1"]}
    assert put["query"] == {"target_hostname": ["web1"]}
    assert put["headers"]["Content-Type"] == "application/json"
    assert ping["body"] == {"address": "127.0.0.1", "count": 2}
    assert job["body"] == {"operation": {"type": "system.load.get", "data": {}}, "target_hostname": "_all"}
    assert job["query"] == {}


def test_204_returns_none(stub):
    stub.routes[("DELETE", "/api/v1/jobs/abc")] = (204, {}, b"")
    assert ApiClient(stub.url, "t").job_delete("abc") is None


def test_401_says_the_token_was_rejected_and_why(stub):
    stub.json("GET", "/jobs", error_envelope(401, "invalid token", "signature verification failed"), 401)
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t", token_source="environment variable X").job_list()
    assert exc.value.message == "token was rejected: signature verification failed"
    assert "environment variable X" in exc.value.hint
    assert exc.value.exit_status == 1 and exc.value.status == 401


def test_403_names_the_missing_scope(stub):
    stub.json("PUT", "/network/dns", error_envelope(403, "missing scope write", "token grants: read"), 403)
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").dns_update("eth0", ["1.1.1.1"])
    assert "'write' scope" in exc.value.message
    assert "token grants: read" in exc.value.message


def test_403_says_each_thing_once(stub):
    """The API's details repeat "needs the 'write' scope": the client says it once, with a short hint."""
    envelope = error_envelope(403, "missing scope write",
                              "this endpoint needs the 'write' scope; the token of 'bob' (roles: read) grants: read")
    stub.json("PUT", "/network/dns", envelope, 403)
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").dns_update("eth0", ["1.1.1.1"])
    err = exc.value
    assert str(err) == ("permission denied: PUT /network/dns needs the 'write' scope; the token of 'bob' "
                        "(roles: read) grants: read (use a token with a write or admin role)")
    assert err.body == envelope and err.status == 403


@pytest.mark.parametrize("error, details, joined", [
    ("invalid query parameter target_hostname",
     "target_hostname invalid target 'bad target!': not a hostname; use _any",
     "invalid query parameter target_hostname: invalid target 'bad target!': not a hostname; use _any"),
    ("invalid query parameter limit", "limit must be from 1 to 1000",
     "invalid query parameter limit: must be from 1 to 1000"),
    ("no worker answered in time", "no worker answered job j-1 (target w1) within 1s",
     "no worker answered job j-1 (target w1) within 1s"),
    ("job not found", "no job with id x", "job not found: no job with id x"),
    ("invalid job", "job x is not a thing", "invalid job: job x is not a thing"),  # a short word is no name
    ("NATS is not reachable", "", "NATS is not reachable"),
    ("not found", "GET /x: not found", "GET /x: not found"),
    ("request body too large", "request body too large", "request body too large"),
])
def test_error_and_details_are_joined_without_repeating(error, details, joined):
    assert join_error(error, details) == joined


def test_a_page_that_is_not_the_api_envelope_names_its_status_once(stub):
    stub.raw("GET", "/jobs", 502, "<html>Bad Gateway</html>")
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").job_list()
    assert exc.value.message == (f"the server at {stub.url} answered GET /jobs with HTTP 502 Bad Gateway: "
                                 "<html>Bad Gateway</html>")


def test_403_without_an_envelope_still_names_the_scope_from_the_method(stub):
    stub.raw("DELETE", "/jobs/x", 403, "<h1>Forbidden</h1>")
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").job_delete("x")
    assert "needs the 'write' scope" in exc.value.message


def test_other_errors_show_the_api_message(stub):
    stub.json("GET", "/jobs/nope", error_envelope(404, "job not found", "no job with id nope"), 404)
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").job_get("nope")
    assert str(exc.value) == "job not found: no job with id nope (HTTP 404)"


def test_504_and_503_add_what_to_check_unless_the_api_said_it(stub):
    stub.json("GET", "/system/load", error_envelope(504, "no worker answered"), 504)
    stub.json("GET", "/system/os", error_envelope(503, "NATS unavailable"), 503)
    stub.json("GET", "/system/disk", error_envelope(503, "NATS unavailable", "is nats-server running?"), 503)
    client = ApiClient(stub.url, "t")
    with pytest.raises(ApiError) as exc:
        client.system("load")
    assert exc.value.message == "no worker answered (HTTP 504)" and "worker" in exc.value.hint
    with pytest.raises(ApiError) as exc:
        client.system("os")
    assert exc.value.message == "NATS unavailable (HTTP 503)" and "NATS" in exc.value.hint
    with pytest.raises(ApiError) as exc:
        client.system("disk")
    assert str(exc.value) == "NATS unavailable: is nats-server running? (HTTP 503)"


def test_a_non_json_error_page_is_quoted_briefly(stub):
    stub.raw("GET", "/jobs", 502, "<html><body>Bad Gateway " + "x" * 500 + "</body></html>")
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").job_list()
    msg = exc.value.message
    assert msg.startswith(f"the server at {stub.url} answered GET /jobs with HTTP 502 Bad Gateway: <html>")
    assert len(msg) < 400


def test_a_non_json_success_is_an_error_not_a_crash(stub):
    stub.raw("GET", "/jobs/workers", 200, "<html>welcome to nginx</html>")
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").workers()
    assert "HTTP 200 but not JSON" in exc.value.message and "nginx" in exc.value.message


def test_connection_refused_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(ApiError) as exc:
            ApiClient(url, "t").job_stats()
    assert exc.value.message == f"cannot reach the osapi API at {url}: connection refused"
    assert "--url" in exc.value.hint and exc.value.status is None


def test_a_server_that_never_answers_times_out_with_the_url():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ApiError) as exc:
            ApiClient(url, "t", timeout=0.3).job_stats()
    assert exc.value.message.startswith(f"the osapi API at {url} did not answer GET /api/v1/jobs/status within 0.3s")


def test_a_server_that_is_not_http_is_reported():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def babble():
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=babble, daemon=True)
        thread.start()
        with pytest.raises(ApiError) as exc:
            ApiClient(url, "t", timeout=5).job_stats()
        thread.join(timeout=10)
    assert str(exc.value) == f"{url}: not an osapi API (the reply was not HTTP); check --url or api.client.url"
    assert exc.value.status is None and exc.value.body is None


def test_a_nats_port_is_not_an_api_and_its_greeting_is_not_quoted(tmp_path):
    """What nats-server sends first (an INFO JSON line) must not end up in the message."""
    from testkit import NatsServer

    nats = NatsServer(tmp_path / "nats").start()
    try:
        url = f"http://127.0.0.1:{nats.port}"
        with pytest.raises(ApiError) as exc:
            ApiClient(url, "t", timeout=10).job_stats()
    finally:
        nats.stop()
    assert str(exc.value) == f"{url}: not an osapi API (the reply was not HTTP); check --url or api.client.url"


def test_a_server_that_hangs_up_without_answering_is_reported():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def hang_up():
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        with pytest.raises(ApiError) as exc:
            ApiClient(url, "t", timeout=5).job_stats()
        thread.join(timeout=10)
    assert exc.value.message == f"the server at {url} closed the connection without answering GET /api/v1/jobs/status"


def test_quoted_bodies_carry_no_control_characters(stub):
    stub.raw("GET", "/jobs", 502, "bad \x1b[2J gateway\x07")
    with pytest.raises(ApiError) as exc:
        ApiClient(stub.url, "t").job_list()
    assert "answered GET /jobs with HTTP 502 Bad Gateway: bad [2J gateway" in exc.value.message


@pytest.mark.parametrize("url", ["ftp://x", "127.0.0.1:8080", "http://", "http://host:99999", ""])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        check_url(url)


# ---------------------------------------------------------------- token resolution


def test_token_from_the_environment_wins(tmp_path):
    env = {TOKEN_ENV: "env-token"}
    assert resolve_token(load(None, env), env) == ("env-token", f"environment variable {TOKEN_ENV}")


def test_token_from_the_configuration_file(tmp_path):
    (tmp_path / "osapi.yaml").write_text("api:\n  client:\n    security:\n      bearer_token: file-token\n")
    token, source = resolve_token(load(None, {}), {})
    assert token == "file-token" and "osapi.yaml" in source


def test_token_from_the_state_dir_admin_token(tmp_path):
    env = {"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "state")}
    (tmp_path / "state" / "secrets").mkdir(parents=True)
    (tmp_path / "state" / "secrets" / "admin.token").write_text("state-token\n")
    token, source = resolve_token(load(None, env), env)
    assert token == "state-token" and source == str(tmp_path / "state" / "secrets" / "admin.token")


def test_no_token_anywhere_is_a_configuration_error_naming_both_places(tmp_path):
    env = {"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "empty")}
    with pytest.raises(ConfigError) as exc:
        resolve_token(load(None, env), env)
    assert exc.value.exit_status == 2
    assert "api.client.security.bearer_token" in exc.value.message
    assert str(tmp_path / "empty" / "secrets" / "admin.token") in exc.value.message
    assert TOKEN_ENV in exc.value.hint


# ---------------------------------------------------------------- the commands


@pytest.fixture
def run(cli, stub):
    """The CLI against the stub, with a token in the environment."""

    def go(*argv, env=None, stdin=""):
        return cli(*argv, "--url", stub.url, env={TOKEN_ENV: "tok", **(env or {})}, stdin=stdin)

    return go


def test_target_defaults_to_any_and_has_two_long_names(run, stub):
    stub.json("GET", "/system/hostname", HOSTNAME_OK)
    assert run("client", "system", "hostname").status == 0
    assert run("client", "system", "hostname", "-T", "web1").status == 0
    assert run("client", "system", "hostname", "--target", "_all").status == 0
    assert run("client", "system", "hostname", "--target-hostname", "group:web").status == 0
    targets = [r["query"]["target_hostname"][0] for r in stub.sent()]
    assert targets == ["_any", "web1", "_all", "group:web"]


def test_global_flags_and_url_before_or_after(cli, stub):
    stub.json("GET", "/system/hostname", HOSTNAME_OK)
    env = {TOKEN_ENV: "tok"}
    a = cli("-j", "client", "--url", stub.url, "system", "hostname", env=env)
    b = cli("client", "system", "hostname", "--url", stub.url, "--json", env=env)
    assert a.status == b.status == 0
    assert json.loads(a.stdout) == json.loads(b.stdout) == HOSTNAME_OK


def test_table_output_has_one_row_per_host_and_the_job_id(run, stub):
    stub.json("GET", "/system/hostname", {"job_id": "j-9", "results": [
        {"hostname": "web2", "labels": {}}, {"hostname": "web1", "labels": {"group": "web.dev"}}]})
    res = run("client", "system", "hostname", "-T", "_all")
    assert res.status == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "job j-9"
    assert lines[2].split() == ["HOSTNAME", "LABELS"]
    assert lines[4].split() == ["web1", "group=web.dev"]
    assert lines[5].split() == ["web2"]


def test_a_failed_host_is_shown_and_exits_1(run, stub):
    stub.json("GET", "/system/memory", {"job_id": "j", "results": [
        {"hostname": "a", "total": 2048, "free": 1024, "used": 1024},
        {"hostname": "b", "status": "failed", "error": "permission denied reading /proc/meminfo"}]})
    res = run("client", "system", "memory", "-T", "_all")
    assert res.status == 1
    assert "permission denied reading /proc/meminfo" in res.stdout
    assert "2.0 KiB" in res.stdout
    assert "1 of 2 hosts failed: b" in res.stderr
    js = run("client", "system", "memory", "-T", "_all", "--json")
    assert js.status == 1 and json.loads(js.stdout)["results"][1]["status"] == "failed"


def test_api_errors_exit_1_with_one_line_and_no_traceback(run, stub):
    stub.json("GET", "/jobs/xyz", error_envelope(404, "job not found", "no job with id xyz"), 404)
    res = run("client", "job", "get", "--job-id", "xyz")
    assert res.status == 1 and res.stdout == ""
    assert res.stderr == "osapi: error: job not found: no job with id xyz (HTTP 404)\n"


def test_with_json_an_api_error_body_goes_to_stdout_and_the_error_to_stderr(run, stub):
    envelope = error_envelope(404, "job not found", "no job with id xyz")
    stub.json("GET", "/jobs/xyz", envelope, 404)
    res = run("client", "job", "get", "--job-id", "xyz", "--json")
    assert res.status == 1
    assert json.loads(res.stdout) == envelope
    assert res.stderr == "osapi: error: job not found: no job with id xyz (HTTP 404)\n"
    stub.json("POST", "/network/ping", error_envelope(504, "no worker answered in time", "within 1s"), 504)
    res = run("client", "network", "ping", "-a", "127.0.0.1", "-j")
    assert res.status == 1 and json.loads(res.stdout)["code"] == 504


def test_with_json_a_non_json_error_or_no_answer_prints_nothing_on_stdout(run, cli, stub):
    stub.raw("GET", "/jobs", 502, "<html>Bad Gateway</html>")
    res = run("client", "job", "list", "--json")
    assert res.status == 1 and res.stdout == "" and "HTTP 502" in res.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        res = cli("client", "job", "list", "--json", "--url", url, env={TOKEN_ENV: "tok"})
    assert res.status == 1 and res.stdout == "" and "connection refused" in res.stderr


def test_no_token_is_exit_2_and_nothing_is_sent(cli, stub):
    res = cli("client", "job", "list", "--url", stub.url)
    assert res.status == 2 and "no API token" in res.stderr
    assert stub.sent() == []


def test_bad_url_flag_is_exit_2(cli):
    res = cli("client", "job", "list", "--url", "localhost:8080", env={TOKEN_ENV: "tok"})
    assert res.status == 2 and "--url: 'localhost:8080' is not an http:// or https:// URL" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--yes"],
     "at least one of --servers or --search-domains is required"),
    (["client", "job", "run", "--json-file", "-", "--timeout", "0"], "--timeout: must be greater than zero"),
    (["client", "job", "run", "--json-file", "-", "-p", "-1"], "--poll-interval: must be greater than zero"),
    (["client", "job", "run", "--json-file", "-", "-t", "5 minutes"], "--timeout: must be a duration such as"),
    (["client", "job", "status", "--poll-interval-seconds", "0"], "--poll-interval-seconds: must be greater"),
    (["client", "network", "ping", "-a", "127.0.0.1", "--count", "11"], "--count must be an integer from 1 to 10"),
    (["client", "network", "ping", "-a", "127.0.0.1", "--count", "0"], "--count must be an integer from 1 to 10"),
    (["client", "network", "ping", "-a", "bad address!"], "-a/--address: 'bad address!' is not an IP address"),
    (["client", "network", "ping", "-a", ""], "-a/--address is required"),
    (["client", "job", "list", "--limit", "0"], "--limit: must be an integer from 1 to 1000, got 0"),
    (["client", "job", "list", "--limit", "5000"], "--limit: must be an integer from 1 to 1000, got 5000"),
    (["client", "job", "list", "--limit", "ten"], "--limit: must be an integer, got 'ten'"),
    (["client", "job", "list", "--offset", "-1"], "--offset: must be an integer of at least 0, got -1"),
    (["client", "system", "hostname", "-T", "bad target!"], "invalid target 'bad target!': not a hostname"),
    (["client", "system", "hostname", "-T", "group:we b"], "label value 'we b' must be dot-separated"),
    (["client", "system", "hostname", "-T", ""], "must not be empty"),
    (["client", "system", "hostname", "-T", "_other"], "names starting with _ are reserved"),
    (["client", "network", "dns", "get", "--interface-name", "eth0/x"], "--interface-name must be a network"),
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "", "-T", "h", "--yes"],
     "--servers must not be empty"),
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1,1.1.1.999", "-T", "h"],
     "--servers: '1.1.1.999' is not an IPv4 or IPv6 address"),
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1,1.1.1.1", "-T", "h"],
     "--servers must not repeat an item"),
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--search-domains", "a..b", "-T", "h"],
     "--search-domains: 'a..b' is not a valid hostname"),
    (["client", "job", "list", "--status", "done"], "invalid choice: 'done'"),
    (["client", "network", "ping"], "the following arguments are required: -a/--address"),
    (["client", "job", "add", "--json-file", "/nonexistent/op.json"], "--json-file /nonexistent/op.json: cannot read it"),
])
def test_usage_errors_exit_2_and_send_nothing(run, stub, argv, message):
    res = run(*argv, stdin='{"type": "system.load.get", "data": {}}')
    assert res.status == 2, res.stderr
    assert message in res.stderr
    assert stub.sent() == []


@pytest.mark.parametrize("text, message", [
    ("{not json", "standard input is not valid JSON at line 1, column 2"),
    ("[1, 2]", "must hold an operation object"),
    ('{"data": {}}', "must hold an operation object"),
])
def test_bad_job_files_exit_2_and_send_nothing(run, stub, text, message):
    res = run("client", "job", "add", "--json-file", "-", stdin=text)
    assert res.status == 2 and message in res.stderr
    assert stub.sent() == []


def test_job_file_forms_and_target_precedence(run, stub, tmp_path):
    stub.json("POST", "/jobs", {"job_id": "j", "status": "submitted", "revision": 1,
                                "timestamp": "2024-01-01T00:00:00Z"}, 201)
    op = {"type": "system.load.get", "data": {}}
    (tmp_path / "op.json").write_text(json.dumps(op))
    (tmp_path / "job.json").write_text(json.dumps({"operation": op, "target_hostname": "_all"}))
    (tmp_path / "web1.json").write_text(json.dumps({"operation": op, "target_hostname": "Web1"}))
    assert run("client", "job", "add", "--json-file", str(tmp_path / "op.json")).status == 0
    assert run("client", "job", "add", "--json-file", str(tmp_path / "job.json")).status == 0
    assert run("client", "job", "add", "--json-file", str(tmp_path / "job.json"), "-T", "_all").status == 0
    assert run("client", "job", "add", "--json-file", str(tmp_path / "web1.json"), "-T", "web1").status == 0
    res = run("client", "job", "add", "--json-file", "-", "--target-hostname", "g:x", stdin=json.dumps(op))
    assert res.status == 0
    assert "job id:" in res.stdout and "submitted" in res.stdout
    bodies = [r["body"] for r in stub.sent()]
    assert [b["target_hostname"] for b in bodies] == ["_any", "_all", "_all", "web1", "g:x"]
    assert all(b["operation"] == op for b in bodies)


@pytest.mark.parametrize("command", ["add", "run"])
def test_a_flag_and_a_file_naming_different_targets_are_refused(run, stub, tmp_path, command):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"operation": {"type": "system.load.get", "data": {}}, "target_hostname": "_all"}))
    res = run("client", "job", command, "--json-file", str(path), "-T", "web1")
    assert res.status == 2
    assert "conflicting targets: file says _all, -T says web1" in res.stderr
    assert stub.sent() == []


def test_an_invalid_target_in_the_job_file_is_refused_locally(run, stub):
    res = run("client", "job", "add", "--json-file", "-",
              stdin=json.dumps({"operation": {"type": "system.load.get"}, "target_hostname": "no good"}))
    assert res.status == 2
    assert "target_hostname in standard input: invalid target 'no good': not a hostname" in res.stderr
    assert stub.sent() == []


def test_dns_update_to_all_without_tty_or_yes_refuses_and_sends_nothing(run, stub):
    res = run("client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1",
              "-T", "_all")
    assert res.status == 2
    assert "refusing to change DNS of interface eth0 on EVERY worker host (_all)" in res.stderr
    assert "--yes" in res.stderr
    assert stub.sent("PUT") == []


def test_dns_update_to_a_named_host_needs_no_confirmation(run, stub):
    stub.json("PUT", "/network/dns", {"job_id": "j", "results": [{"hostname": "web1", "status": "ok"}]}, 202)
    res = run("client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1, 9.9.9.9",
              "--search-domains", "a.example,b.example", "-T", "web1")
    assert res.status == 0, res.stderr
    [put] = stub.sent("PUT")
    assert put["body"] == {"interface_name": "eth0", "servers": ["1.1.1.1", "9.9.9.9"],
                           "search_domains": ["a.example", "b.example"]}
    assert stub.sent("GET") == []  # no registry lookup for a named host


@pytest.mark.parametrize("hosts, asks", [(["only"], False), (["a", "b"], True), ([], True)])
def test_dns_update_to_any_asks_unless_exactly_one_host_is_registered(run, stub, hosts, asks):
    stub.json("GET", "/jobs/workers", {"total": len(hosts), "workers": [{"hostname": h} for h in hosts]})
    stub.json("PUT", "/network/dns", {"job_id": "j", "results": [{"hostname": "only", "status": "ok"}]}, 202)
    res = run("client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1")
    assert res.status == (2 if asks else 0), res.stderr
    assert len(stub.sent("PUT")) == (0 if asks else 1)


class TtyInput:
    """stdin that is a terminal and answers ``answer``."""

    def __init__(self, answer: str):
        self.answer = answer

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.answer


@pytest.mark.parametrize("answer, status, puts", [("y\n", 0, 1), ("yes\n", 0, 1), ("\n", 1, 0), ("n\n", 1, 0)])
def test_dns_update_on_a_tty_asks_and_obeys(stub, answer, status, puts):
    import io

    from osapi.cli import Environment, main

    stub.json("PUT", "/network/dns", {"job_id": "j", "results": [{"hostname": "a", "status": "ok"}]}, 202)
    out, err = io.StringIO(), io.StringIO()
    env = Environment(stdin=TtyInput(answer), stdout=out, stderr=err, environ={TOKEN_ENV: "t"})
    rc = main(["client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1",
               "-T", "group:web", "--url", stub.url], env)
    assert rc == status
    assert "About to change DNS of interface eth0 on every worker host whose label matches group:web" in err.getvalue()
    assert len(stub.sent("PUT")) == puts
    if not puts:
        assert "cancelled: nothing was changed" in err.getvalue()


def test_dns_update_table_shows_failed_hosts_with_status_and_error(run, stub):
    stub.json("PUT", "/network/dns", {"job_id": "j", "results": [
        {"hostname": "b", "status": "failed", "error": "interface eth0 does not exist"},
        {"hostname": "a", "status": "ok", "changed": True}]}, 202)
    res = run("client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1",
              "-T", "_all", "--yes")
    assert res.status == 1
    lines = res.stdout.splitlines()
    assert lines[2].split() == ["HOSTNAME", "STATUS", "CHANGED", "ERROR"]
    assert lines[4].split() == ["a", "ok", "yes"]
    assert lines[5].split(None, 2) == ["b", "failed", "interface eth0 does not exist"]
    assert "1 of 2 hosts failed: b" in res.stderr


class JobServer:
    """A stub whose GET /jobs/j answers ``submitted`` ``pending`` times, then ``completed``."""

    DONE = {"id": "j", "status": "completed", "operation": {"type": "system.load.get", "data": {}},
            "responses": {"h": {"status": "completed", "data": {"1min": 0.5, "5min": 0.25, "15min": 0.0}}}}

    def __init__(self, stub, pending: int):
        self.gets, self.pending = 0, pending
        stub.json("POST", "/jobs", {"job_id": "j", "status": "submitted", "revision": 1,
                                    "timestamp": "2024-01-01T00:00:00Z"}, 201)
        stub.routes[("GET", "/api/v1/jobs/j")] = self.job

    def job(self):
        self.gets += 1
        body = {**self.DONE, "status": "submitted", "responses": {}} if self.gets <= self.pending else self.DONE
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


@pytest.mark.timeout(30)
def test_job_run_checks_at_once_then_soon_not_after_a_whole_poll_interval(run, stub):
    """With -p 10m a job done at the third check must not wait 10 minutes (the test would time out)."""
    server = JobServer(stub, pending=2)
    res = run("client", "job", "run", "--json-file", "-", "-T", "h", "-p", "10m", "-t", "1h",
              stdin='{"type": "system.load.get", "data": {}}')
    assert res.status == 0, res.stderr
    assert server.gets == 3
    assert res.stdout.startswith("job j: completed")


def test_job_run_checks_right_after_submitting(run, stub):
    server = JobServer(stub, pending=0)
    res = run("client", "job", "run", "--json-file", "-", "-T", "h", stdin='{"type": "system.load.get"}')
    assert res.status == 0 and server.gets == 1


def test_poll_delays_start_short_and_settle_at_the_interval():
    import itertools

    from osapi.cli.client_job import poll_delays

    assert list(itertools.islice(poll_delays(2.0), 8)) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert list(itertools.islice(poll_delays(0.01), 3)) == [0.01, 0.01, 0.01]


@pytest.mark.parametrize("text, seconds", [("60", 60.0), ("0.5", 0.5), ("30s", 30.0), ("5m", 300.0),
                                           ("1h30m", 5400.0), ("500ms", 0.5)])
def test_durations_take_units_or_plain_seconds(text, seconds):
    from osapi.cli.client import duration_arg

    assert duration_arg(text) == seconds


def test_url_help_names_the_setting_not_a_built_in_value(cli, capsys):
    res = cli("client", "system", "hostname", "--help", env={"OSAPI_API_CLIENT_URL": "http://10.9.9.9:1"})
    assert res.status == 0
    text = capsys.readouterr().out  # argparse prints help on sys.stdout
    assert "(default: api.client.url from osapi.yaml or OSAPI_API_CLIENT_URL)" in " ".join(text.split())
    assert "127.0.0.1:8080" not in text


def test_delete_prints_a_line_or_nothing_with_json(run, stub):
    stub.routes[("DELETE", "/api/v1/jobs/abc")] = (204, {}, b"")
    assert run("client", "job", "delete", "--job-id", "abc").stdout == "job abc deleted\n"
    res = run("client", "job", "delete", "--job-id", "abc", "-j")
    assert res.status == 0 and res.stdout == ""


def test_job_status_once_and_not_a_tty_print_one_snapshot(run, stub):
    stats = {"total_jobs": 3, "status_counts": {"completed": 2, "failed": 1},
             "operation_counts": {"system.load.get": 3}, "dlq_count": 0}
    stub.json("GET", "/jobs/status", stats)
    res = run("client", "job", "status")  # StringIO stdout: not a TTY, so one snapshot
    assert res.status == 0
    assert "total jobs:   3" in res.stdout and "\x1b[" not in res.stdout
    assert json.loads(run("client", "job", "status", "--once", "-j").stdout) == stats
    assert len(stub.sent()) == 2


# ---------------------------------------------------------------- a light start

FORBIDDEN = ("nats", "bottle", "waitress", "psutil", "yaml", "jwt", "icmplib", "supervisor", "asyncio")
# The client checks targets and operation data with the job system's own definitions;
# these modules import only osapi.config and the standard library.
LIGHT = ("osapi.domain.subjects", "osapi.domain.operations", "osapi.domain.errors")
PROBE = """
import json, sys
from osapi.cli import main
rc = main(sys.argv[1:])
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
heavy += sorted(m for m in sys.modules if m.startswith(("osapi.api", "osapi.job.", "osapi.provider"))
               and m not in %r)
sys.stderr.write("HEAVY=" + json.dumps(heavy) + "\\n")
sys.exit(rc)
""" % (FORBIDDEN, LIGHT)


@pytest.mark.parametrize("argv, status", [
    (["client", "--help"], 0),
    (["client", "system", "status", "-T", "_all"], 0),
    (["client", "job", "status", "--once"], 0),
    (["client", "job", "get", "--job-id", "missing"], 1),
    (["client", "network", "ping", "-a", "127.0.0.1", "-T", "group:web"], 1),
    (["client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1", "-T", "h"], 1),
])
def test_client_commands_import_no_server_side_modules(stub, tmp_path, argv, status):
    """`osapi client …` (docs/architecture.md, Processes) must not import nats, bottle, waitress or psutil (nor yaml without a file)."""
    import os
    import subprocess
    import sys

    stub.json("GET", "/system/status", {"job_id": "j", "results": [{
        "hostname": "h", "uptime": "1 hour", "uptime_seconds": 3600, "load_average": {"1min": 0, "5min": 0, "15min": 0},
        "memory": {"total": 1, "free": 1, "used": 0}, "disks": [], "os_info": {"distribution": "x", "version": "1"}}]})
    stub.json("GET", "/jobs/status", {"total_jobs": 0, "status_counts": {}, "operation_counts": {}, "dlq_count": 0})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env[TOKEN_ENV] = "tok"
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv, "--url", stub.url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    heavy = json.loads(proc.stderr.rsplit("HEAVY=", 1)[1])
    assert heavy == []


def test_live_workers_for_uses_the_job_systems_target_rules():
    from osapi.cli.client_job import live_workers_for

    registry = {"workers": [
        {"hostname": "web1", "labels": {"group": "web.dev.us"}},
        {"hostname": "Db1", "labels": {"group": "db"}},
        {"hostname": "bare"},  # no labels
        "not a row", {"labels": {"group": "web"}}, {"hostname": None},  # malformed rows are skipped
        {"hostname": "odd", "labels": ["group", "web"]},
    ]}
    assert live_workers_for(registry, "group:web") == ["web1"]
    assert live_workers_for(registry, "group:web.dev.us") == ["web1"]
    assert live_workers_for(registry, "group:web.de") == []  # a prefix of a segment is not a match
    assert live_workers_for(registry, "group:web.dev.us.east") == []
    assert live_workers_for(registry, "db1") == ["Db1"]  # host names compare case-insensitively
    assert live_workers_for(registry, "_any") == ["web1", "Db1", "bare", "odd"]
    assert live_workers_for(registry, "_all") == ["web1", "Db1", "bare", "odd"]
    for body in ({}, {"workers": None}, [], None, {"workers": "x"}):
        assert live_workers_for(body, "_any") == []


# ---------------------------------------------------------------- every host's outcome, retry (§10.3, §10.4)


@pytest.mark.parametrize("results, status, message", [
    ([{"hostname": "a", "status": "ok", "changed": True},
      {"hostname": "c", "status": "no_response", "error": "no answer within 30s"}], 3,
     "1 of 2 hosts did not answer: c (retry them with `osapi client job retry --job-id j`)"),
    ([{"hostname": "b", "status": "failed", "error": "boom"},
      {"hostname": "c", "status": "no_response", "error": "no answer within 30s"}], 1,
     "1 of 2 hosts failed: b; 1 did not answer"),
    ([{"hostname": "a", "status": "ok", "changed": False}], 0, ""),
])
def test_domain_command_exits_3_when_the_only_problem_is_silent_hosts(run, stub, results, status, message):
    stub.json("PUT", "/network/dns", {"job_id": "j", "results": results}, 202)
    res = run("client", "network", "dns", "update", "--interface-name", "eth0", "--servers", "1.1.1.1",
              "-T", "_all", "--yes")
    assert res.status == status, res.stderr
    assert message in res.stderr
    if any(r["status"] == "no_response" for r in results):
        row = [line for line in res.stdout.splitlines() if line.startswith("c ")][0]
        assert row.split(None, 2) == ["c", "no_response", "no answer within 30s"]


def _finished_job(hosts: dict, status: str) -> dict:
    counts = {"targeted": len(hosts), "ok": 0, "failed": 0, "no_response": 0, "skipped": 0, "pending": 0}
    for state in hosts.values():
        counts[state] += 1
    responses = {h: {"status": "ok" if s == "ok" else s, "data": {"1min": 0.5} if s == "ok" else None,
                     "error": None if s == "ok" else "x"} for h, s in hosts.items() if s != "pending"}
    return {"id": "j", "status": status, "operation": {"type": "system.load.get", "data": {}},
            "hosts": {h: {"state": s} for h, s in hosts.items()}, "summary": counts, "responses": responses,
            "error": "some hosts not ok"}


@pytest.mark.parametrize("hosts, status, rc, message", [
    ({"a": "ok", "c": "no_response"}, "partial_failure", 3, "job j: 1 of 2 hosts did not answer: c"),
    ({"c": "no_response"}, "failed", 3, "job j: 1 of 1 hosts did not answer: c"),
    ({"a": "failed", "c": "no_response"}, "failed", 1, "job j failed"),
    ({"a": "ok", "b": "ok"}, "completed", 0, ""),
])
def test_job_run_exit_status_follows_the_hosts(run, stub, hosts, status, rc, message):
    created = {"job_id": "j", "status": "submitted", "revision": 1, "timestamp": "2024-01-01T00:00:00Z"}
    stub.json("POST", "/jobs", created, 201)
    stub.json("GET", "/jobs/j", _finished_job(hosts, status))
    res = run("client", "job", "run", "--json-file", "-", "-T", "_all", stdin='{"type": "system.load.get"}')
    assert res.status == rc, res.stderr
    assert message in res.stderr


def test_job_retry_sends_only_and_prints_the_new_job(run, stub):
    stub.json("POST", "/jobs/j/retry", {"job_id": "n", "retry_of": "j", "hosts": ["b", "c"]}, 201)
    res = run("client", "job", "retry", "--job-id", "j", "--only", "failed, no_response,failed")
    assert res.status == 0, res.stderr
    assert stub.sent("POST")[-1]["body"] == {"only": ["failed", "no_response"]}
    assert "job id:" in res.stdout and "n" in res.stdout and "b, c" in res.stdout
    res = run("client", "job", "retry", "--job-id", "j", "-j")
    assert stub.sent("POST")[-1]["body"] == {} and json.loads(res.stdout)["hosts"] == ["b", "c"]


@pytest.mark.parametrize("only", ["ok", "", "failed,pending", "failed\nok"])
def test_job_retry_refuses_other_states_and_sends_nothing(run, stub, only):
    res = run("client", "job", "retry", "--job-id", "j", "--only", only)
    assert res.status == 2 and "is not a host state to retry" in res.stderr
    assert stub.sent() == []


def test_job_retry_409_is_exit_1_with_the_reason(run, stub):
    stub.json("POST", "/jobs/j/retry", {"error": "no host to retry", "details": "no host of job j is failed",
                                         "code": 409}, 409)
    res = run("client", "job", "retry", "--job-id", "j")
    assert res.status == 1 and "no host of job j is failed (HTTP 409)" in res.stderr
