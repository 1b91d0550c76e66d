"""The appliance: ``osapi.pyz supervise`` on a bare Python with no configuration at all.

One supervise (nats, api, one worker) is started for the whole module and shared
by the tests that do not disturb each other; the last test stops it with SIGTERM
and starts a second one on the same state directory. Only the ports are chosen
(free ones, through OSAPI_* variables): no file, no flag.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit.supervise import Supervise, alive, children_of, processes_mentioning
from testkit import free_port, wait_for

PROGRAMS = ["nats", "api", "worker:worker-1"]
SECRETS = ["admin.token", "nats.token", "signing_key", "supervisor.password"]


@dataclass
class Appliance:
    sup: Supervise
    env: dict[str, str]
    api_port: int
    nats_port: int

    @property
    def state(self) -> Path:
        return self.sup.state_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self) -> str:
        return (self.state / "secrets" / "admin.token").read_text().strip()

    def http(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, {}

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.http("GET", "/health/ready", auth=False)[0] == 200, timeout, "/health/ready 200")

    def run_job(self, target: str = "_any", timeout: float = 60) -> dict:
        status, created = self.http("POST", "/api/v1/jobs",
                                    {"operation": {"type": "system.hostname.get", "data": {}},
                                     "target_hostname": target})
        assert status == 201, created
        return self.wait_job(created["job_id"], timeout)

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        def done():
            status, job = self.http("GET", f"/api/v1/jobs/{job_id}")
            return job if status == 200 and job["status"] in ("completed", "failed", "partial_failure") else None

        return wait_for(done, timeout, f"job {job_id} finished", interval=0.2)


def start_supervise(runner, workdir: Path, env: dict[str, str], *args: str) -> Supervise:
    state = Path(env["OSAPI_SUPERVISE_STATE_DIR"])
    return Supervise(runner.command() + ["supervise", *args], env, state, workdir,
                     status_command=runner.command()).start()


@pytest.fixture(scope="module")
def appliance(runner, tmp_path_factory):
    if runner.run("job", "worker", "start", "--help").status != 0:
        pytest.skip("`osapi job worker start` does not exist yet")
    base = tmp_path_factory.mktemp("appliance")
    api_port, nats_port = free_port(), free_port()
    env = runner.env(
        OSAPI_SUPERVISE_STATE_DIR=str(base / "state"),
        OSAPI_API_SERVER_PORT=str(api_port),
        OSAPI_NATS_SERVER_PORT=str(nats_port),
        OSAPI_API_CLIENT_URL=f"http://127.0.0.1:{api_port}",
    )
    app = Appliance(start_supervise(runner, base / "run", env), env, api_port, nats_port)
    try:
        app.sup.wait_running(PROGRAMS, timeout=90)
        app.wait_ready()
        yield app
    finally:
        app.sup.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_zero_configuration_start(appliance, runner):
    result = runner.run("supervise", "status", env=appliance.env)
    assert result.status == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("supervisord RUNNING")
    rows = {line.split()[0]: line.split()[1] for line in lines[3:]}
    assert rows == {"nats": "RUNNING", "api": "RUNNING", "worker:worker-1": "RUNNING"}

    assert appliance.http("GET", "/health/ready", auth=False) == (200, {"status": "ready"})
    state = appliance.state
    for directory in (state, state / "secrets", state / "logs"):
        assert mode(directory) == 0o700
    assert sorted(p.name for p in (state / "secrets").iterdir()) == SECRETS
    for secret in (state / "secrets").iterdir():
        assert mode(secret) == 0o600
    logs = sorted(p.name for p in (state / "logs").iterdir())
    assert {"supervisord.log", "nats.log", "nats-server.log", "api.log", "worker-1.log"} <= set(logs)
    assert "Server is ready" in (state / "logs" / "nats-server.log").read_text()  # nats-server's own log
    # the children run from the same archive with the same bare python
    conf = (state / "supervisord.conf").read_text()
    assert f"command={runner.python} {runner.pyz} api server start" in conf


def test_client_on_the_same_host_needs_no_flags(appliance, runner):
    result = runner.run("client", "system", "hostname", env=appliance.env)
    assert result.status == 0, result.stderr
    assert os.uname().nodename in result.stdout
    result = runner.run("--json", "client", "system", "hostname", env=appliance.env)
    assert result.status == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["results"][0]["hostname"] == os.uname().nodename


def test_killed_children_come_back_and_jobs_survive_a_nats_restart(appliance):
    job = appliance.run_job()
    assert job["status"] == "completed", job

    for name in ("worker:worker-1", "api", "nats"):
        before = appliance.sup.processes()[name]["pid"]
        os.kill(before, signal.SIGKILL)
        wait_for(lambda: appliance.sup.processes().get(name, {}).get("pid") not in (None, before),
                   60, f"a new {name} pid", interval=0.2)
        appliance.sup.wait_running(PROGRAMS, timeout=60)
        assert not alive(before)

    appliance.wait_ready()
    # JetStream file storage: the job from before NATS died is still there, unchanged
    status, again = appliance.http("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and again["status"] == "completed" and again["responses"] == job["responses"]
    # and the reconnected API and worker run new jobs
    assert appliance.run_job()["status"] == "completed"


def test_a_worker_only_supervise_joins_the_first_ones_nats(appliance, runner, tmp_path):
    env = runner.env(
        OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "fleet-state"),
        OSAPI_SUPERVISE_PROGRAMS="worker",
        OSAPI_NATS_URL=f"nats://127.0.0.1:{appliance.nats_port}",
        OSAPI_NATS_TOKEN=(appliance.state / "secrets" / "nats.token").read_text().strip(),
        OSAPI_JOB_WORKER_HOSTNAME="fleet-e2e-2",
    )
    fleet = start_supervise(runner, tmp_path / "fleet", env, "--workers", "2")
    try:
        procs = fleet.wait_running(["worker:worker-1", "worker:worker-2"], timeout=90)
        assert sorted(procs) == ["worker:worker-1", "worker:worker-2"]  # no local nats, no api
        assert sorted(p.name for p in (tmp_path / "fleet-state" / "secrets").iterdir()) == ["supervisor.password"]

        def joined():
            status, body = appliance.http("GET", "/api/v1/jobs/workers")
            return status == 200 and "fleet-e2e-2" in {w["hostname"] for w in body["workers"]}

        wait_for(joined, 60, "fleet-e2e-2 in GET /api/v1/jobs/workers", interval=0.3)
        job = appliance.run_job(target="fleet-e2e-2")
        assert job["status"] == "completed" and list(job["responses"]) == ["fleet-e2e-2"], job
        # `supervise stop` with no name stops that whole supervisor, workers first, and it exits 0
        result = runner.run("supervise", "stop", env=env, timeout=200)
        assert result.status == 0, result.stderr
        assert result.stdout.splitlines() == ["worker:worker-2: STOPPED", "worker:worker-1: STOPPED",
                                              f"supervisord (pid {fleet.proc.pid}): EXITED"]
        assert fleet.proc.wait(timeout=30) == 0
    finally:
        status = fleet.stop()
    assert status == 0, fleet.log()


def test_sigterm_stops_everything_then_a_second_start_reuses_the_state(appliance, runner, tmp_path):
    state = appliance.state
    secrets = {p.name: p.read_bytes() for p in (state / "secrets").iterdir()}
    job = appliance.run_job()
    children = children_of(appliance.sup.proc.pid)
    assert len(children) >= 3

    status = appliance.sup.stop(signal.SIGTERM)
    assert status == 0, appliance.sup.log()
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(state)) == []
    log = (state / "logs" / "supervisord.log").read_text()
    last_stop = log[log.rindex("received SIGTERM"):]
    assert last_stop.index("stopped: worker-1") < last_stop.index("stopped: api") < last_stop.index("stopped: nats")

    second = start_supervise(runner, tmp_path / "second", appliance.env)
    appliance.sup = second  # the module fixture stops whichever is current
    second.wait_running(PROGRAMS, timeout=90)
    appliance.wait_ready()
    assert {p.name: p.read_bytes() for p in (state / "secrets").iterdir()} == secrets
    status, again = appliance.http("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200 and again["status"] == "completed"
    result = runner.run("client", "system", "hostname", env=appliance.env)
    assert result.status == 0, result.stderr
