"""A fleet on the three-node control plane, end to end, with TLS on (README.md, "Run a fleet", "Fleet hosts").

Three real ``supervise`` nodes (``testkit.cluster.ControlPlane``, ``programs: [nats, api]``,
``nats.server.tls.enabled``; node 1 generates the CA, the test copies ``secrets/`` to the
others). A host is enrolled through node 1's API with the CLI and started with nothing but
its bundle (``python -m osapi -f BUNDLE supervise``, ``programs: [worker]``); jobs reach it
through node 2's API. Raw nats-py connections with the bundle's credentials (nothing of
osapi in between) work on every node; a plain-text connection is refused by every node.
Rotating a host's credentials makes every node refuse the old password; revoking a host
through node 3 makes every node drop its live connections and refuse new ones, and it
leaves ``GET /jobs/workers``. A job whose host dies on it past ``max_deliver`` is marked
failed by the control plane's API processes (no worker runs on the control plane, and a
fleet host runs no dead-letter loop).

The tests run in file order on one control plane; each leaves it usable for the next.
Consumers use ``max_deliver=2``, ``ack_wait=2s`` and a 100 ms back-off (the bundle carries
them to the host) so that redeliveries happen in test time. Every process is stopped by
pid; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time

import pytest
import yaml
from testkit.cluster import API, ControlPlane, wait_completed
from fleet_support import RawHost
from testkit import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

HOST = "edge1"
ENV = {
    "OSAPITEST_HOOKS": "1",  # test.sleep, for the host that dies on its job
    "OSAPI_JOB_CONSUMER_MAX_DELIVER": "2",
    "OSAPI_JOB_CONSUMER_ACK_WAIT": "2s",
    "OSAPI_JOB_CONSUMER_BACK_OFF": "100ms",
}
REVOKE_BOUND = 10.0  # seconds: README's "within 10 s on every node", a generous bound here


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    control = ControlPlane(tmp_path_factory.mktemp("fleet-tls"), tls=True, env=ENV)
    try:
        control.start()
        yield control
    finally:
        control.stop()


def client_env(plane: ControlPlane, node) -> dict:
    return {"OSAPI_API_CLIENT_URL": f"http://127.0.0.1:{node.api_port}",
            "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN": plane.admin_token}


def tls_of(bundle: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=bundle["nats"]["tls"]["ca"])


async def works(url: str, user: str, password: str, context: ssl.SSLContext) -> dict:
    """A raw connection as the host: the jobs bucket's stream info (which its permissions allow)."""
    host = await RawHost().connect(url, user, password, tls=context)
    try:
        reply = await host.nc.request("$JS.API.STREAM.INFO.KV_job-queue", b"", timeout=5)
        return json.loads(reply.data)
    finally:
        await host.close()


async def refused(url: str, user: str, password: str, context: ssl.SSLContext) -> str | None:
    """The server's refusal of a new connection with these credentials, or None when it accepted it."""
    try:
        host = await RawHost().connect(url, user, password, tls=context)
    except Exception as exc:  # noqa: BLE001 - the refusal
        return str(exc) or type(exc).__name__
    await host.close()
    return None


async def wait_refused_everywhere(urls: list[str], user: str, password: str, context, timeout: float) -> dict:
    """Poll (bounded) until every URL refuses the credentials; each one's refusal."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    for _ in range(int(timeout / 0.2) + 1):
        for url in urls:
            if url not in found:
                why = await refused(url, user, password, context)
                if why is not None:
                    found[url] = why
        if len(found) == len(urls) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert set(found) == set(urls), f"still accepted after {timeout}s: {sorted(set(urls) - set(found))}"
    return found


def plain_text_refused(port: int, token: str) -> str:
    """CONNECT in plain text to a TLS node: no PONG; the error line (or the closed connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        info = json.loads(reader.readline().decode().split(" ", 1)[1])
        assert info["tls_required"] is True
        sock.sendall(f"CONNECT {json.dumps({'verbose': False, 'auth_token': token})}\r\nPING\r\n".encode())
        answer = reader.readline().decode()
    assert "PONG" not in answer
    return answer


def started_on(job: dict, hostname: str) -> int:
    return sum(1 for e in job.get("timeline") or [] if e["event"] == "started" and e.get("hostname") == hostname)


def test_a_host_enrolled_through_one_node_runs_jobs_through_another_with_tls(plane, cli, tmp_path_factory):
    a, b, c = plane.nodes
    token = plane.admin_token
    root = plane.root / HOST
    root.mkdir()
    path = root / f"{HOST}.yaml"
    result = cli("client", "fleet", "host", "add", HOST, "--labels", "group=edge", "-o", str(path),
                 env=client_env(plane, a))
    assert result.status == 0, result.stderr
    bundle = yaml.safe_load(path.read_text())
    # the bundle carries everything the host needs: every member, the CA, the consumer settings
    assert bundle["nats"]["url"] == [n.url for n in plane.nodes]
    assert bundle["nats"]["tls"]["ca"].strip() == plane.ca_file.read_text().strip()
    assert bundle["job"]["consumer"] == {"ack_wait": "2s", "max_deliver": 2, "back_off": ["100ms"]}
    assert "token" not in bundle["nats"] and plane.nats_token not in path.read_text()

    # the host: the bundle alone (its state dir and the test hooks come from its environment)
    plane.start_host(HOST, path, env={"OSAPI_SUPERVISE_STATE_DIR": str(root / "state"), "OSAPITEST_HOOKS": "1"})
    plane.wait_listed(HOST)
    assert plane.workers(c) == [HOST]  # no worker on the control plane

    resp = b.http(token).request("POST", f"{API}/jobs", {"operation": {"type": "system.hostname.get"},
                                                           "target_hostname": "group:edge"})
    assert resp.status == 201, resp.raw
    job = wait_completed(c.http(token), resp.json["job_id"], 30)
    assert list(job["responses"]) == [HOST] and job["responses"][HOST]["data"]["hostname"] == HOST

    # raw connections with the bundle's credentials work on each node
    user, password, context = bundle["nats"]["user"], bundle["nats"]["password"], tls_of(bundle)
    for node in plane.nodes:
        info = asyncio.run(works(node.url, user, password, context))
        assert info.get("config", {}).get("name") == "KV_job-queue", (node.name, info)
        assert info["config"]["num_replicas"] == 3

    # plain text is refused by every node
    for node in plane.nodes:
        answer = plain_text_refused(node.nats_port, plane.nats_token)
        assert "TLS Required" in answer or answer == "", (node.name, answer)


def test_a_job_whose_host_dies_on_it_is_failed_by_the_control_plane(plane):
    """No worker on the control plane, none with a dead-letter loop on the fleet host: the APIs handle it."""
    a, b, c = plane.nodes
    token = plane.admin_token
    host = plane.hosts[HOST]
    resp = a.http(token).request("POST", f"{API}/jobs", {"operation": {"type": "test.sleep", "data": {"seconds": 60}},
                                                           "target_hostname": HOST})
    assert resp.status == 201, resp.raw
    job_id = resp.json["job_id"]
    http = b.http(token)
    for delivery in (1, 2):
        wait_for(lambda: started_on(http.get(f"{API}/jobs/{job_id}").json, HOST) >= delivery, 30,
                 f"delivery {delivery} started on {HOST}", interval=0.3)
        pid = host.processes()["worker:worker-1"]["pid"]
        os.kill(pid, signal.SIGKILL)  # supervisord starts it again: it pulls, the server redelivers or gives up
        wait_for(lambda: host.processes().get("worker:worker-1", {}).get("pid") not in (None, pid), 30,
                 "the host's worker started again", interval=0.3)
    def failed():
        job = c.http(token).get(f"{API}/jobs/{job_id}").json
        return job if job["status"] == "failed" else None

    job = wait_for(failed, 40, "the dead job failed", interval=0.5)
    assert "gave up after 2 deliveries" in job["error"], job
    assert job["responses"][HOST]["status"] == "failed"
    assert job["worker_states"][HOST]["status"] == "failed"
    # handled once, by one of the three APIs
    assert [e.get("hostname") for e in job["timeline"] if e["event"] == "failed"] == [HOST]
    assert plane.workers() == [HOST]
    plane.wait_listed(HOST)  # the host is back for the next test


def test_rotate_and_revoke_take_effect_on_every_node(plane):
    a, b, c = plane.nodes
    token = plane.admin_token
    urls = [n.url for n in plane.nodes]

    # rotate (another host, raw connections only): the old password is refused on every node
    first = b.http(token).request("POST", f"{API}/fleet/hosts", {"hostname": "edge2"})
    assert first.status == 201, first.raw
    old = yaml.safe_load(first.json["bundle"])
    context = tls_of(old)
    wait_for(lambda: all(asyncio.run(refused(u, old["nats"]["user"], old["nats"]["password"], context)) is None
                         for u in urls), 20, "edge2 accepted by every node", interval=0.3)
    rotated = a.http(token).request("POST", f"{API}/fleet/hosts", {"hostname": "edge2", "rotate": True})
    assert rotated.status == 201, rotated.raw
    new = yaml.safe_load(rotated.json["bundle"])
    assert new["nats"]["password"] != old["nats"]["password"]
    asyncio.run(wait_refused_everywhere(urls, old["nats"]["user"], old["nats"]["password"], context, 30))
    wait_for(lambda: all(asyncio.run(refused(u, new["nats"]["user"], new["nats"]["password"], context)) is None
                         for u in urls), 20, "the new credentials accepted by every node", interval=0.3)

    # revoke the running host through node 3: live connections dropped, new ones refused, on every node
    bundle = yaml.safe_load((plane.root / HOST / f"{HOST}.yaml").read_text())
    user, password, context = bundle["nats"]["user"], bundle["nats"]["password"], tls_of(bundle)

    async def revoke() -> tuple[float, float]:
        live = [await RawHost().connect(u, user, password, tls=context) for u in urls]
        try:
            resp = await asyncio.to_thread(c.http(token).request, "DELETE", f"{API}/fleet/hosts/{HOST}")
            assert resp.status == 204, resp.raw
            start = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(h.closed.wait() for h in live)), 30)
            dropped = time.monotonic() - start
            reasons = await wait_refused_everywhere(urls, user, password, context, 30)
            assert all("authorization" in r.lower() for r in reasons.values()), reasons
            return dropped, time.monotonic() - start
        finally:
            for host in live:
                await host.close()

    revoked = time.monotonic()
    dropped, refused_after = asyncio.run(revoke())
    assert max(dropped, refused_after) <= REVOKE_BOUND, (dropped, refused_after)
    wait_for(lambda: HOST not in plane.workers(b), 30, f"{HOST} out of /jobs/workers", interval=0.5)
    print(f"revoked: live connections dropped on every node within {dropped:.1f}s, new ones refused within "
          f"{refused_after:.1f}s, out of /jobs/workers within {time.monotonic() - revoked:.1f}s")
    listed = a.http(token).get(f"{API}/fleet/hosts").json
    assert [h["hostname"] for h in listed["hosts"]] == ["edge2"]
    plane.stop_host(HOST)
