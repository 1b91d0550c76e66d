"""Every command that reads a secret from the state dir refuses one another user could have written.

The attack (issue 12): as root, a state dir that ``nobody`` can write, and
``nobody`` plants ``secrets/signing_key`` (or a token). ``osapi supervise``, the
client (admin.token), the API server (signing_key, nats.token), a worker and
nats-server (nats.token) each exit 2 naming the path and the fix, start nothing,
send nothing, and leave the state dir as it was.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trust_support
from testkit.supervise import Supervise, processes_mentioning
from testkit import free_port, stop_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")

PLANTED_KEY = "planted-by-nobody-" + "p" * 40


def plant(state: Path, names=("signing_key",), *, secrets_owner: int = trust_support.NOBODY) -> None:
    """A 0777 state dir of root's; secrets/ (owned by ``secrets_owner``) and ``names`` planted by nobody."""
    state.mkdir(mode=0o700)
    os.chmod(state, 0o777)
    (state / "secrets").mkdir(mode=0o700)
    for name in names:
        path = state / "secrets" / name
        path.write_text((PLANTED_KEY if name == "signing_key" else f"planted-{name}") + "\n")
        os.chmod(path, 0o600)
        os.chown(path, trust_support.NOBODY, trust_support.NOBODY)
    os.chown(state / "secrets", secrets_owner, secrets_owner)


def clean_env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["OSAPI_SUPERVISE_STATE_DIR"] = str(state)
    env.update(extra)
    return env


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def run_bounded(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int | None, str]:
    """Run an osapi command that should refuse at once; a process still running after
    ``timeout`` started when it must not: it is stopped by pid and reported as None."""
    with open(cwd / "err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "osapi", *argv], env=env, cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, timeout=30)
            status = None
    return status, (cwd / "err").read_text(errors="replace")


def test_supervise_refuses_a_planted_signing_key_and_starts_nothing(tmp_path):
    state = tmp_path / "state"
    plant(state, ("signing_key", "admin.token"))
    before = trust_support.snapshot(state)
    nats_port, api_port = free_port(), free_port()
    env = clean_env(state, OSAPI_SUPERVISE_PROGRAMS="nats,api,worker",
                    OSAPI_NATS_SERVER_PORT=str(nats_port), OSAPI_API_SERVER_PORT=str(api_port))
    sup = Supervise([sys.executable, "-m", "osapi", "supervise"], env, state, tmp_path / "run").start()
    try:
        try:
            status = sup.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            status = None
        assert status == 2, sup.log()
    finally:
        sup.stop()
    err = sup.err.read_text()
    secrets_dir = state / "secrets"
    assert f"refusing to use {secrets_dir}: it is owned by {trust_support.NOBODY_NAME} (uid {trust_support.NOBODY})" \
        in err
    assert f"chown root: {secrets_dir} && chmod 700 {secrets_dir}" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert trust_support.snapshot(state) == before  # no admin token signed with the planted key, not a chmod
    assert not (state / "supervisord.conf").exists() and not (state / "logs").exists()
    assert processes_mentioning(str(state)) == []
    assert not listening(nats_port) and not listening(api_port)


def test_supervise_refuses_a_planted_key_in_our_own_secrets_dir(tmp_path):
    state = tmp_path / "state"
    plant(state, ("signing_key",), secrets_owner=0)  # secrets/ is root's, the key inside nobody's
    before = trust_support.snapshot(state)
    env = clean_env(state, OSAPI_SUPERVISE_PROGRAMS="api", OSAPI_API_SERVER_PORT=str(free_port()))
    status, err = run_bounded(["supervise"], env, tmp_path)
    key = state / "secrets" / "signing_key"
    assert status == 2, err
    assert f"refusing to use {key}: it is owned by {trust_support.NOBODY_NAME}" in err
    assert f"else rm {key} and start `osapi supervise` to create a new one" in err
    assert trust_support.snapshot(state) == before


def test_the_client_refuses_a_planted_admin_token_and_sends_nothing(tmp_path):
    state = tmp_path / "state"
    plant(state, ("admin.token",), secrets_owner=0)
    os.chmod(state, 0o700)  # only the token itself is wrong
    before = trust_support.snapshot(state)
    with socket.socket() as api:  # where the client would send the planted token
        api.bind(("127.0.0.1", 0))
        api.listen(1)
        env = clean_env(state, OSAPI_API_CLIENT_URL=f"http://127.0.0.1:{api.getsockname()[1]}")
        status, err = run_bounded(["client", "system", "hostname"], env, tmp_path)
        api.setblocking(False)
        with pytest.raises(BlockingIOError):  # the client has exited: a connection would be queued
            api.accept()[0].close()
    token = state / "secrets" / "admin.token"
    assert status == 2, err
    assert f"refusing to use {token}: it is owned by {trust_support.NOBODY_NAME}" in err
    assert trust_support.snapshot(state) == before


@pytest.mark.parametrize("name", ["signing_key", "nats.token"])
def test_the_api_server_refuses_a_planted_secret_and_does_not_listen(tmp_path, name):
    state = tmp_path / "state"
    plant(state, (name,), secrets_owner=0)
    os.chmod(state, 0o700)  # only the secret itself is wrong
    before = trust_support.snapshot(state)
    port = free_port()
    extra = {"OSAPI_API_SERVER_PORT": str(port), "OSAPI_NATS_SERVER_PORT": str(free_port())}
    if name == "nats.token":
        extra["OSAPI_API_SERVER_SECURITY_SIGNING_KEY"] = "s" * 40
    status, err = run_bounded(["api", "server", "start"], clean_env(state, **extra), tmp_path)
    assert status == 2, err
    assert f"refusing to use {state / 'secrets' / name}: it is owned by {trust_support.NOBODY_NAME}" in err
    assert not listening(port)
    assert trust_support.snapshot(state) == before


@pytest.mark.parametrize("argv", [["job", "worker", "start"], ["nats", "server", "start"]],
                         ids=["worker", "nats-server"])
def test_worker_and_nats_server_refuse_a_token_in_a_lax_state_dir(tmp_path, argv):
    state = tmp_path / "state"
    plant(state, ("nats.token",), secrets_owner=0)
    os.chown(state / "secrets" / "nats.token", 0, 0)  # ours, but in a state dir anyone can write
    before = trust_support.snapshot(state)
    port = free_port()
    status, err = run_bounded(argv, clean_env(state, OSAPI_NATS_SERVER_PORT=str(port)), tmp_path)
    assert status == 2, err
    assert f"refusing to use {state}: it is writable by group or others (mode 0777)" in err
    assert f"chown root: {state} && chmod 700 {state}" in err
    assert not listening(port)
    assert trust_support.snapshot(state) == before
