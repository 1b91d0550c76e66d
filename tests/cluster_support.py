"""A real NATS JetStream cluster on loopback: three nats-servers with routes.

Each member's configuration is rendered by ``osapi.natsd.render_config`` (the
same ``cluster {name, host, port, routes}`` block ``osapi nats server start``
writes from ``nats.server.cluster.*``), with its own free ports, its own store
dir in the test's temp dir and its own ``server_name``. ``stop`` stops every
member by pid; ``wait_ready`` polls, bounded, until JetStream answers
``$JS.API.INFO`` through every member (a meta leader is elected).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from pathlib import Path

from harness import free_port, stop_process, wait_for_port

from osapi import natsd

CLUSTER_NAME = "osapi-test"


class NatsCluster:
    def __init__(self, workdir: Path, size: int = 3):
        self.workdir = Path(workdir)
        self.host = "127.0.0.1"
        self.token = secrets.token_hex(16)
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen] = []

    @property
    def urls(self) -> list[str]:
        return [f"nats://{self.host}:{port}" for port in self.ports]

    def env(self, members: list[int] | None = None) -> dict[str, str]:
        """OSAPI_* variables pointing an osapi process at ``members`` (default: all of them)."""
        urls = [self.urls[i] for i in (members if members is not None else range(len(self.ports)))]
        return {"OSAPI_NATS_URL": ",".join(urls), "OSAPI_NATS_TOKEN": self.token}

    def start(self, timeout: float = 20.0, members: list[int] | None = None) -> "NatsCluster":
        """Start every member (or those of ``members``, by index; ``start`` again for the others)."""
        binary = natsd.find_binary()
        started = []
        for i, port in enumerate(self.ports):
            if members is not None and i not in members:
                continue
            member = self.workdir / f"n{i}"
            member.mkdir(parents=True, exist_ok=True)
            routes = [f"nats-route://{self.host}:{p}" for j, p in enumerate(self.cluster_ports) if j != i]
            conf = member / "nats.conf"
            conf.write_text(natsd.render_config(
                host=self.host, port=port, store_dir=member / "jetstream", token=self.token,
                cluster_name=CLUSTER_NAME, cluster_host=self.host, cluster_port=self.cluster_ports[i],
                routes=routes, server_name=f"n{i}",
            ))
            with open(member / "nats.log", "ab") as log:
                proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=log, stderr=log)
            self.procs.append(proc)
            started.append((port, proc))
        for port, proc in started:
            wait_for_port(self.host, port, timeout, proc)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``$JS.API.INFO`` succeeds through every member (bounded by ``timeout``)."""
        asyncio.run(self._wait_ready(timeout))

    async def _wait_ready(self, timeout: float) -> None:
        import nats

        deadline = time.monotonic() + timeout
        last = "no attempt"
        for url in self.urls:
            while True:
                try:
                    nc = await nats.connect(url, token=self.token, connect_timeout=2, max_reconnect_attempts=0,
                                            allow_reconnect=False)
                    try:
                        reply = json.loads((await nc.request("$JS.API.INFO", b"", timeout=2)).data)
                    finally:
                        await nc.close()
                    if "error" not in reply:
                        break
                    last = reply["error"].get("description", str(reply["error"]))
                except Exception as exc:  # noqa: BLE001 - not ready yet
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"JetStream through {url} not ready within {timeout}s: {last}\n{self.logs()}")
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                stop_process(proc)
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass

    def logs(self) -> str:
        out = []
        for i in range(len(self.ports)):
            try:
                out.append(f"--- n{i}\n" + (self.workdir / f"n{i}" / "nats.log").read_text(errors="replace")[-2000:])
            except OSError:
                pass
        return "\n".join(out)
