"""``osapi supervise`` from the source tree: a real supervisord running real nats-server and API.

The full appliance (with workers, from the built osapi.pyz and a bare Python) is
tested in tests/e2e; here the supervision itself: start order, restart of a
killed child, control over the socket, SIGTERM with nothing left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from harness import free_port
from supervise_support import Supervise, alive, children_of, processes_mentioning, wait_until


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    environ.update({
        "OSAPI_SUPERVISE_STATE_DIR": os.environ["OSAPI_SUPERVISE_STATE_DIR"],
        "OSAPI_SUPERVISE_PROGRAMS": "nats,api",
        "OSAPI_NATS_SERVER_PORT": str(free_port()),
        "OSAPI_API_SERVER_PORT": str(free_port()),
    })
    return environ


def test_supervise_runs_restarts_controls_and_stops_cleanly(tmp_path, env, cli):
    state = Path(env["OSAPI_SUPERVISE_STATE_DIR"])
    sup = Supervise([sys.executable, "-m", "osapi", "supervise"], env, state, tmp_path / "run").start()
    try:
        procs = sup.wait_running(["nats", "api"])
        assert list(procs) == ["nats", "api"]  # status lists them in start order
        assert sorted(p.name for p in (state / "secrets").iterdir()) == \
            ["admin.token", "nats.token", "signing_key", "supervisor.password"]

        # a second supervise on the same state dir refuses, and disturbs nothing
        second = cli("supervise", env={k: v for k, v in env.items() if k.startswith("OSAPI_")})
        assert second.status == 1 and "already running" in second.stderr
        assert sup.processes()["nats"]["pid"] == procs["nats"]["pid"]

        # kill -9 of a child: supervisord starts a new one
        os.kill(procs["nats"]["pid"], signal.SIGKILL)
        wait_until(lambda: sup.processes().get("nats", {}).get("pid") not in (None, procs["nats"]["pid"]),
                   30, "a new nats pid")
        sup.wait_running(["nats", "api"])

        # control over the socket
        result = cli("supervise", "stop", "api")
        assert result.status == 0 and "api: STOPPED" in result.stdout
        assert sup.processes()["api"]["state"] == "STOPPED"
        result = cli("supervise", "start", "api")
        assert result.status == 0 and "api: RUNNING" in result.stdout
        old = sup.processes()["nats"]["pid"]
        result = cli("supervise", "restart", "nats")
        assert result.status == 0 and "nats: RUNNING" in result.stdout
        assert sup.processes()["nats"]["pid"] != old
        result = cli("supervise", "restart", "nope")
        assert result.status == 2 and "no program named 'nope'" in result.stderr and "api, nats" in result.stderr
        result = cli("supervise", "status")
        assert result.status == 0 and "nats" in result.stdout and "RUNNING" in result.stdout

        children = children_of(sup.proc.pid)
        assert len(children) >= 2
    finally:
        status = sup.stop(signal.SIGTERM)
    assert status == 0, sup.log()
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(state)) == []
    log = (state / "logs" / "supervisord.log").read_text()
    # the API stops before NATS
    assert log.index("stopped: api") < log.rindex("stopped: nats")
    assert not (state / "supervisor.sock").exists()
    assert "Traceback" not in sup.err.read_text()


def test_port_in_use_is_refused_before_anything_starts(cli, env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("supervise", env={"OSAPI_SUPERVISE_PROGRAMS": "nats,api", "OSAPI_API_SERVER_PORT": str(port),
                                       "OSAPI_NATS_SERVER_PORT": env["OSAPI_NATS_SERVER_PORT"]})
    assert result.status == 1
    assert f"127.0.0.1:{port} (api.server.host/api.server.port) is already in use" in result.stderr


def test_missing_nats_binary_is_refused(cli, tmp_path):
    result = cli("supervise", env={"OSAPI_NATS_SERVER_BINARY": str(tmp_path / "no-such-nats-server")})
    assert result.status == 2 and "no-such-nats-server is not an executable file" in result.stderr
