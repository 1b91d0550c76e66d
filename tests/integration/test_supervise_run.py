"""``osapi supervise`` from the source tree: a real supervisord running real nats-server and API.

The full appliance (with workers, from the built osapi.pyz and a bare Python) is
tested in tests/e2e; here the supervision itself: start order, restart of a
killed child, control over the socket, SIGTERM with nothing left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.supervise import Supervise, alive, children_of, processes_mentioning
from testkit import free_port, stop_process, wait_for, wait_for_port


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
        # so does a stand-alone nats-server on its JetStream store, before touching it
        lone = subprocess.run([sys.executable, "-m", "osapi", "nats", "server", "start"], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert lone.returncode == 2, lone.stderr
        assert f"JetStream store {state / 'nats'} is in use by another nats-server " \
               f"(pid {procs['nats']['pid']})" in lone.stderr
        assert "Starting nats-server" not in lone.stderr  # refused before the exec: the store was not opened

        # kill -9 of a child (its store lock dies with it: the new one gets it): supervisord starts a new one
        os.kill(procs["nats"]["pid"], signal.SIGKILL)
        wait_for(lambda: sup.processes().get("nats", {}).get("pid") not in (None, procs["nats"]["pid"]),
                   30, "a new nats pid")
        sup.wait_running(["nats", "api"])

        # control over the socket; --json prints the result of each command
        result = cli("supervise", "stop", "api")
        assert result.status == 0 and result.stdout == "api: STOPPED\n"
        assert sup.processes()["api"]["state"] == "STOPPED"
        result = cli("--json", "supervise", "start", "api")
        assert result.status == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["action"] == "start" and body["name"] == "api"
        assert [(p["name"], p["state"]) for p in body["processes"]] == [("api", "RUNNING")]
        assert body["processes"][0]["pid"] == sup.processes()["api"]["pid"]
        old = sup.processes()["nats"]["pid"]
        result = cli("supervise", "restart", "nats")
        assert result.status == 0 and result.stdout == "nats: RUNNING\n"
        assert sup.processes()["nats"]["pid"] != old
        result = cli("supervise", "restart", "nope")
        assert result.status == 2 and "no program named 'nope'" in result.stderr and "api, nats" in result.stderr
        result = cli("supervise", "status")
        assert result.status == 0 and "nats" in result.stdout and "RUNNING" in result.stdout

        children = children_of(sup.proc.pid)
        assert len(children) >= 2
        # `supervise stop` without a name: everything in order, then supervise itself exits 0
        result = cli("--json", "supervise", "stop")
        assert result.status == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["action"] == "stop" and body["name"] is None
        assert body["stopped"] == ["api", "nats"]
        assert body["supervisord"] == {"pid": sup.proc.pid, "socket": str(state / "supervisor.sock"),
                                       "state": "EXITED"}
        assert sup.proc.wait(timeout=10) == 0, sup.log()
    finally:
        status = sup.stop(signal.SIGTERM)
    assert status == 0, sup.log()
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(state)) == []
    log = (state / "logs" / "supervisord.log").read_text()
    # the API stops before NATS, and NATS shuts JetStream down cleanly on SIGTERM
    last_stop = log[log.index("waiting for"):]
    assert last_stop.index("stopped: api") < last_stop.index("stopped: nats")
    assert "stopped: nats (exit status 0)" in last_stop
    nats_log = (state / "logs" / "nats-server.log").read_text()
    assert nats_log.rstrip().endswith("Server Exiting..")
    assert 'Trapped "terminated" signal' in nats_log and "JetStream Shutdown" in nats_log
    assert not (state / "supervisor.sock").exists()
    assert "Traceback" not in sup.err.read_text()
    result = cli("supervise", "stop")
    assert result.status == 1 and f"cannot connect to {state / 'supervisor.sock'}" in result.stderr


def test_port_in_use_is_refused_before_anything_starts(cli, env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("supervise", env={"OSAPI_SUPERVISE_PROGRAMS": "nats,api", "OSAPI_API_SERVER_PORT": str(port),
                                       "OSAPI_NATS_SERVER_PORT": env["OSAPI_NATS_SERVER_PORT"]})
    assert result.status == 1
    assert f"127.0.0.1:{port} (api.server.host/api.server.port) is already in use" in result.stderr
    assert not Path(env["OSAPI_SUPERVISE_STATE_DIR"]).exists()  # refused before anything was written


def test_a_store_another_nats_server_holds_is_refused_before_anything_starts(cli, env, tmp_path):
    state = Path(env["OSAPI_SUPERVISE_STATE_DIR"])
    other_port = free_port()
    lone = subprocess.Popen([sys.executable, "-m", "osapi", "nats", "server", "start"],
                            env={**env, "OSAPI_NATS_SERVER_PORT": str(other_port)}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", other_port, 30, lone)
        result = cli("supervise", env={k: v for k, v in env.items() if k.startswith("OSAPI_")})
        assert result.status == 2
        assert f"JetStream store {state / 'nats'} is in use by another nats-server (pid {lone.pid})" in result.stderr
        assert not (state / "supervisord.conf").exists() and not (state / "secrets").exists()
    finally:
        stop_process(lone)


def test_missing_nats_binary_is_refused(cli, tmp_path):
    result = cli("supervise", env={"OSAPI_NATS_SERVER_BINARY": str(tmp_path / "no-such-nats-server")})
    assert result.status == 2 and "no-such-nats-server is not an executable file" in result.stderr
    assert not Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"]).exists()


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def test_api_and_worker_started_before_their_nats_catch_up(tmp_path, env):
    """A host whose NATS is elsewhere and not up yet: supervise keeps both going until it is."""
    from testkit import NatsServer

    nats = NatsServer(tmp_path / "remote-nats")  # port and token chosen, server not started yet
    env.update({
        "OSAPI_SUPERVISE_PROGRAMS": "api,worker",
        "OSAPI_NATS_URL": nats.url,
        "OSAPI_NATS_TOKEN": nats.token,
        "OSAPI_JOB_WORKER_HOSTNAME": "late-nats-host",
    })
    state = Path(env["OSAPI_SUPERVISE_STATE_DIR"])
    base = f"http://127.0.0.1:{env['OSAPI_API_SERVER_PORT']}"
    sup = Supervise([sys.executable, "-m", "osapi", "supervise"], env, state, tmp_path / "run").start()
    try:
        sup.wait_running(["api", "worker:worker-1"])
        # RUNNING means the process stayed up 1 s; the API answers once it listens: not ready
        answer = wait_for(lambda: _get(base + "/health/ready")[0], 60, "the API answers")
        assert answer == 503
        nats.start()
        wait_for(lambda: _get(base + "/health/ready")[0] == 200, 60, "/health/ready 200 once NATS is up")
        token = (state / "secrets" / "admin.token").read_text().strip()

        def registered():
            status, body = _get(base + "/api/v1/jobs/workers", token)
            return status == 200 and [w["hostname"] for w in body["workers"]] == ["late-nats-host"]

        wait_for(registered, 60, "the worker in the registry", interval=0.3)
        assert not (state / "secrets" / "nats.token").exists()  # no local NATS, no local token
    finally:
        status = sup.stop()
        nats.stop()
    assert status == 0, sup.log()


def test_no_child_outlives_a_killed_supervisor(tmp_path, env, cli):
    """SIGKILL leaves supervisord no chance to stop its children: every child follows it anyway,
    and nats-server still shuts JetStream down cleanly (its log does not go through the dead pipe)."""
    env["OSAPI_SUPERVISE_PROGRAMS"] = "nats,api,worker"
    state = Path(env["OSAPI_SUPERVISE_STATE_DIR"])
    sup = Supervise([sys.executable, "-m", "osapi", "supervise"], env, state, tmp_path / "run").start()
    pids = {}
    try:
        procs = sup.wait_running(["nats", "api", "worker:worker-1"])
        pids = {name: info["pid"] for name, info in procs.items()}
        # an unknown name: exit 2, and the known names in the short form the help uses
        result = cli("supervise", "restart", "worker-9", env={k: v for k, v in env.items() if k.startswith("OSAPI_")})
        assert result.status == 2 and "no program named 'worker-9'" in result.stderr
        assert "known: all, api, nats, worker, worker-1" in result.stderr
        # one job, so the KV buckets (with TTLs) hold state worth flushing
        token = (state / "secrets" / "admin.token").read_text().strip()
        url = f"http://127.0.0.1:{env['OSAPI_API_SERVER_PORT']}/api/v1/system/hostname"
        wait_for(lambda: _get(url, token)[0] == 200, 60, "a job through the API")
        os.kill(sup.proc.pid, signal.SIGKILL)
        sup.proc.wait(timeout=30)
        for name, pid in pids.items():
            wait_for(lambda pid=pid: not alive(pid), 30, f"{name} exits after its supervisor was killed")
    finally:
        sup.stop()
        for pid in pids.values():  # never leave one behind, even when the test failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    nats_log = (state / "logs" / "nats-server.log").read_text()
    assert nats_log.rstrip().endswith("Server Exiting.."), nats_log[-2000:]

    # the store was left clean: the next nats-server on it recovers nothing
    again_log = tmp_path / "again.log"
    again = subprocess.Popen([sys.executable, "-m", "osapi", "nats", "server", "start", "--log-file", str(again_log)],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", int(env["OSAPI_NATS_SERVER_PORT"]), 30, again)
    finally:
        assert stop_process(again) == 0
    text = again_log.read_text()
    assert "Server is ready" in text and "[WRN]" not in text and "outdated" not in text, text
