"""``osapi api server start``: serves in the foreground, exits 0 on SIGTERM/SIGINT, 2 on bad setup.

NATS is deliberately absent here (a closed port): the server must start anyway,
answer 503 where NATS is needed, and stop cleanly.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from testkit import SIGNING_KEY, ApiProcess, clean_env, free_port


def _dead_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_without_nats_and_stops_cleanly(tmp_path, sig):
    api = ApiProcess(tmp_path, clean_env(OSAPI_NATS_URL=_dead_nats())).start()
    try:
        http = api.http()
        assert http.get("/health", token=None).json == {"status": "ok"}
        ready = http.get("/health/ready", token=None)
        assert ready.status == 503 and ready.json["status"] == "not_ready"
    finally:
        code = api.stop(sig)
    assert code == 0, api.log()
    log = api.log()
    assert f"API listening on http://127.0.0.1:{api.port}" in log
    assert "API stopped" in log
    assert "Traceback" not in log


def _run(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osapi", "api", "server", "start"],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_port_in_use_is_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _run(clean_env(OSAPI_API_SERVER_PORT=str(port), OSAPI_NATS_URL=_dead_nats(),
                                OSAPI_API_SERVER_SECURITY_SIGNING_KEY=SIGNING_KEY,
                                OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "state")))
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_signing_key_is_exit_2(tmp_path):
    result = _run(clean_env(OSAPI_API_SERVER_PORT=str(free_port()), OSAPI_NATS_URL=_dead_nats(),
                            OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "empty-state")))
    assert result.returncode == 2
    assert "no signing key" in result.stderr and "OSAPI_API_SERVER_SECURITY_SIGNING_KEY" in result.stderr


@pytest.mark.parametrize("name, value, words", [
    ("OSAPI_API_SERVER_PORT", "99999", "api.server.port"),
    ("OSAPI_API_SERVER_JOB_TIMEOUT", "soon", "api.server.job_timeout"),
    ("OSAPI_API_SERVER_SECURITY_SIGNING_KEY", "short", "signing_key"),
])
def test_bad_config_is_exit_2(tmp_path, name, value, words):
    env = clean_env(OSAPI_API_SERVER_SECURITY_SIGNING_KEY=SIGNING_KEY, OSAPI_NATS_URL=_dead_nats(),
                    OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "state"))
    env[name] = value
    result = _run(env)
    assert result.returncode == 2
    assert words in result.stderr


def test_sigterm_lets_a_running_request_finish(tmp_path, nats_server):
    """SIGTERM while a synchronous request waits for workers: it still gets its answer."""
    import threading

    from testkit import make_token, wait_for

    api = ApiProcess(tmp_path, clean_env(**nats_server.env(), OSAPI_API_SERVER_JOB_TIMEOUT="3s")).start()
    http = api.http(make_token(["admin"]))
    answers = []
    try:
        api.wait_ready()
        waiting = threading.Thread(
            target=lambda: answers.append(http.get("/api/v1/system/uptime?target_hostname=nobody.example")))
        waiting.start()
        # the job is stored once the request is in flight (no worker will ever answer it)
        wait_for(lambda: http.get("/api/v1/jobs").json["total_items"] == 1, timeout=20, what="job submitted")
        assert not answers
        api.proc.send_signal(signal.SIGTERM)
        waiting.join(30)
        code = api.proc.wait(30)
    finally:
        api.stop()
    assert code == 0, api.log()
    assert len(answers) == 1 and answers[0].status == 404, answers  # no live worker matches
    assert answers[0].json["code"] == 404
    log = api.log()
    assert log.index("received SIGTERM") < log.index("path=/api/v1/system/uptime status=404")
