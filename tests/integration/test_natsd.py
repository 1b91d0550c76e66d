"""``osapi nats server start`` against the real nats-server binary.

Each test runs the command as a subprocess (it execs nats-server, so it cannot
run in-process), on a free port, with its own state dir, and stops it by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import free_port, stop_process, wait_for, wait_for_port
from osapi import config, natsd
from osapi.fleet import bcrypt


def nats_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "osapi", "nats", "server", "start", *extra]


def start(env: dict, *extra: str, stderr_path: Path) -> subprocess.Popen:
    environ = dict(os.environ)
    environ.update(env)
    with open(stderr_path, "wb") as err:
        return subprocess.Popen(nats_command(*extra), env=environ, stdout=err, stderr=err)


def nats_handshake(port: int, token: str | None) -> str:
    """Speak the NATS protocol: CONNECT (with the token, as osapi's clients send it: also as the password of
    the control plane's user, for a server whose authorization is a users list) + PING; the server's answer line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        info = reader.readline().decode()
        assert info.startswith("INFO "), info
        connect = {"verbose": False, "pedantic": False}
        if token is not None:
            connect.update(auth_token=token, user="osapi", **{"pass": token})
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        return reader.readline().decode().strip()


def info_of(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        line = sock.makefile("rb").readline().decode()
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture
def state(tmp_path) -> Path:
    return Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"])


def write_token(state: Path, token: str) -> None:
    (state / "secrets").mkdir(parents=True, mode=0o700)
    (state / "secrets" / "nats.token").write_text(token + "\n")


def test_runs_with_the_state_dir_token_and_becomes_nats_server(tmp_path, state):
    token = "state-dir-token-0123456789"
    write_token(state, token)
    port = free_port()
    proc = start({"OSAPI_NATS_SERVER_PORT": str(port)}, stderr_path=tmp_path / "out.log")
    try:
        wait_for_port("127.0.0.1", port, 15, proc)
        # exec: the pid we started is nats-server itself, nothing in between
        assert Path(f"/proc/{proc.pid}/exe").resolve().name == "nats-server"
        assert info_of(port)["auth_required"] is True
        assert nats_handshake(port, token) == "PONG"
        assert "Authorization Violation" in nats_handshake(port, "wrong-token")
        assert "Authorization Violation" in nats_handshake(port, None)

        conf = state / natsd.CONFIG_NAME
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        users = (state / "nats-users.conf").read_text()  # the control plane's password: the token's bcrypt hash
        assert f"port: {port}" in conf.read_text() and token not in conf.read_text() + users
        assert bcrypt.checkpw(token, users.split('{user: "osapi", password: "')[1].split('"')[0])
        assert stat.S_IMODE((state / "nats-users.conf").stat().st_mode) == 0o600
        # JetStream storage defaults to <state_dir>/nats
        assert (state / "nats" / "jetstream").is_dir()

        # SIGHUP is a config reload for nats-server, not an exit
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: "Reloaded server configuration" in (tmp_path / "out.log").read_text(), 15, "reload")
        assert proc.poll() is None
        assert nats_handshake(port, token) == "PONG"
    finally:
        status = stop_process(proc)
    assert status == 0
    log = (tmp_path / "out.log").read_text()
    assert "starting" in log and "WITHOUT authentication" not in log


def test_configured_token_and_store_dir(tmp_path, state):
    port = free_port()
    store = tmp_path / "elsewhere" / "js"
    env = {
        "OSAPI_NATS_SERVER_PORT": str(port),
        "OSAPI_NATS_SERVER_AUTH_TOKEN": "configured-token-abcdef",
        "OSAPI_NATS_SERVER_STORE_DIR": str(store),
    }
    proc = start(env, "--require-auth", stderr_path=tmp_path / "out.log")
    try:
        wait_for_port("127.0.0.1", port, 15, proc)
        assert nats_handshake(port, "configured-token-abcdef") == "PONG"
        assert (store / "jetstream").is_dir()
        assert not (state / "nats").exists()
    finally:
        assert stop_process(proc, sig=signal.SIGINT) == 0


def test_without_any_token_runs_open_and_warns(tmp_path):
    port = free_port()
    proc = start({"OSAPI_NATS_SERVER_PORT": str(port)}, stderr_path=tmp_path / "out.log")
    try:
        wait_for_port("127.0.0.1", port, 15, proc)
        assert not info_of(port).get("auth_required")
        assert nats_handshake(port, None) == "PONG"
    finally:
        stop_process(proc)
    assert "WITHOUT authentication" in (tmp_path / "out.log").read_text()


def test_require_auth_without_a_token_refuses(tmp_path, state):
    port = free_port()
    proc = start({"OSAPI_NATS_SERVER_PORT": str(port)}, "--require-auth", stderr_path=tmp_path / "out.log")
    try:
        assert proc.wait(timeout=30) == 2
    finally:
        stop_process(proc)
    err = (tmp_path / "out.log").read_text()
    assert "needs a token" in err and str(state / "secrets" / "nats.token") in err
    assert not (state / natsd.CONFIG_NAME).exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_bad_binary_is_a_configuration_error(tmp_path, state):
    not_executable = tmp_path / "nats-server"
    not_executable.write_text("#!/bin/sh\n")
    proc = start({"OSAPI_NATS_SERVER_BINARY": str(not_executable)}, stderr_path=tmp_path / "out.log")
    assert proc.wait(timeout=30) == 2
    err = (tmp_path / "out.log").read_text()
    assert f"nats.server.binary: {not_executable} is not an executable file" in err
    assert not (state / natsd.CONFIG_NAME).exists()


def test_exit_status_of_nats_server_is_ours(tmp_path, state):
    """After the exec, the binary's exit status is the command's (here a stand-in binary that fails)."""
    binary = tmp_path / "failing-nats-server"
    binary.write_text("#!/bin/sh\nexit 7\n")
    binary.chmod(0o755)
    proc = start({"OSAPI_NATS_SERVER_BINARY": str(binary), "OSAPI_NATS_SERVER_PORT": str(free_port())},
                 stderr_path=tmp_path / "out.log")
    try:
        status = proc.wait(timeout=30)
    finally:
        stop_process(proc)
    assert status == 7
    assert "starting" in (tmp_path / "out.log").read_text()


def test_json_logs_json_lines_and_the_log_file_goes_to_nats_server(tmp_path, state):
    """``--json``: osapi's own lines are JSON; ``--log-file`` is handed to nats-server (its own format)."""
    binary = tmp_path / "stand-in-nats-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    proc = start({"OSAPI_NATS_SERVER_BINARY": str(binary), "OSAPI_NATS_SERVER_PORT": str(free_port())},
                 "--json", "--log-file", "logs/nats-server.log", stderr_path=tmp_path / "out.log")
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
    lines = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines()]
    assert [entry["level"] for entry in lines] == ["warning", "info"]
    assert "WITHOUT authentication" in lines[0]["message"] and "starting" in lines[1]["message"]
    log_file = Path.cwd() / "logs" / "nats-server.log"  # relative to where the command ran
    assert f"log {log_file}" in lines[1]["message"]
    assert log_file.parent.is_dir()
    text = (state / natsd.CONFIG_NAME).read_text()
    assert f'log_file: "{log_file}"' in text
    assert f"logfile_size_limit: {10 * 1024 * 1024}" in text and "logfile_max_num: 5" in text


def test_port_in_use_is_refused_before_anything_is_written(tmp_path, state):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = start({"OSAPI_NATS_SERVER_PORT": str(port)}, stderr_path=tmp_path / "out.log")
        try:
            status = proc.wait(timeout=30)
        finally:
            stop_process(proc)
    assert status == 2
    err = (tmp_path / "out.log").read_text()
    assert f"cannot listen on 127.0.0.1:{port} (nats.server.host/nats.server.port): the port is already in use" in err
    assert "Starting nats-server" not in err  # refused before the exec
    assert not (state / natsd.CONFIG_NAME).exists()


def try_lock(path: Path) -> bool:
    import fcntl

    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_a_second_server_on_the_same_store_is_refused(tmp_path, state):
    """The store lock lives exactly as long as nats-server: it refuses a second one, dies with the first."""
    write_token(state, "store-lock-token-0123456789")
    first_port, second_port = free_port(), free_port()
    first = start({"OSAPI_NATS_SERVER_PORT": str(first_port)}, stderr_path=tmp_path / "first.log")
    lock = state / "nats" / natsd.LOCK_NAME
    try:
        wait_for_port("127.0.0.1", first_port, 15, first)
        assert not try_lock(lock)  # held by nats-server itself, across the exec
        assert lock.read_text().strip() == str(first.pid)
        conf_before = (state / natsd.CONFIG_NAME).read_bytes()
        store_before = sorted(str(p.relative_to(state)) for p in (state / "nats").rglob("*"))

        # another port, same state dir, hence the same store: refused before anything is touched
        second = start({"OSAPI_NATS_SERVER_PORT": str(second_port)}, stderr_path=tmp_path / "second.log")
        try:
            status = second.wait(timeout=60)
        finally:
            stop_process(second)
        assert status == 2
        err = (tmp_path / "second.log").read_text()
        assert f"JetStream store {state / 'nats'} is in use by another nats-server (pid {first.pid})" in err
        assert "Starting nats-server" not in err and "starting" not in err
        assert (state / natsd.CONFIG_NAME).read_bytes() == conf_before
        assert sorted(str(p.relative_to(state)) for p in (state / "nats").rglob("*")) == store_before
        assert nats_handshake(first_port, "store-lock-token-0123456789") == "PONG"
    finally:
        stop_process(first, sig=signal.SIGKILL)  # even an unclean death releases the lock
    assert try_lock(lock)
    again = start({"OSAPI_NATS_SERVER_PORT": str(second_port)}, stderr_path=tmp_path / "again.log")
    try:
        wait_for_port("127.0.0.1", second_port, 15, again)
        assert lock.read_text().strip() == str(again.pid)
    finally:
        assert stop_process(again) == 0


def test_cluster_block_gets_a_server_name(tmp_path, state):
    cfg = config.load(environ={
        "OSAPI_SUPERVISE_STATE_DIR": str(state),
        "OSAPI_NATS_SERVER_CLUSTER_NAME": "osapi",
        "OSAPI_NATS_SERVER_CLUSTER_PORT": "16222",
        "OSAPI_NATS_SERVER_CLUSTER_ROUTES": "nats://10.0.0.2:6222,nats://10.0.0.3:6222",
        "OSAPI_NATS_SERVER_AUTH_TOKEN": "t" * 20,
    })
    path, authenticated = natsd.write_config(cfg)
    text = path.read_text()
    assert authenticated
    assert 'name: "osapi"' in text and "port: 16222" in text
    assert 'routes: ["nats://10.0.0.2:6222", "nats://10.0.0.3:6222"]' in text
    assert f'server_name: "{socket.gethostname()}-4222"' in text
    # without a cluster there is no server_name and no cluster block
    plain, _ = natsd.write_config(config.load(environ={"OSAPI_SUPERVISE_STATE_DIR": str(state)}))
    assert "cluster {" not in plain.read_text() and "server_name" not in plain.read_text()
