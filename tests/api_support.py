"""Helpers for the REST API tests that need no server: a WSGI call in-process, the OpenAPI checks.

Processes (nats-server, API, workers), tokens and the HTTP client are in testkit/;
``JobsApi`` and ``resolv_files`` serve the end-to-end job tests built on them.
"""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit import ApiProcess, Resp, wait_for

RESOLV = "# managed by the test\nnameserver 192.0.2.1\nsearch example.test\n"


def wsgi_call(app, method: str, path: str, *, query: str = "", body: bytes = b"",
              headers: dict[str, str] | None = None, content_length: str | None = None) -> Resp:
    """Call a WSGI app in-process (unit tests of the app without a server)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    seen: dict = {}

    def start_response(status, hdrs, exc_info=None):
        seen["status"], seen["headers"] = status, hdrs

    chunks = app(environ, start_response)
    data = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return Resp(int(seen["status"].split()[0]), {k.lower(): v for k, v in seen["headers"]}, data)


def schema_validator(document: dict, schema: dict):
    """A jsonschema validator for ``schema`` whose ``#/components/...`` refs resolve in ``document``."""
    from jsonschema import Draft202012Validator

    root = dict(schema)
    root["components"] = document["components"]
    return Draft202012Validator(root)


def response_schema(document: dict, method: str, path_template: str, status: int) -> dict:
    op = document["paths"][path_template][method.lower()]
    resp = op["responses"][str(status)]
    return resp["content"]["application/json"]["schema"]


def check_against_document(document: dict, method: str, path_template: str, resp: Resp) -> None:
    """Assert that ``resp`` is documented: status listed, body valid against its schema."""
    op = document["paths"][path_template][method.lower()]
    assert str(resp.status) in op["responses"], f"{method} {path_template} answered undocumented {resp.status}"
    content = op["responses"][str(resp.status)].get("content")
    if content is None:
        assert resp.raw == b"", f"{method} {path_template} {resp.status} should have no body"
        return
    schema = content["application/json"]["schema"]
    errors = sorted(schema_validator(document, schema).iter_errors(resp.json), key=str)
    assert not errors, f"{method} {path_template} {resp.status}: {errors[0].message} at {list(errors[0].path)}"


def states(job: dict) -> dict[str, str]:
    """Each host's state in a job (``GET /api/v1/jobs/{id}``)."""
    return {host: item["state"] for host, item in job["hosts"].items()}


def resolv_files(base: Path, hosts, broken=()) -> dict[str, Path]:
    """A temp resolv.conf (``RESOLV``) per host; for a host in ``broken`` a directory, which its
    ``resolv_conf`` DNS provider can neither read nor write (a host where DNS changes fail)."""
    files = {}
    for host in hosts:
        files[host] = base / (f"{host}.resolv.d" if host in broken else f"{host}.resolv.conf")
        if host in broken:
            files[host].mkdir()
        else:
            files[host].write_text(RESOLV)
    return files


@dataclass
class JobsApi:
    """The job endpoints of a stack's API for a test, every answer checked against the served document."""

    api: ApiProcess
    doc: dict
    env: dict[str, str]  # the stack's environment (the CLI runs with it)
    token: str  # submits and runs the CLI
    read_token: str  # reads jobs

    def http(self, token: str | None = None):
        return self.api.http(token or self.token)

    def job(self, job_id: str, api: ApiProcess | None = None) -> dict:
        resp = (api or self.api).http(self.read_token).get(f"/api/v1/jobs/{job_id}")
        assert resp.status == 200, resp.raw[:300]
        check_against_document(self.doc, "GET", "/api/v1/jobs/{job_id}", resp)
        return resp.json

    def post(self, body: dict, api: ApiProcess | None = None) -> Resp:
        return (api or self.api).http(self.token).request("POST", "/api/v1/jobs", body)

    def settled(self, job_id: str, api: ApiProcess | None = None, timeout: float = 60.0) -> dict:
        return wait_for(lambda: (lambda j: j if j["status"] not in ("submitted", "processing") else None)(
            self.job(job_id, api)), timeout, what=f"job {job_id} settling")

    def cli(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        env = dict(self.env, OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN=self.token)
        return subprocess.run([sys.executable, "-m", "osapi", "client", *argv, "--url", self.api.url], env=env,
                              input=stdin, capture_output=True, text=True, timeout=120)
