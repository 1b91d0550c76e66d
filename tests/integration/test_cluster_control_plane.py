"""A control plane of three real ``osapi supervise`` nodes on loopback, and the loss of one.

The nodes are ``testkit.cluster.ControlPlane``'s: ``python -m osapi -f nodeN.yaml
supervise`` with ``supervise.programs: [nats, api]``, the configuration README.md "Run
a fleet" gives, the secrets made by node 1 and copied to nodes 2 and 3 before they
start. A worker-only host (``programs: [worker]``) points at all three.

The node-loss test kills node C's nats-server with SIGKILL (by the pid supervisord
reports) under asynchronous (``POST /jobs``) and synchronous load through all three
APIs, keeps C's nats down while loading, then starts it again. Every request answered
2xx must have its job stored and completed afterwards, through A and through B; no call
is answered a 5xx other than 503;
A and B answer 2xx again after the kill (the time it took is reported and checked
against the documented 10 s as a generous bound only); C catches up: every replica on
C is current again with the leader's last sequence.

Every process is stopped by pid; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest
from testkit.cluster import API, ControlPlane, Node, replicated, to_yaml, wait_completed
from testkit import Http, wait_for

from osapi import config as configuration
from osapi import supervise

pytestmark = pytest.mark.slow

WORKER_HOST = "fleet1"


async def _nats(urls: list[str], token: str, work):
    """``work(nc)`` on a raw connection as the control plane: user ``osapi`` with the NATS token (a node's
    nats-server runs with osapi's users file, which refuses a bare token: README "Fleet hosts")."""
    import nats

    from osapi.fleet.auth import CONTROL_USER

    nc = await nats.connect(servers=urls, user=CONTROL_USER, password=token, connect_timeout=2,
                            max_reconnect_attempts=2, reconnect_time_wait=0.5, allow_reconnect=False)
    try:
        return await work(nc)
    finally:
        await nc.close()


def stream_infos(node: Node, token: str) -> dict:
    """Every osapi stream's info, asked through ``node``'s nats-server alone."""
    from osapi.job.setup import wanted_streams

    cfg = configuration.load(str(node.conf), environ={})

    async def work(nc):
        js = nc.jetstream(timeout=5)
        return {w.config.name: await js.stream_info(w.config.name) for w in wanted_streams(cfg)}

    return asyncio.run(_nats([f"nats://127.0.0.1:{node.nats_port}"], token, work))


def lead_from(node: Node, token: str) -> dict[str, str]:
    """Move the leadership of every osapi stream (and its consumers) to ``node``'s server, so that
    losing it forces elections everywhere. Returns each stream's leader afterwards."""
    from osapi.job.setup import wanted_streams

    cfg = configuration.load(str(node.conf), environ={})
    preferred = json.dumps({"placement": {"preferred": node.server_name}}).encode()

    async def work(nc):
        js = nc.jetstream(timeout=5)
        leaders = {}
        for wanted in wanted_streams(cfg):
            name = wanted.config.name
            for _ in range(5):
                info = await js.stream_info(name)
                if info.cluster.leader == node.server_name:
                    break
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{name}", preferred, timeout=5)
                await asyncio.sleep(0.3)
            for consumer in await js.consumers_info(name):
                for _ in range(5):
                    current = await js.consumer_info(name, consumer.name)
                    if current.cluster.leader == node.server_name:
                        break
                    await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{name}.{consumer.name}", preferred,
                                     timeout=5)
                    await asyncio.sleep(0.3)
            leaders[name] = (await js.stream_info(name)).cluster.leader
        return leaders

    return asyncio.run(_nats([f"nats://127.0.0.1:{node.nats_port}"], token, work))


class Cluster(ControlPlane):
    """The control plane and a worker-only host that connects with the control plane's token."""

    def start(self) -> "Cluster":
        super().start()
        self.start_worker()
        return self

    def start_worker(self) -> None:
        root = self.root / WORKER_HOST
        root.mkdir(parents=True, exist_ok=True)
        conf = root / f"{WORKER_HOST}.yaml"
        data = {
            "nats": {"url": [n.url for n in self.nodes], "token": self.nats_token},
            "supervise": {"state_dir": str(root / "state"), "programs": ["worker"], "workers": 1},
            **replicated({"worker": {"hostname": WORKER_HOST}}),
        }
        conf.write_text(to_yaml(data))
        os.chmod(conf, 0o600)
        self.start_host(WORKER_HOST, conf)
        self.wait_listed(WORKER_HOST)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    fleet = Cluster(tmp_path_factory.mktemp("fleet"))
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


def submit(http: Http):
    return http.request("POST", f"{API}/jobs", {"operation": {"type": "system.hostname.get"},
                                                "target_hostname": "_any"})


def test_three_nodes_form_one_cluster_and_any_api_answers(cluster):
    a, b, c = cluster.nodes
    token = cluster.admin_token
    resp = submit(a.http(token))
    assert resp.status == 201, resp.raw
    job_id = resp.json["job_id"]
    job = wait_completed(b.http(token), job_id, 30)  # submitted via A, seen completed via B and C
    assert wait_completed(c.http(token), job_id, 30)["status"] == "completed"
    assert list(job["responses"]) == [WORKER_HOST], job
    assert job["responses"][WORKER_HOST]["data"]["hostname"] == WORKER_HOST
    sync = c.http(token).get(f"{API}/system/hostname?target_hostname=_any")
    assert sync.status == 200, sync.raw
    assert sync.json["results"][0]["hostname"] == WORKER_HOST

    # node 3 got its secrets with lax modes: supervise took them (same values) and tightened them
    assert (c.state / "secrets").stat().st_mode & 0o777 == 0o700
    for name in ("signing_key", "admin.token", "nats.token"):
        assert (c.state / "secrets" / name).stat().st_mode & 0o777 == 0o600, name
        assert (c.state / "secrets" / name).read_text() == (a.state / "secrets" / name).read_text()

    infos = stream_infos(b, cluster.nats_token)
    assert set(infos) >= {"JOBS", "JOBS_DLQ", "KV_job-queue", "KV_job-responses", "AUDIT"}
    members = {n.server_name for n in cluster.nodes}
    for name, info in infos.items():
        assert info.config.num_replicas == 3, name
        peers = {info.cluster.leader} | {r.name for r in info.cluster.replicas}
        assert peers == members, (name, info.cluster)


def test_a_server_without_the_route_secret_cannot_join(cluster, tmp_path):
    """Routes carry no TLS here: the shared route secret (``secrets/cluster.token``) keeps a rogue
    nats-server that reaches the cluster ports out; it never sees the streams. The secret is in no log."""
    import subprocess

    from testkit.cluster import FLEET_CLUSTER
    from testkit import free_port, stop_process, wait_for_port

    from osapi import natsd

    a, b, c = cluster.nodes
    secret = configuration.read_secret_file(a.state, "cluster.token")
    assert secret and all(configuration.read_secret_file(n.state, "cluster.token") == secret for n in cluster.nodes)
    port, token = free_port(), "rogue-token-0123456789"
    conf, log = tmp_path / "rogue.conf", tmp_path / "rogue.log"
    conf.write_text(natsd.render_config(
        host="127.0.0.1", port=port, store_dir=tmp_path / "js", token=token, cluster_name=FLEET_CLUSTER,
        cluster_host="127.0.0.1", cluster_port=free_port(), server_name="rogue",
        routes=[f"nats://127.0.0.1:{n.cluster_port}" for n in cluster.nodes]))
    with open(log, "ab") as out:
        rogue = subprocess.Popen([str(natsd.find_binary()), "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_for_port("127.0.0.1", port, 15, rogue)
        node_logs = [n.state / "logs" / "nats-server.log" for n in cluster.nodes]
        def route_refused() -> bool:  # a route's (rid:, not a client's cid:) failed authorization
            lines = "".join(p.read_text(errors="replace") for p in node_logs).lower().splitlines()
            return any(" rid:" in line and ("authorization" in line or "authentication" in line) for line in lines)

        wait_for(route_refused, 30, "the nodes refusing the rogue's routes", interval=0.5)

        async def streams(nc):
            try:
                reply = await nc.request("$JS.API.STREAM.NAMES", b"", timeout=3)
            except Exception as exc:  # noqa: BLE001 - no JetStream cluster to answer: what we want
                return type(exc).__name__
            return json.loads(reply.data)

        async def ask():
            import nats

            nc = await nats.connect(f"nats://127.0.0.1:{port}", token=token, connect_timeout=2, allow_reconnect=False)
            try:
                return [await streams(nc) for _ in range(3)]
            finally:
                await nc.close()

        answers = asyncio.run(ask())
    finally:
        stop_process(rogue)
    rogue_log = log.read_text(errors="replace")
    assert "route error 'authorization violation'" in rogue_log.lower(), rogue_log[-3000:]  # its routes refused
    for answer in answers:
        names = (answer.get("streams") or []) if isinstance(answer, dict) else []
        assert "JOBS" not in names, answer
    print(f"the rogue's JetStream answered: {answers}")
    # the cluster is whole and the secret is in no log (nor in a file but the 0600 nats-server.conf)
    assert submit(a.http(cluster.admin_token)).status == 201
    for node in cluster.nodes:
        for path in (node.state / "logs").glob("*.log"):
            assert secret not in path.read_text(errors="replace"), path
        assert secret not in node.sup.log()
        assert (node.state / "nats-server.conf").stat().st_mode & 0o777 == 0o600


@dataclass
class Outcome:
    node: str
    kind: str  # "async" or "sync"
    started: float
    status: int | None  # None: no HTTP answer
    job_id: str | None


class Load:
    """Asynchronous and synchronous calls, one at a time per node and kind, until stopped (bounded)."""

    MAX_REQUESTS = 2000  # per thread

    def __init__(self, nodes: list[Node], token: str):
        self.nodes = nodes
        self.token = token
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n, kind), daemon=True)
                        for n in nodes for kind in ("async", "sync")]

    def _run(self, node: Node, kind: str) -> None:
        http = node.http(self.token)
        for _ in range(self.MAX_REQUESTS):
            if self.stop.is_set():
                return
            started = time.monotonic()
            status, job_id = None, None
            try:
                if kind == "async":
                    resp = submit(http)
                else:
                    resp = http.get(f"{API}/system/hostname?target_hostname=_any")
                status = resp.status
                body = resp.json if resp.raw else None
                job_id = body.get("job_id") if isinstance(body, dict) else None
            except (OSError, ValueError):
                pass
            with self.lock:
                self.outcomes.append(Outcome(node.name, kind, started, status, job_id))
            if status is None or status >= 500:
                self.stop.wait(0.2)
            else:
                self.stop.wait(0.1)

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads)

    def answered(self) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if o.status is not None and 200 <= o.status < 300]

    def first_2xx_after(self, node: str, moment: float) -> float | None:
        with self.lock:
            times = [o.started for o in self.outcomes
                     if o.node == node and o.started >= moment and o.status is not None and 200 <= o.status < 300]
        return min(times) - moment if times else None


def not_completed(http: Http, ids: set[str]) -> set[str]:
    """Those of ``ids`` that ``GET /jobs?status=completed`` does not list (empty: all completed)."""
    completed: set[str] = set()
    for page in range(50):
        resp = http.get(f"{API}/jobs?status=completed&limit=1000&offset={page * 1000}")
        assert resp.status == 200, resp.raw
        items = resp.json["items"]
        completed |= {item.get("job_id") or item.get("id") for item in items}
        if len(items) < 1000:
            break
    return ids - completed


def keep_down(node: Node, killed_pid: int) -> None:
    """Stop ``node``'s nats program once supervisord has noticed the kill (it restarts it at once)."""
    wait_for(lambda: node.sup.processes()["nats"]["pid"] != killed_pid or
               node.sup.processes()["nats"]["state"] != "RUNNING", 30, "supervisord noticed the kill")
    for _ in range(20):
        supervise.control(node.sup.paths, "stop", "nats")
        if node.sup.processes()["nats"]["state"] in ("STOPPED", "EXITED"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{node.name}: nats not stopped: {node.sup.processes()}")


def test_losing_one_node_loses_no_answered_job_and_it_catches_up(cluster):
    a, b, c = cluster.nodes
    token = cluster.admin_token
    load = Load(cluster.nodes, token).start()
    try:
        leaders = lead_from(c, cluster.nats_token)
        assert set(leaders.values()) == {c.server_name}, leaders
        wait_for(lambda: len(load.answered()) >= 12, 30, "load answered before the kill", interval=0.2)
        pid = c.nats_pid()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # keep C's nats-server down while A and B carry the load (supervisord would restart it at once)
        keep_down(c, pid)
        recovered = wait_for(
            lambda: (lambda ta, tb: (ta, tb) if ta is not None and tb is not None else None)(
                load.first_2xx_after(a.name, killed + 0.001), load.first_2xx_after(b.name, killed + 0.001)),
            40, "2xx through A and B after the kill", interval=0.2)
        time.sleep(2)  # more load with C's server down
        down_for = time.monotonic() - killed
        supervise.control(c.sup.paths, "start", "nats")
        restarted = time.monotonic()
        assert c.sup.processes()["nats"]["pid"] != pid
        time.sleep(2)  # and load with C back
    finally:
        load.finish()

    statuses = Counter(o.status for o in load.outcomes)
    print(f"first 2xx after the kill: A {recovered[0]:.2f}s, B {recovered[1]:.2f}s; C down {down_for:.1f}s; "
          f"{len(load.outcomes)} requests: {dict(statuses)}")
    # a generous bound, not a timing test: the documented at most 10 s of 503
    assert max(recovered) <= 10.0, recovered
    # README "Losing a node": 503 while the cluster elects leaders, never another 5xx (a 500 is an
    # exception nobody mapped; a 504 a synchronous call whose job waited for a pull the dead server held)
    other_5xx = [o for o in load.outcomes if o.status is not None and o.status >= 500 and o.status != 503]
    assert not other_5xx, (other_5xx, cluster.logs())

    answered = load.answered()
    assert {o.kind for o in answered} == {"async", "sync"}
    ids = [o.job_id for o in answered]
    assert all(ids), [o for o in answered if not o.job_id]
    after_kill = [o for o in answered if o.started > killed and o.node in (a.name, b.name)]
    assert after_kill
    for node in (a, b):  # every one stored and completed, through A and through B
        left: set[str] = set(ids)
        for _ in range(60):  # bounded: 60 rounds of at most a few requests, a second apart
            left = not_completed(node.http(token), left)
            if not left:
                break
            time.sleep(1)
        assert not left, (node.name, sorted(left), [o for o in answered if o.job_id in left], cluster.logs())

    # C catches up: each of its replicas is current, at the leader's last sequence
    def caught_up():
        infos = stream_infos(c, cluster.nats_token)
        for name, info in infos.items():
            if info.cluster.leader == c.server_name:
                continue
            mine = [r for r in info.cluster.replicas if r.name == c.server_name]
            if not mine or not mine[0].current or (mine[0].lag or 0) != 0:
                return None
        return infos

    try:
        wait_for(caught_up, 60, "node C current in every stream", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None
    print(f"C current in every stream at the latest {time.monotonic() - restarted:.1f}s after its restart")
    # nothing writes to these any more: the same last sequence through C as through A
    via_c, via_a = stream_infos(c, cluster.nats_token), stream_infos(a, cluster.nats_token)
    for name in ("JOBS", "KV_job-queue", "KV_job-responses"):
        assert via_c[name].state.last_seq == via_a[name].state.last_seq, name
