"""A real osapi stack for the load and hostile-input tests, started from source.

A ``testkit.Stack`` (nats-server, ``osapi api server start`` and ``osapi job
worker start`` on free loopback ports, each stopped by pid) with the load tests'
settings. A worker can run inside a private network namespace
(``netns_forward.py``) so the jobs it runs cannot reach anything but its own
loopback, and always with the ``resolv_conf`` DNS provider on a temp file: the
host's /etc/resolv.conf and systemd-resolved are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from testkit import SIGNING_KEY, Http, Stack, free_port, make_token, stop_all, wait_for

HERE = Path(__file__).resolve().parent

__all__ = ["SIGNING_KEY", "LoadStack", "netns_available"]


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


class LoadStack(Stack):
    """nats-server, one API and ``workers`` worker processes of one host (``hostname``)."""

    def __init__(self, workdir: Path, *, workers: int = 1, netns: bool = False, job_timeout: str = "10s",
                 hostname: str = "load-host"):
        super().__init__(workdir, {"OSAPI_API_SERVER_JOB_TIMEOUT": job_timeout,
                                   "OSAPI_API_SERVER_BROADCAST_QUIET_PERIOD": "1s"})
        self.worker_count = workers
        self.netns = netns
        self.hostname = hostname
        self.api_port = free_port()
        self.resolv_conf = self.workdir / "resolv.conf"
        self.forwarders: list[subprocess.Popen] = []
        self.api = None
        self.token = make_token(["admin"], subject="load-test")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 60.0) -> "LoadStack":
        try:
            self.resolv_conf.write_text("# test resolv.conf\nnameserver 127.0.0.53\nsearch example.test\n")
            super().start()
            self.api = self.start_api(port=self.api_port, ready=False, timeout=timeout)
            for i in range(self.worker_count):
                self._start_worker(i)
            wait_for(self._ready, timeout, "the stack ready (its workers registered)", interval=0.1)
            return self
        except BaseException:
            self.stop()
            raise

    def _start_worker(self, i: int) -> None:
        name = f"worker-{i}"
        if not self.netns:
            self.start_worker(self.hostname, name=name, resolv_conf=self.resolv_conf)
            return
        sock = str(self.workdir / f"nats-{i}.sock")
        with open(self.workdir / f"forward-{i}.log", "ab") as log:
            forwarder = subprocess.Popen([sys.executable, str(HERE / "netns_forward.py"), "serve-unix", sock,
                                          str(self.nats.port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.forwarders.append(forwarder)

        def listening() -> bool:
            if forwarder.poll() is not None:
                raise RuntimeError(f"forwarder for worker {i} exited; see {self.workdir}/forward-{i}.log")
            return os.path.exists(sock)

        wait_for(listening, 15, f"the forwarder for worker {i}", interval=0.02)
        inner_port = 4222  # inside the private namespace every port is free
        wrap = ("unshare", "--net", "--", sys.executable, str(HERE / "netns_forward.py"), "wrap", sock,
                str(inner_port), "--")
        self.start_worker(self.hostname, name=name, resolv_conf=self.resolv_conf, wrap=wrap,
                          env={"OSAPI_NATS_URL": f"nats://127.0.0.1:{inner_port}"})

    def _ready(self) -> bool:
        for proc in [*self.procs, *self.forwarders]:
            popen = getattr(proc, "proc", proc)
            if popen.poll() is not None:
                raise RuntimeError(f"pid {popen.pid} ({popen.args}) exited with {popen.returncode}:\n{self.logs()}")
        try:
            status, body = self.request("GET", "/api/v1/jobs/workers")
        except OSError:
            return False
        return status == 200 and body.get("total", 0) >= (1 if self.worker_count else 0)

    def request(self, method: str, path: str, body=None, token: str | None = "admin", headers=None,
                timeout: float = 60.0):
        """``(status, JSON body or text)``; ``token="admin"`` is the stack's admin token, None sends none."""
        return Http(self.api_port, token=self.token if token == "admin" else token).call(
            method, path, body, headers=headers, timeout=timeout)

    def rss(self, proc) -> int:
        """Resident set size of one process in bytes, from /proc."""
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {proc.pid}")

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            stop_all(self.forwarders, timeout=15)
