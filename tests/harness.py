"""Real components for tests: nats-server on a free port, processes stopped by pid.

Every process started here is stopped by the test that started it (by pid, TERM
then KILL), and every wait is bounded in time.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from osapi import natsd

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop one process by pid: ``sig``, then KILL after ``timeout``. Returns its exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def generate_tls(state_dir: Path):
    """A CA and a server certificate for 127.0.0.1 made by ``osapi.tls`` (as supervise does) in ``state_dir``."""
    from osapi import config, tls

    cfg = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(state_dir), "OSAPI_NATS_SERVER_TLS_ENABLED": "true"})
    return tls.ensure_generated(cfg)


def tls_context(ca_file: str | Path):
    """The client side of ``generate_tls``: an ``ssl.SSLContext`` trusting that CA only."""
    import ssl

    return ssl.create_default_context(cafile=str(ca_file))


class NatsServer:
    """One real nats-server with JetStream and token auth in its own temp dir.

    ``tls=True``: TLS required from clients, with a CA generated in ``workdir/tls``;
    ``env()`` then points clients at that CA (``OSAPI_NATS_TLS_CA``).
    """

    def __init__(self, workdir: Path, port: int | None = None, token: str | None = None, tls: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.token = token if token is not None else secrets.token_hex(16)
        self.store_dir = self.workdir / "jetstream"
        self.conf = self.workdir / "nats.conf"
        self.log = self.workdir / "nats.log"
        self.proc: subprocess.Popen | None = None
        self.tls = generate_tls(self.workdir / "tls") if tls else None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        self.conf.write_text(
            natsd.render_config(host=self.host, port=self.port, store_dir=self.store_dir, token=self.token,
                                tls=self.tls)
        )
        binary = natsd.find_binary()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(binary), "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=sig)

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def env(self) -> dict[str, str]:
        """OSAPI_* variables that point an osapi process at this server."""
        env = {"OSAPI_NATS_URL": self.url, "OSAPI_NATS_TOKEN": self.token}
        if self.tls:
            env["OSAPI_NATS_TLS_CA"] = self.tls.ca_file
        return env


def python() -> str:
    return sys.executable
