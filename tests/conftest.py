"""Shared fixtures: a real nats-server, a clean environment, in-process CLI runs."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the checkout too: the test-only operations are ``tests.testhooks`` (osapi.domain.operations.TEST_HOOKS_MODULE)
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from harness import NatsServer  # noqa: E402

from osapi.cli import Environment, main  # noqa: E402

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
