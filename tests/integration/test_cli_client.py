"""`osapi client …` against the real thing: nats-server, `osapi api server start`, two workers.

One stack per module (started once, stopped by pid at the end):

- a real nats-server with token auth (testkit.NatsServer),
- the REST API as a subprocess on a free port,
- two workers as subprocesses acting as two hosts: ``w-alpha`` (label
  ``group=web.dev``) and ``w-beta`` (label ``group=db``). Their DNS provider is
  ``resolv_conf`` on temp paths: w-alpha's is a file, w-beta's is a directory, so
  DNS reads fail on w-beta only -- that is how a broadcast gets one failed host.

Commands run in-process (the ``cli`` fixture) where the output is checked, and as
subprocesses where the exit status is the point.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from testkit import NatsServer, free_port, stop_process, wait_for_port

from osapi import authtoken

SIGNING_KEY = "cli-client-integration-signing-key-0123456789"
TOKEN_ENV = "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"
ALPHA, BETA = "w-alpha", "w-beta"
RESOLV = "# managed by a test\nnameserver 192.0.2.1\nsearch example.test\noptions ndots:2\n"

pytestmark = pytest.mark.timeout(120)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.nats = NatsServer(root / "nats")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.alpha_resolv = root / "alpha-resolv.conf"
        self.beta_resolv = root / "beta-resolv.d"  # a directory: reading it fails
        self.admin = authtoken.generate(SIGNING_KEY, ["admin"], "cli-test-admin", 3600)
        self.reader = authtoken.generate(SIGNING_KEY, ["read"], "cli-test-reader", 3600)
        self.foreign = authtoken.generate("another-signing-key-" + "y" * 32, ["admin"], "intruder", 3600)

    def env(self, **extra: str) -> dict[str, str]:
        env = _base_env()
        env.update(self.nats.env())
        env.update({
            "OSAPI_API_SERVER_PORT": str(self.port),
            "OSAPI_API_SERVER_SECURITY_SIGNING_KEY": SIGNING_KEY,
            "OSAPI_API_SERVER_JOB_TIMEOUT": "10s",
            "OSAPI_SUPERVISE_STATE_DIR": str(self.root / "state"),
        })
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "osapi", *argv], env=env, cwd=self.root,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def start(self) -> "Stack":
        self.alpha_resolv.write_text(RESOLV)
        self.beta_resolv.mkdir()
        self.nats.start()
        api = self.spawn("api", ["api", "server", "start"], self.env())
        wait_for_port("127.0.0.1", self.port, 30, api)
        for host, labels, resolv in ((ALPHA, "group=web.dev", self.alpha_resolv),
                                     (BETA, "group=db", self.beta_resolv)):
            self.spawn(host, ["job", "worker", "start"], self.env(
                OSAPI_JOB_WORKER_HOSTNAME=host, OSAPI_JOB_WORKER_LABELS=labels,
                OSAPI_JOB_WORKER_DNS_PROVIDER="resolv_conf", OSAPI_JOB_WORKER_DNS_RESOLV_CONF=str(resolv),
            ))
        self.wait_for_workers({ALPHA, BETA})
        return self

    def http(self, method: str, path: str, token: str | None = None) -> tuple[int, object]:
        """A direct request (to check what the API stored), independent of the client under test."""
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"Bearer {token or self.admin}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_for_workers(self, hosts: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"process {proc.args} exited with {proc.returncode}; see {self.root}/*.log")
            status, body = self.http("GET", "/api/v1/jobs/workers")
            if status == 200:
                seen = {w["hostname"] for w in body["workers"]}
                if hosts <= seen:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"workers {sorted(hosts)} did not register within {timeout}s (saw {sorted(seen)})")

    def total_jobs(self) -> int:
        status, body = self.http("GET", "/api/v1/jobs?limit=1")
        assert status == 200, body
        return body["total_items"]

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the API
            stop_process(proc)
        self.nats.stop()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the API answers /health/ready with 200 (it listens before NATS is connected)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} was not ready within {timeout}s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("cli-client"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def osapi(cli, stack):
    """The CLI in-process, pointed at the stack with the admin token (override with env=)."""

    def run(*argv: str, env: dict | None = None, stdin: str = ""):
        base = {"OSAPI_API_CLIENT_URL": stack.url, TOKEN_ENV: stack.admin}
        base.update(env or {})
        return cli(*argv, env=base, stdin=stdin)

    return run


def subprocess_osapi(stack, *argv: str, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    full = _base_env()
    full.update({"OSAPI_API_CLIENT_URL": stack.url, TOKEN_ENV: stack.admin,
                 "OSAPI_SUPERVISE_STATE_DIR": str(stack.root / "client-state")})
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "osapi", *argv], env=full, cwd=stack.root, input=stdin,
                          capture_output=True, text=True, timeout=90)


def table_rows(text: str, header: str) -> list[list[str]]:
    """Rows of the table whose header line starts with ``header``, cells split on 2+ spaces."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


# ---------------------------------------------------------------- system


def test_hostname_on_a_named_host_shows_that_worker(osapi):
    res = osapi("client", "system", "hostname", "-T", ALPHA)
    assert res.status == 0, res.stderr
    assert table_rows(res.stdout, "HOSTNAME") == [[ALPHA, "group=web.dev"]]


def test_hostname_on_all_has_one_row_per_host_and_json_is_the_api_body(osapi):
    res = osapi("client", "system", "hostname", "--target-hostname", "_all")
    assert res.status == 0, res.stderr
    assert [row[0] for row in table_rows(res.stdout, "HOSTNAME")] == [ALPHA, BETA]
    js = osapi("client", "system", "hostname", "-T", "_all", "--json")
    body = json.loads(js.stdout)
    assert set(body) == {"job_id", "results"}
    assert sorted((r["hostname"], r["labels"]) for r in body["results"]) == [
        (ALPHA, {"group": "web.dev"}), (BETA, {"group": "db"})]


def test_label_target_reaches_only_matching_hosts(osapi):
    res = osapi("client", "system", "hostname", "-T", "group:web")
    assert res.status == 0, res.stderr
    assert [row[0] for row in table_rows(res.stdout, "HOSTNAME")] == [ALPHA]


def test_any_reaches_one_host(osapi):
    body = json.loads(osapi("client", "-j", "system", "hostname").stdout)
    assert len(body["results"]) == 1 and body["results"][0]["hostname"] in (ALPHA, BETA)


def test_memory_shows_the_hosts_real_total(osapi):
    import psutil

    from osapi.cli.output import human_bytes

    res = osapi("client", "system", "memory", "-T", ALPHA)
    assert res.status == 0, res.stderr
    [row] = table_rows(res.stdout, "HOSTNAME")
    assert row[0] == ALPHA and row[1] == human_bytes(psutil.virtual_memory().total)
    body = json.loads(osapi("client", "system", "memory", "-T", ALPHA, "-j").stdout)
    assert body["results"][0]["total"] == psutil.virtual_memory().total


def test_disk_lists_the_root_filesystem_per_host(osapi):
    res = osapi("client", "system", "disk", "-T", "_all")
    assert res.status == 0, res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert {(r[0], r[1]) for r in rows} >= {(ALPHA, "/"), (BETA, "/")}
    body = json.loads(osapi("client", "system", "disk", "-T", ALPHA, "-j").stdout)
    root = next(d for d in body["results"][0]["disks"] if d["name"] == "/")
    assert set(root) >= {"name", "device", "fstype", "total", "used", "free"} and root["total"] > 0


def test_os_load_uptime_and_status(osapi):
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    res = osapi("client", "system", "os", "-T", ALPHA)
    assert res.status == 0, res.stderr
    [row] = table_rows(res.stdout, "HOSTNAME")
    if "ID=" in os_release:
        assert row[1] and row[1] in os_release

    res = osapi("client", "system", "load", "-T", ALPHA)
    [row] = table_rows(res.stdout, "HOSTNAME")
    assert row[0] == ALPHA and all(float(v) >= 0 for v in row[1:4])

    body = json.loads(osapi("client", "system", "uptime", "-T", ALPHA, "-j").stdout)
    uptime = body["results"][0]["uptime_seconds"]
    assert uptime == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME), abs=60)

    res = osapi("client", "system", "status", "-T", "_all")
    assert res.status == 0, res.stderr
    hosts = table_rows(res.stdout, "HOSTNAME  UPTIME")
    assert [r[0] for r in hosts] == [ALPHA, BETA]
    disks = table_rows(res.stdout, "HOSTNAME  MOUNT")
    assert {r[0] for r in disks} == {ALPHA, BETA}
    body = json.loads(osapi("client", "system", "status", "-T", ALPHA, "--json").stdout)
    assert set(body["results"][0]) >= {"hostname", "uptime", "uptime_seconds", "load_average", "memory",
                                       "disks", "os_info"}


# ---------------------------------------------------------------- network


def test_dns_get_reads_the_workers_resolv_conf(osapi, stack):
    stack.alpha_resolv.write_text(RESOLV)
    res = osapi("client", "network", "dns", "get", "--interface-name", "lo", "-T", ALPHA)
    assert res.status == 0, res.stderr
    assert table_rows(res.stdout, "HOSTNAME") == [[ALPHA, "192.0.2.1", "example.test"]]


def test_a_broadcast_with_a_failed_host_prints_it_and_exits_1(osapi, stack):
    stack.alpha_resolv.write_text(RESOLV)
    res = osapi("client", "network", "dns", "get", "--interface-name", "lo", "-T", "_all")
    assert res.status == 1
    rows = table_rows(res.stdout, "HOSTNAME")
    assert rows[0][:3] == [ALPHA, "192.0.2.1", "example.test"]
    assert rows[1][0] == BETA and len(rows[1]) == 2 and rows[1][1]  # beta: its error, no data
    assert f"1 of 2 hosts failed: {BETA}" in res.stderr


def test_dns_update_on_a_named_host_changes_its_file(osapi, stack):
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "-T", ALPHA,
                "--servers", "192.0.2.53,2001:db8::53", "--search-domains", "a.test")
    assert res.status == 0, res.stderr + res.stdout
    assert table_rows(res.stdout, "HOSTNAME")[0][0] == ALPHA
    text = stack.alpha_resolv.read_text()
    assert "nameserver 192.0.2.53\nnameserver 2001:db8::53\n" in text and "search a.test\n" in text
    assert "# managed by a test" in text and "options ndots:2" in text
    res = osapi("client", "network", "dns", "get", "--interface-name", "lo", "-T", ALPHA)
    assert table_rows(res.stdout, "HOSTNAME") == [[ALPHA, "192.0.2.53, 2001:db8::53", "a.test"]]


@pytest.mark.parametrize("target", ["_all", "group:web", "_any"])
def test_dns_update_to_many_or_unknown_hosts_without_tty_or_yes_is_refused_and_nothing_stored(
        osapi, stack, target):
    before_jobs, before_file = stack.total_jobs(), stack.alpha_resolv.read_text()
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.99",
                "-T", target)
    assert res.status == 2
    assert "refusing to change DNS of interface lo on" in res.stderr and "--yes" in res.stderr
    assert stack.total_jobs() == before_jobs
    assert stack.alpha_resolv.read_text() == before_file


def _file_state(path: Path) -> tuple:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_dns_update_dry_run_asks_nothing_shows_before_and_after_and_changes_nothing(osapi, stack):
    stack.alpha_resolv.write_text(RESOLV)
    before = _file_state(stack.alpha_resolv)
    # _all without a TTY and without --yes: a dry run changes nothing, so it is not refused
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.66",
                "-T", "_all", "--dry-run")
    assert "refusing" not in res.stderr
    assert res.stdout.startswith("job ") and "dry run: nothing was changed" in res.stdout
    rows = {r[0]: r for r in table_rows(res.stdout, "HOSTNAME")}
    assert rows[ALPHA][1:] == ["ok", "yes", "search_domains: example.test; servers: 192.0.2.1",
                               "search_domains: example.test; servers: 192.0.2.66"]
    assert rows[BETA][1] == "failed"  # its resolv.conf is a directory: the dry run's read fails there too
    assert res.status == 1
    assert _file_state(stack.alpha_resolv) == before
    js = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.66",
               "-T", ALPHA, "--dry-run", "--json")
    assert js.status == 0, js.stderr
    assert json.loads(js.stdout)["results"][0]["after"]["servers"] == ["192.0.2.66"]
    assert _file_state(stack.alpha_resolv) == before


@pytest.mark.parametrize("command", ["add", "run"])
def test_job_add_and_run_dry_run(osapi, stack, command):
    stack.alpha_resolv.write_text(RESOLV)
    before = _file_state(stack.alpha_resolv)
    path = write_op(stack, "dns-dry.json", {"type": "network.dns.update",
                                            "data": {"interface_name": "lo", "search_domains": ["dry.test"]}})
    res = osapi("client", "job", command, "--json-file", path, "-T", ALPHA, "--dry-run", "--json")
    assert res.status == 0, res.stderr
    job_id = json.loads(res.stdout).get("job_id") or json.loads(res.stdout)["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = stack.http("GET", f"/api/v1/jobs/{job_id}")[1]
        if job["status"] == "completed":
            break
        time.sleep(0.1)
    assert job["operation"]["data"]["dry_run"] is True
    assert job["responses"][ALPHA]["data"]["after"] == {"servers": ["192.0.2.1"], "search_domains": ["dry.test"]}
    assert _file_state(stack.alpha_resolv) == before
    if command == "run":
        human = osapi("client", "job", "run", "--json-file", path, "-T", ALPHA, "--dry-run", "-p", "0.1")
        assert human.status == 0 and "dry run: nothing was changed" in human.stdout
        assert table_rows(human.stdout, "HOSTNAME")[0][:3] == [ALPHA, "ok", "yes"]
        assert _file_state(stack.alpha_resolv) == before


def test_job_add_with_an_idempotency_key_twice_submits_one_job(osapi, stack):
    path = write_op(stack, "idem.json", {"type": "system.hostname.get", "data": {}})
    before = stack.total_jobs()
    first = osapi("client", "job", "add", "--json-file", path, "-T", ALPHA, "--idempotency-key", "cli-key-1", "-j")
    again = osapi("client", "job", "add", "--json-file", path, "-T", ALPHA, "--idempotency-key", "cli-key-1", "-j")
    assert first.status == 0 and again.status == 0, first.stderr + again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert stack.total_jobs() == before + 1
    other = write_op(stack, "idem-other.json", {"type": "system.load.get", "data": {}})
    res = osapi("client", "job", "add", "--json-file", other, "-T", ALPHA, "--idempotency-key", "cli-key-1")
    assert res.status == 1 and "(HTTP 422)" in res.stderr
    assert stack.total_jobs() == before + 1


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\u00e9", "a\nb", " a"])
def test_job_add_with_a_bad_idempotency_key_is_a_usage_error(osapi, stack, key):
    path = write_op(stack, "idem-bad.json", {"type": "system.hostname.get", "data": {}})
    before = stack.total_jobs()
    res = osapi("client", "job", "add", "--json-file", path, "--idempotency-key", key)
    assert res.status == 2 and "--idempotency-key" in res.stderr and res.stdout == ""
    assert stack.total_jobs() == before


def test_job_add_dry_run_of_a_query_is_refused_and_stores_nothing(osapi, stack):
    before = stack.total_jobs()
    path = write_op(stack, "query-dry.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "add", "--json-file", path, "--dry-run")
    assert res.status == 1 and "(HTTP 400)" in res.stderr and "has no dry run" in res.stderr
    assert stack.total_jobs() == before


def test_dns_update_to_a_label_with_yes_changes_the_matching_host(osapi, stack):
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.7",
                "-T", "group:web.dev", "--yes")
    assert res.status == 0, res.stderr
    assert [r[0] for r in table_rows(res.stdout, "HOSTNAME")] == [ALPHA]
    assert "nameserver 192.0.2.7\n" in stack.alpha_resolv.read_text()


@pytest.mark.parametrize("servers, message", [
    ("not-an-ip", "--servers: 'not-an-ip' is not an IPv4 or IPv6 address"),
    ("1.1.1.999", "--servers: '1.1.1.999' is not an IPv4 or IPv6 address"),
    ("", "--servers must not be empty"),
])
def test_dns_update_with_bad_servers_is_a_usage_error_and_changes_nothing(osapi, stack, servers, message):
    before_jobs, before_file = stack.total_jobs(), stack.alpha_resolv.read_text()
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", servers,
                "-T", ALPHA, "--yes")
    assert res.status == 2
    assert message in res.stderr and res.stdout == ""
    assert stack.total_jobs() == before_jobs and stack.alpha_resolv.read_text() == before_file


def test_dns_update_broadcast_shows_the_failed_host_as_failed_with_its_error(osapi, stack):
    stack.alpha_resolv.write_text(RESOLV)
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.77",
                "-T", "_all", "--yes")
    assert res.status == 1
    assert table_rows(res.stdout, "HOSTNAME")[0][:2] == [ALPHA, "ok"]
    beta = table_rows(res.stdout, "HOSTNAME")[1]
    assert beta[:2] == [BETA, "failed"] and len(beta) == 3 and beta[2]  # its error, no CHANGED
    assert f"1 of 2 hosts failed: {BETA}" in res.stderr
    assert "nameserver 192.0.2.77\n" in stack.alpha_resolv.read_text()


def test_ping_loopback(osapi):
    res = osapi("client", "network", "ping", "-a", "127.0.0.1", "--count", "2", "-T", ALPHA)
    assert res.status == 0, res.stderr
    [row] = table_rows(res.stdout, "HOSTNAME")
    assert row[:4] == [ALPHA, "2", "2", "0%"]
    body = json.loads(osapi("client", "network", "ping", "--address", "::1", "--count", "1", "-T", ALPHA,
                            "-j").stdout)
    assert body["results"][0]["packets_received"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--count", "11"], "--count must be an integer from 1 to 10, got 11"),
    (["-a", "no such address!"], "-a/--address: 'no such address!' is not an IP address or hostname"),
    (["-T", "bad target!"], "invalid target 'bad target!': not a hostname"),
])
def test_ping_with_bad_values_is_a_usage_error_and_nothing_is_sent(osapi, stack, argv, message):
    before = stack.total_jobs()
    res = osapi("client", "network", "ping", "-a", "127.0.0.1", *argv)
    assert res.status == 2 and message in res.stderr and res.stdout == ""
    assert stack.total_jobs() == before


# ---------------------------------------------------------------- operations added through the table


@pytest.mark.parametrize("target, hosts", [("_all", [ALPHA, BETA]), (ALPHA, [ALPHA]), ("group:db", [BETA])])
def test_interfaces_one_row_per_interface_and_json(osapi, target, hosts):
    res = osapi("client", "network", "interfaces", "-T", target)
    assert res.status == 0, res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert sorted({row[0] for row in rows}) == hosts
    lo = [row for row in rows if row[1] == "lo"]
    assert len(lo) == len(hosts) and all(row[2] == "up" and "127.0.0.1/8" in row[-1] for row in lo)
    body = json.loads(osapi("client", "network", "interfaces", "-T", target, "--json").stdout)
    assert set(body) == {"job_id", "results"} and sorted(r["hostname"] for r in body["results"]) == hosts


def test_users_table_and_json_have_no_password(osapi):
    res = osapi("client", "system", "users", "-T", "_all")
    assert res.status == 0, res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert [ALPHA, "root", "0", "0"] in [row[:4] for row in rows] and [BETA, "root", "0", "0"] in [r[:4] for r in rows]
    body = json.loads(osapi("client", "-j", "system", "users", "-T", BETA).stdout)
    assert all(set(u) == {"name", "uid", "gid", "home", "shell"} for u in body["results"][0]["users"])


def test_processes_sort_limit_table_and_json(osapi):
    res = osapi("client", "system", "processes", "--sort", "cpu", "--limit", "2", "-T", "group:web")
    assert res.status == 0, res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert 1 <= len(rows) <= 2 and {row[0] for row in rows} == {ALPHA}
    body = json.loads(osapi("client", "system", "processes", "--limit", "3", "-T", ALPHA, "-j").stdout)
    [item] = body["results"]
    rss = [p["memory_rss"] or 0 for p in item["processes"]]
    assert 1 <= len(rss) <= 3 and rss == sorted(rss, reverse=True)
    default = json.loads(osapi("client", "system", "processes", "-T", BETA, "-j").stdout)
    assert 1 <= len(default["results"][0]["processes"]) <= 10


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be an integer from 1 to 100, got 0"),
    (["--limit", "101"], "--limit must be an integer from 1 to 100, got 101"),
    (["--limit", "x"], "argument --limit: invalid int value: 'x'"),
    (["--sort", "name"], "argument --sort: invalid choice: 'name'"),
    (["--sort", "cpu\n"], "argument --sort: invalid choice"),
    (["-T", "group:*"], "invalid target 'group:*'"),
])
def test_processes_with_bad_values_is_a_usage_error_and_nothing_is_sent(osapi, stack, argv, message):
    before = stack.total_jobs()
    res = osapi("client", "system", "processes", *argv)
    assert res.status == 2 and message in res.stderr and res.stdout == ""
    assert stack.total_jobs() == before


def test_an_invalid_target_is_a_usage_error(osapi):
    res = osapi("client", "system", "hostname", "-T", "group:we b")
    assert res.status == 2 and "label value 'we b'" in res.stderr


def test_the_apis_own_400_for_a_target_reads_once(stack):
    """The API stays the judge: sent anyway (bypassing the CLI's check), its error reads once."""
    from osapi.client import ApiClient, ApiError

    with pytest.raises(ApiError) as exc:
        ApiClient(stack.url, stack.admin).system("hostname", "bad target!")
    message = exc.value.message
    assert message.startswith("invalid query parameter target_hostname: invalid target 'bad target!'")
    assert message.count("target_hostname") == 1 and message.endswith("(HTTP 400)")


def test_a_host_without_a_worker_is_a_404_and_exit_1(osapi, stack):
    # a second API on the same NATS with a short job_timeout, so the test waits 1 s, not 10
    port = free_port()
    api = stack.spawn("api-short", ["api", "server", "start"],
                      stack.env(OSAPI_API_SERVER_PORT=str(port), OSAPI_API_SERVER_JOB_TIMEOUT="1s"))
    try:
        wait_ready(f"http://127.0.0.1:{port}", api)
        res = osapi("client", "system", "hostname", "-T", "no-such-host", "--url", f"http://127.0.0.1:{port}")
    finally:
        stop_process(api)
    assert res.status == 1 and "(HTTP 404)" in res.stderr, res.stderr
    assert res.stderr.count("no live worker matches target") == 1 and "'no-such-host'" in res.stderr


# ---------------------------------------------------------------- jobs


def write_op(stack, name: str, op: dict) -> str:
    path = stack.root / name
    path.write_text(json.dumps(op))
    return str(path)


def test_job_add_get_list_delete(osapi, stack):
    path = write_op(stack, "hostname-op.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "add", "--json-file", path, "--target-hostname", ALPHA, "-j")
    assert res.status == 0, res.stderr
    created = json.loads(res.stdout)
    assert created["status"] == "submitted" and set(created) >= {"job_id", "revision", "timestamp"}
    job_id = created["job_id"]

    human = osapi("client", "job", "add", "--json-file", path, "-T", ALPHA)
    assert human.status == 0 and "job id:" in human.stdout and "submitted" in human.stdout
    assert osapi("client", "job", "add", "--json-file", "-", stdin=Path(path).read_text()).status == 0

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = json.loads(osapi("client", "job", "get", "--job-id", job_id, "--json").stdout)
        if job["status"] == "completed":
            break
        time.sleep(0.1)
    assert job["status"] == "completed" and job["id"] == job_id
    assert stack.http("GET", f"/api/v1/jobs/{job_id}")[1] == job  # exactly the API body

    res = osapi("client", "job", "get", "--job-id", job_id)
    assert res.status == 0
    assert f"id:        {job_id}" in res.stdout and "operation: system.hostname.get" in res.stdout
    assert table_rows(res.stdout.split("results:\n")[1], "HOSTNAME")[0][0] == ALPHA

    listed = json.loads(osapi("client", "job", "list", "--limit", "1000", "-j").stdout)
    assert job_id in [item["id"] for item in listed["items"]]
    res = osapi("client", "job", "list", "--limit", "2")
    assert res.status == 0 and len(table_rows(res.stdout, "ID")) == 2 and "next page: --offset 2" in res.stdout
    done = json.loads(osapi("client", "job", "list", "--status", "completed", "--limit", "3", "-j").stdout)
    assert 1 <= len(done["items"]) <= 3 and {i["status"] for i in done["items"]} == {"completed"}

    res = osapi("client", "job", "delete", "--job-id", job_id)
    assert res.status == 0 and res.stdout == f"job {job_id} deleted\n"
    assert stack.http("GET", f"/api/v1/jobs/{job_id}")[0] == 404
    res = osapi("client", "job", "get", "--job-id", job_id)
    assert res.status == 1 and "(HTTP 404)" in res.stderr and res.stdout == ""
    res = osapi("client", "job", "get", "--job-id", job_id, "--json")  # the API's 404 body, as sent
    assert res.status == 1 and json.loads(res.stdout) == stack.http("GET", f"/api/v1/jobs/{job_id}")[1]
    assert json.loads(res.stdout)["code"] == 404
    assert res.stderr.startswith("osapi: error: ") and res.stderr.count("\n") == 1 and "(HTTP 404)" in res.stderr
    res = osapi("client", "job", "delete", "--job-id", job_id)
    assert res.status == 1 and "(HTTP 404)" in res.stderr


def test_job_add_with_an_unknown_type_is_a_400_and_stores_nothing(osapi, stack):
    before = stack.total_jobs()
    res = osapi("client", "job", "add", "--json-file", "-", stdin='{"type": "system.reboot", "data": {}}')
    assert res.status == 1 and "system.reboot" in res.stderr and "(HTTP 400)" in res.stderr
    assert stack.total_jobs() == before


@pytest.mark.parametrize("argv", [["--limit", "0"], ["--limit", "5000"], ["--offset", "-1"]])
def test_job_list_with_a_bad_limit_or_offset_is_a_usage_error(osapi, argv):
    res = osapi("client", "job", "list", *argv)
    assert res.status == 2 and argv[0] in res.stderr and "(HTTP" not in res.stderr


@pytest.mark.parametrize("command", ["add", "run"])
def test_job_file_and_flag_with_different_targets_are_refused(osapi, stack, command):
    before = stack.total_jobs()
    path = write_op(stack, "conflict.json", {"operation": {"type": "system.hostname.get", "data": {}},
                                             "target_hostname": ALPHA})
    res = osapi("client", "job", command, "--json-file", path, "-T", BETA)
    assert res.status == 2
    assert f"conflicting targets: file says {ALPHA}, -T says {BETA}" in res.stderr
    assert stack.total_jobs() == before


def test_job_run_success_prints_each_hosts_result(osapi, stack):
    path = write_op(stack, "os-op.json", {"type": "system.os.get", "data": {}})
    res = osapi("client", "job", "run", "--json-file", path, "-T", "_all", "-p", "0.1")
    assert res.status == 0, res.stderr
    assert res.stdout.startswith("job ") and ": completed\n" in res.stdout.splitlines()[0] + "\n"
    assert [r[0] for r in table_rows(res.stdout, "HOSTNAME")] == [ALPHA, BETA]
    js = osapi("client", "job", "run", "--json-file", path, "-T", ALPHA, "-p", "100ms", "-t", "1m", "--json")
    assert js.status == 0 and json.loads(js.stdout)["status"] == "completed"


class TtyStderr(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_job_run_on_a_terminal_shows_each_hosts_progress_from_the_event_stream(stack):
    from osapi.cli import Environment, main

    path = write_op(stack, "os-live.json", {"type": "system.os.get", "data": {}})
    environ = dict(os.environ, OSAPI_API_CLIENT_URL=stack.url, **{TOKEN_ENV: stack.admin})
    out, err = io.StringIO(), TtyStderr()
    status = main(["client", "job", "run", "--json-file", path, "-T", "_all"],
                  Environment(stdin=io.StringIO(""), stdout=out, stderr=err, environ=environ))
    assert status == 0, err.getvalue()
    lines = err.getvalue().splitlines()
    assert lines[0].endswith("  submitted to _all"), lines
    for host in (ALPHA, BETA):
        steps = [line.split(f"  {host}: ", 1)[1] for line in lines if f"  {host}: " in line]
        assert steps == ["acknowledged", "started", "completed"], lines
    assert out.getvalue().startswith("job ") and ": completed\n" in out.getvalue()
    assert [r[0] for r in table_rows(out.getvalue(), "HOSTNAME")] == [ALPHA, BETA]
    # with --json the stream is not read: stderr stays quiet, stdout is the job
    out, err = io.StringIO(), TtyStderr()
    status = main(["client", "job", "run", "--json-file", path, "-T", ALPHA, "--json"],
                  Environment(stdin=io.StringIO(""), stdout=out, stderr=err, environ=environ))
    assert status == 0 and err.getvalue() == "" and json.loads(out.getvalue())["status"] == "completed"


def test_job_run_failed_and_partial_failure_exit_1(osapi, stack):
    bad = write_op(stack, "dns-nope.json", {"type": "network.dns.get", "data": {"interface_name": "nosuchif0"}})
    res = osapi("client", "job", "run", "--json-file", bad, "-T", ALPHA, "-p", "0.1")
    assert res.status == 1
    assert f"failed: {ALPHA}:" in res.stderr and "nosuchif0" in res.stderr
    assert table_rows(res.stdout, "HOSTNAME")[0][0] == ALPHA

    half = write_op(stack, "dns-lo.json", {"type": "network.dns.get", "data": {"interface_name": "lo"}})
    res = osapi("client", "job", "run", "--json-file", half, "-T", "_all", "-p", "0.1")
    assert res.status == 1
    assert "partial failure" in res.stderr and BETA in res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert [r[0] for r in rows] == [ALPHA, BETA] and len(rows[1]) == 2


def test_job_run_timeout_exits_1_and_says_so(osapi, stack):
    path = write_op(stack, "ghost.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "run", "--json-file", path, "-T", "ghost-host", "-t", "500ms", "-p", "0.1")
    assert res.status == 1
    assert "did not finish within 0.5s (status: submitted)" in res.stderr
    assert "osapi client job get --job-id" in res.stderr


NO_WORKER = "osapi: warning: no live worker matches target"


@pytest.mark.parametrize("target", ["ghost-host", "group:web.prod", "group:web.dev.eu", "zone:a"])
def test_job_run_says_at_once_when_no_live_worker_matches(osapi, stack, target):
    path = write_op(stack, "unmatched.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "run", "--json-file", path, "-T", target, "-t", "300ms", "-p", "0.1")
    assert res.status == 1, res.stderr  # exit codes unchanged: it did not finish
    warning, error = res.stderr.splitlines()[:2]
    job_id = error.split("job ", 1)[1].split(" ", 1)[0]
    assert warning == (f"{NO_WORKER} {target}; job {job_id} stays queued until one registers "
                       "(waiting up to 0.3s; see `osapi client job workers list`)")
    assert "did not finish within 0.3s (status: submitted)" in error
    assert stack.http("GET", f"/api/v1/jobs/{job_id}")[1]["status"] == "submitted"  # still queued


@pytest.mark.parametrize("target", [ALPHA, ALPHA.upper(), "group:web", "group:web.dev", "group:db", "_any", "_all"])
def test_job_run_to_a_live_worker_says_nothing_about_the_registry(osapi, stack, target):
    path = write_op(stack, "matched.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "run", "--json-file", path, "-T", target, "-p", "0.1")
    assert res.status == 0, res.stderr
    assert res.stderr == ""


def test_job_run_with_json_keeps_stdout_json_and_warns_on_stderr(osapi, stack):
    path = write_op(stack, "unmatched-json.json", {"type": "system.hostname.get", "data": {}})
    res = osapi("client", "job", "run", "--json-file", path, "-T", "ghost-host", "-t", "200ms", "-p", "0.1", "--json")
    assert res.status == 1
    job = json.loads(res.stdout)
    assert job["status"] == "submitted"
    assert res.stderr.startswith(f"{NO_WORKER} ghost-host; job {job['id']} stays queued")


def test_job_run_warns_before_it_waits_and_then_keeps_waiting(stack):
    """The warning is on stderr while the command still waits (its timeout is a minute away)."""
    import select

    path = write_op(stack, "unmatched-wait.json", {"type": "system.hostname.get", "data": {}})
    env = _base_env()
    env.update({"OSAPI_API_CLIENT_URL": stack.url, TOKEN_ENV: stack.admin,
                "OSAPI_SUPERVISE_STATE_DIR": str(stack.root / "client-state")})
    proc = subprocess.Popen([sys.executable, "-m", "osapi", "client", "job", "run", "--json-file", path,
                             "-T", "ghost-host", "-t", "60s"], env=env, cwd=stack.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = b""
        deadline = time.monotonic() + 30
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        assert line.decode().startswith(f"{NO_WORKER} ghost-host; job "), line
        assert proc.poll() is None  # still waiting for the job, as before
    finally:
        stop_process(proc)
        proc.stderr.close()


def test_job_status_once_and_json(osapi, stack):
    assert osapi("client", "system", "load", "-T", ALPHA).status == 0  # at least one job exists
    res = osapi("client", "job", "status", "--once")
    assert res.status == 0, res.stderr
    assert "total jobs:" in res.stdout
    assert [r[0] for r in table_rows(res.stdout, "STATUS")][:5] == [
        "submitted", "processing", "completed", "failed", "partial_failure"]
    body = json.loads(osapi("client", "job", "status", "-j").stdout)
    assert set(body) == {"total_jobs", "status_counts", "operation_counts", "dlq_count"}
    assert body["total_jobs"] >= 1


def test_job_status_live_on_a_tty_redraws_until_ctrl_c(stack):
    import pty
    import select

    master, slave = pty.openpty()
    env = _base_env()
    env.update({"OSAPI_API_CLIENT_URL": stack.url, TOKEN_ENV: stack.admin})
    proc = subprocess.Popen([sys.executable, "-m", "osapi", "client", "job", "status",
                             "--poll-interval-seconds", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=stack.root)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 30
        while out.count(b"\x1b[2J") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        assert out.count(b"\x1b[2J") >= 2, out
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
        os.close(master)
    assert b"total jobs:" in out and b"Ctrl-C to quit" in out


def test_workers_list(osapi):
    res = osapi("client", "job", "workers", "list")
    assert res.status == 0, res.stderr
    rows = table_rows(res.stdout, "HOSTNAME")
    assert {(r[0], r[1]) for r in rows} == {(ALPHA, "group=web.dev"), (BETA, "group=db")}
    body = json.loads(osapi("client", "job", "workers", "list", "-j").stdout)
    assert body["total"] == 2 and {w["hostname"] for w in body["workers"]} == {ALPHA, BETA}


# ---------------------------------------------------------------- auth and errors, with real exit codes


def test_exit_codes_as_a_subprocess(stack):
    ok = subprocess_osapi(stack, "client", "system", "hostname", "-T", ALPHA)
    assert ok.returncode == 0 and ALPHA in ok.stdout and ok.stderr == ""

    bad_token = subprocess_osapi(stack, "client", "job", "list", env={TOKEN_ENV: stack.foreign})
    assert bad_token.returncode == 1
    assert "osapi: error: token was rejected:" in bad_token.stderr and "signature" in bad_token.stderr.lower()
    assert "Traceback" not in bad_token.stderr

    usage = subprocess_osapi(stack, "client", "job", "list", "--limit", "ten")
    assert usage.returncode == 2 and "--limit: must be an integer, got 'ten'" in usage.stderr

    with_dash_d = subprocess_osapi(stack, "-d", "client", "job", "get", "--job-id", "nope")
    assert with_dash_d.returncode == 1 and "Traceback" in with_dash_d.stderr


def test_unreachable_api_names_the_url(stack):
    port = free_port()
    res = subprocess_osapi(stack, "client", "system", "hostname", "--url", f"http://127.0.0.1:{port}")
    assert res.returncode == 1
    assert f"cannot reach the osapi API at http://127.0.0.1:{port}" in res.stderr
    assert "osapi supervise" in res.stderr and res.stdout == ""


def test_a_url_pointing_at_nats_says_so_in_one_line(osapi, stack):
    url = f"http://127.0.0.1:{stack.nats.port}"
    res = osapi("client", "job", "list", "--url", url, "--json")
    assert res.status == 1 and res.stdout == ""
    assert res.stderr == (f"osapi: error: {url}: not an osapi API (the reply was not HTTP); "
                          "check --url or api.client.url\n")


def test_read_only_token_on_a_write_command_is_403_and_nothing_stored(osapi, stack):
    before_jobs, before_file = stack.total_jobs(), stack.alpha_resolv.read_text()
    res = osapi("client", "network", "dns", "update", "--interface-name", "lo", "--servers", "192.0.2.8",
                "-T", ALPHA, env={TOKEN_ENV: stack.reader})
    assert res.status == 1 and "permission denied" in res.stderr and "'write' scope" in res.stderr
    assert res.stderr.count("'write' scope") == 1 and "grants: read" in res.stderr, res.stderr
    res = osapi("client", "job", "add", "--json-file", "-", env={TOKEN_ENV: stack.reader},
                stdin='{"type": "system.hostname.get", "data": {}}')
    assert res.status == 1 and "'write' scope" in res.stderr
    assert stack.total_jobs() == before_jobs and stack.alpha_resolv.read_text() == before_file
    # reading is allowed
    assert osapi("client", "job", "status", "--once", env={TOKEN_ENV: stack.reader}).status == 0


def test_token_from_the_state_dir_when_none_is_configured(stack, tmp_path):
    secrets = tmp_path / "appliance-state" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "admin.token").write_text(stack.admin + "\n")
    res = subprocess_osapi(stack, "client", "job", "workers", "list",
                           env={TOKEN_ENV: "", "OSAPI_SUPERVISE_STATE_DIR": str(secrets.parent)})
    assert res.returncode == 0, res.stderr
    assert ALPHA in res.stdout

    res = subprocess_osapi(stack, "client", "job", "workers", "list",
                           env={TOKEN_ENV: "", "OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "nowhere")})
    assert res.returncode == 2 and "no API token" in res.stderr
    assert str(tmp_path / "nowhere" / "secrets" / "admin.token") in res.stderr
