"""Shared fixtures: a real nats-server, a clean environment, in-process CLI runs."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pytest

from job_support import Bridge, base_env
from testkit import NatsServer

from osapi.cli import Environment, main

SIGNING_KEY = "test-signing-key-" + "x" * 32


@pytest.fixture(autouse=True)
def _clean_osapi_env(monkeypatch, tmp_path):
    """No test sees the developer's OSAPI_* variables, ./osapi.yaml or state dir."""
    for name in list(os.environ):
        if name.startswith("OSAPI_"):
            monkeypatch.delenv(name)
    # never the real /var/lib/osapi (tests run as root in CI)
    monkeypatch.setenv("OSAPI_SUPERVISE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server with JetStream, token auth, a temp store and a free port."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bridge(nats_server, tmp_path):
    """A JobClient on ``nats_server`` (streams and buckets set up), called synchronously."""
    with Bridge(base_env(nats_server, tmp_path / "state")) as bridge:
        yield bridge


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


@pytest.fixture
def cli():
    """Run the CLI in-process: ``cli("token", "generate", ..., env={...})``."""

    def run(*argv: str, env: dict | None = None, stdin: str = "") -> Result:
        environ = dict(os.environ)  # already cleaned by _clean_osapi_env
        environ.update(env or {})
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), Environment(stdin=io.StringIO(stdin), stdout=out, stderr=err, environ=environ))
        return Result(int(status), out.getvalue(), err.getvalue())

    return run
