"""Helpers for the REST API tests: a real API process, tokens, a tiny HTTP client.

``ApiProcess`` runs ``python -m osapi api server start`` (real Waitress) on a free
port with an explicit environment and stops it by pid. ``Http`` speaks plain
``http.client`` so tests see exactly the status, headers and body the server sent.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO, free_port, stop_process, wait_for_port

from osapi import authtoken

SIGNING_KEY = "api-test-signing-key-" + "k" * 32


def make_token(roles=("admin",), subject="tester", key: str = SIGNING_KEY, expires_in: float = 3600,
               now: float | None = None) -> str:
    return authtoken.generate(key, list(roles), subject, expires_in, now=now)


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without OSAPI_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self):
        return json.loads(self.raw) if self.raw else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Http:
    port: int
    host: str = "127.0.0.1"
    token: str | None = None
    timeout: float = 30.0

    def request(self, method: str, path: str, body=None, *, token: str | None | bool = True,
                headers: dict | None = None, raw: bytes | None = None) -> Resp:
        """``token=True`` uses ``self.token``; ``None``/``False`` sends no Authorization."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            hdrs = dict(headers or {})
            tok = self.token if token is True else (token or None)
            if tok:
                hdrs.setdefault("Authorization", f"Bearer {tok}")
            data = raw
            if data is None and body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)


@dataclass
class ApiProcess:
    """One ``osapi api server start`` process on a free port."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "api.log"

    def start(self, timeout: float = 20.0) -> "ApiProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        env["OSAPI_API_SERVER_PORT"] = str(self.port)
        env.setdefault("OSAPI_API_SERVER_SECURITY_SIGNING_KEY", SIGNING_KEY)
        env.setdefault("OSAPI_SUPERVISE_STATE_DIR", str(self.workdir / "state"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "osapi", "api", "server", "start"],
                cwd=self.workdir, env=env, stdout=log, stderr=log,
            )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        return self

    def http(self, token: str | None = None) -> Http:
        return Http(self.port, token=token)

    def wait_ready(self, timeout: float = 20.0, want: int = 200) -> Resp:
        """Poll /health/ready until it answers ``want`` (bounded)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.http().get("/health/ready", token=None)
            if last.status == want:
                return last
            time.sleep(0.1)
        raise AssertionError(f"/health/ready did not answer {want} within {timeout}s: "
                             f"{last and last.status} {last and last.raw!r}\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc, sig=sig)


def wsgi_call(app, method: str, path: str, *, query: str = "", body: bytes = b"",
              headers: dict[str, str] | None = None, content_length: str | None = None) -> Resp:
    """Call a WSGI app in-process (unit tests of the app without a server)."""
    import io

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


@dataclass
class WorkerProcess:
    """One ``osapi job worker start`` process (the job system's real worker)."""

    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = ()  # more flags of ``job worker start`` (``--heartbeat 30s``)

    def start(self) -> "WorkerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        env.setdefault("OSAPI_SUPERVISE_STATE_DIR", str(self.workdir / "state"))
        with open(self.workdir / "worker.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "osapi", "job", "worker", "start",
                                          *self.args], cwd=self.workdir, env=env, stdout=log, stderr=log)
        return self

    def log(self) -> str:
        try:
            return (self.workdir / "worker.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        return stop_process(self.proc) if self.proc is not None else None


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")


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


def stop_all(procs) -> None:
    """SIGTERM every process first, then wait for each (their grace periods overlap)."""
    for proc in procs:
        popen = getattr(proc, "proc", None)
        if popen is not None and popen.poll() is None:
            try:
                os.kill(popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in procs:
        popen = getattr(proc, "proc", None)
        if popen is not None:
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.stop(signal.SIGKILL) if isinstance(proc, ApiProcess) else stop_process(popen, sig=signal.SIGKILL)
