"""Enrollment through the REST API and the CLI; a worker started from its bundle (README.md, "Fleet hosts").

Real nats-server configured as a control-plane node's (users file), a real API
process, the CLI in-process, and a real worker process started with nothing but
the bundle (``python -m osapi -f BUNDLE job worker start``). The users file is
rendered by a ``Renderer`` run here (an API process renders its own node's
file only when that node's nats-server was started by ``osapi nats server
start``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest
import yaml
from fleet_support import FleetNats
from testkit import ApiProcess, make_token, stop_process, wait_for
from job_support import Bridge, base_env

HOSTILE = ["web\n1", "web\x001", "*", ">", "a..b", "a/b", "a b", "_x", "", "a" * 300, "web1\r", "a.>", "w\"}"]


@pytest.fixture
def control(tmp_path):
    server = FleetNats(tmp_path / "nats").start()
    env = base_env(server, tmp_path / "state")
    api = bridge = None
    stop = threading.Event()
    try:
        api = ApiProcess(tmp_path / "api", env).start()
        api.wait_ready()
        bridge = Bridge(env)
        renderer = server.renderer()

        def render():  # what every control-plane node's API process does (osapi.fleet.renderer)
            while not stop.is_set():
                try:
                    bridge.call(renderer.once(bridge.store), timeout=10)
                except Exception:  # noqa: BLE001
                    pass
                stop.wait(0.2)

        thread = threading.Thread(target=render, daemon=True)
        thread.start()
        yield server, api, bridge
    finally:
        stop.set()
        if bridge is not None:
            bridge.close()
        if api is not None:
            api.stop()
        server.stop()


def client_env(api) -> dict:
    return {"OSAPI_API_CLIENT_URL": f"http://127.0.0.1:{api.port}",
            "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN": make_token(("admin",))}


def test_hostile_hostnames_are_refused_and_nothing_is_stored(control, cli):
    _, api, _ = control
    http = api.http(make_token(("admin",)))
    for bad in HOSTILE:
        resp = http.request("POST", "/api/v1/fleet/hosts", {"hostname": bad})
        assert resp.status == 400, (bad, resp.json)
        assert resp.json["error"] == "invalid hostname"
    for body in ({"hostname": "ok1", "labels": {"a b": "x"}}, {"hostname": "ok1", "labels": {"g": "x\ny"}},
                 {"hostname": "ok1", "rotate": "yes"}, {"hostname": "ok1", "evil": 1}, {"labels": {}},
                 {"hostname": "ok1", "labels": None}, {"hostname": "ok1", "labels": ["g=x"]}):
        assert http.request("POST", "/api/v1/fleet/hosts", body).status == 400, body
    assert http.request("DELETE", "/api/v1/fleet/hosts/a%20b").status == 400
    assert http.get("/api/v1/fleet/hosts").json == {"total": 0, "hosts": []}
    # the CLI refuses them before any request
    result = cli("client", "fleet", "host", "add", "a/b", env=client_env(api))
    assert result.status == 2 and not os.path.exists("a/b.yaml")
    # write scope is not enough
    resp = http.request("GET", "/api/v1/fleet/hosts", token=make_token(("write",)))
    assert resp.status == 403


def test_enroll_bundle_worker_labels_and_revoke(control, cli, tmp_path):
    server, api, bridge = control
    env = client_env(api)
    bundle = tmp_path / "web1.yaml"
    result = cli("client", "fleet", "host", "add", "Web1", "--labels", "group=web.dev", "-o", str(bundle), env=env)
    assert result.status == 0, result.stderr
    assert result.stdout.strip() == str(bundle)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    doc = yaml.safe_load(bundle.read_text())
    assert doc["job"]["worker"] == {"hostname": "web1", "labels": {"group": "web.dev"}}
    assert doc["supervise"]["programs"] == ["worker"]
    assert doc["nats"]["user"].startswith("osapi-host-") and doc["nats"]["password"]
    assert server.token not in bundle.read_text()  # the control plane's credential never goes into a bundle
    again = cli("client", "fleet", "host", "add", "web1", "-o", str(tmp_path / "again.yaml"), env=env)
    assert again.status == 1 and "already enrolled" in again.stderr
    assert not (tmp_path / "again.yaml").exists()

    # a worker from the bundle alone, configuring other labels locally: the enrolled ones decide
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    worker_env.update(PYTHONPATH=base_env(server, tmp_path)["PYTHONPATH"], OSAPI_JOB_WORKER_LABELS="group=db",
                      OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "host-state"))
    with open(tmp_path / "worker.log", "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "osapi", "-f", str(bundle), "job", "worker", "start"],
                                  cwd=tmp_path, env=worker_env, stdout=log, stderr=log)
    try:
        http = api.http(make_token(("admin",)))
        rows = wait_for(lambda: http.get("/api/v1/jobs/workers").json["workers"], timeout=30,
                        what="the enrolled worker in the registry")
        assert [(r["hostname"], r["labels"]) for r in rows] == [("web1", {"group": "web.dev"})]
        ok = http.get("/api/v1/system/hostname?target_hostname=group:web")
        assert ok.status == 200, ok.json
        assert [r["hostname"] for r in ok.json["results"]] == ["web1"]
        by_name = http.get("/api/v1/system/hostname?target_hostname=web1")
        assert by_name.status == 200 and by_name.json["results"][0]["hostname"] == "web1"
        # its local label does not reach it
        refused = http.request("POST", "/api/v1/jobs", {"operation": {"type": "system.hostname.get", "data": {}},
                                                         "target_hostname": "group:db"})
        assert refused.status == 201
        ran_any = http.get("/api/v1/system/hostname?target_hostname=_any")
        assert ran_any.status == 200 and ran_any.json["results"][0]["hostname"] == "web1"
        job = http.get(f"/api/v1/jobs/{refused.json['job_id']}").json
        assert job["status"] == "submitted" and not job["responses"]
        listed = cli("client", "fleet", "host", "list", "--json", env=env)
        assert listed.status == 0
        import json

        hosts = json.loads(listed.stdout)["hosts"]
        assert [(h["hostname"], h["connected"]) for h in hosts] == [("web1", True)]

        # revoke: the server drops the worker, which leaves the registry
        removed = cli("client", "fleet", "host", "remove", "web1", env=env)
        assert removed.status == 0, removed.stderr
        wait_for(lambda: "Authorization Violation" in (tmp_path / "worker.log").read_text(errors="replace")
                 or "closed for good" in (tmp_path / "worker.log").read_text(errors="replace")
                 or worker.poll() is not None, timeout=15, what="the revoked worker's connection refused")
        wait_for(lambda: http.get("/api/v1/jobs/workers").json["workers"] == [], timeout=30,
                 what="the revoked host out of the registry")
        assert cli("client", "fleet", "host", "remove", "web1", env=env).status == 1
        assert http.get("/api/v1/fleet/hosts").json["total"] == 0
    finally:
        stop_process(worker)
