"""A real osapi stack for the load and hostile-input tests, started from source.

nats-server (``testkit.NatsServer``), ``python -m osapi api server start`` and
``python -m osapi job worker start`` as subprocesses on free loopback ports,
each stopped by pid. A worker can run inside a private network namespace
(``netns_forward.py``) so the jobs it runs cannot reach anything but its own
loopback, and always with the ``resolv_conf`` DNS provider on a temp file: the
host's /etc/resolv.conf and systemd-resolved are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from testkit import NatsServer, free_port, stop_process, wait_for_port

from osapi import authtoken

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SIGNING_KEY = "load-test-signing-key-" + "k" * 32


def admin_token(roles=("admin",), expires_in: float = 3600) -> str:
    return authtoken.generate(SIGNING_KEY, list(roles), "load-test", expires_in)


def netns_available() -> tuple[bool, str]:
    """A private network namespace needs root and util-linux's unshare."""
    if os.geteuid() != 0:
        return False, "needs root to create a private network namespace (unshare --net)"
    if not shutil.which("unshare"):
        return False, "needs util-linux `unshare` to create a private network namespace"
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return False, f"`unshare --net` failed here: {probe.stderr.decode(errors='replace').strip()}"
    return True, ""


class Stack:
    def __init__(self, workdir: Path, *, workers: int = 1, netns: bool = False, job_timeout: str = "10s",
                 hostname: str = "load-host"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.netns = netns
        self.job_timeout = job_timeout
        self.hostname = hostname
        self.nats = NatsServer(self.workdir / "nats")
        self.api_port = free_port()
        self.resolv_conf = self.workdir / "resolv.conf"
        self.procs: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None
        self.worker_procs: list[subprocess.Popen] = []
        self.token = admin_token()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, nats_url: str | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
        env.update({
            "OSAPI_NATS_URL": nats_url or self.nats.url,
            "OSAPI_NATS_TOKEN": self.nats.token,
            "OSAPI_API_SERVER_PORT": str(self.api_port),
            "OSAPI_API_SERVER_SECURITY_SIGNING_KEY": SIGNING_KEY,
            "OSAPI_API_SERVER_JOB_TIMEOUT": self.job_timeout,
            "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": "1s",
            "OSAPI_JOB_WORKER_HOSTNAME": self.hostname,
            "OSAPI_JOB_WORKER_DNS_PROVIDER": "resolv_conf",
            "OSAPI_JOB_WORKER_DNS_RESOLV_CONF": str(self.resolv_conf),
            "OSAPI_SUPERVISE_STATE_DIR": str(self.workdir / "state"),
        })
        return env

    def _spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> "Stack":
        try:
            self.resolv_conf.write_text("# test resolv.conf\nnameserver 127.0.0.53\nsearch example.test\n")
            self.nats.start()
            self.api = self._spawn("api", [sys.executable, "-m", "osapi", "api", "server", "start"], self.env())
            for i in range(self.workers):
                self.worker_procs.append(self._start_worker(i))
            wait_for_port("127.0.0.1", self.api_port, timeout, self.api)
            self.wait_ready(timeout)
            return self
        except BaseException:
            self.stop()
            raise

    def _start_worker(self, i: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "osapi", "job", "worker", "start"]
        if not self.netns:
            return self._spawn(f"worker-{i}", cmd, self.env())
        sock = str(self.workdir / f"nats-{i}.sock")
        forwarder = self._spawn(f"forward-{i}", [sys.executable, str(HERE / "netns_forward.py"), "serve-unix",
                                                  sock, str(self.nats.port)], dict(os.environ))
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if forwarder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"forwarder for worker {i} did not start; see {self.workdir}/forward-{i}.log")
            time.sleep(0.02)
        inner_port = 4222  # inside the private namespace every port is free
        wrapped = ["unshare", "--net", "--", sys.executable, str(HERE / "netns_forward.py"), "wrap", sock,
                   str(inner_port), "--", *cmd]
        return self._spawn(f"worker-{i}", wrapped, self.env(nats_url=f"nats://127.0.0.1:{inner_port}"))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"pid {proc.pid} ({proc.args}) exited with {proc.returncode}:\n{self.logs()}")
            try:
                status, body = self.request("GET", "/api/v1/jobs/workers")
                last = (status, body)
                if status == 200 and body.get("total", 0) >= (1 if self.workers else 0):
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"stack not ready within {timeout}s (last: {last}):\n{self.logs()}")

    def request(self, method: str, path: str, body=None, token: str | None = "admin", headers=None,
                timeout: float = 60.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token == "admin":
            token = self.token
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, (json.loads(raw) if raw else None)
        except ValueError:
            return status, raw.decode(errors="replace")

    def rss(self, proc: subprocess.Popen) -> int:
        """Resident set size of one process in bytes, from /proc."""
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {proc.pid}")

    def logs(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        # workers first, NATS last, each by pid
        for proc in reversed(self.procs):
            stop_process(proc, timeout=15)
        self.procs.clear()
        self.nats.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
