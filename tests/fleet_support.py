"""A nats-server running the way a control-plane node runs it: ``users`` from osapi's users file.

``FleetNats`` renders its configuration with ``natsd.render_config(users_file=...)``
after ``osapi.fleet.auth.write_users`` (no host enrolled yet), like ``osapi nats
server start`` does, so a ``Renderer`` pointed at its directory and pid changes
its users exactly as on a node. ``raw_host`` connects with a bundle's
credentials and nothing of osapi in between (raw nats-py), collecting the
server's permission errors.
"""

from __future__ import annotations

import asyncio
import subprocess

from testkit import NatsServer, wait_for_port

from osapi import natsd
from osapi.fleet import auth
from osapi.job.setup import Names


class FleetNats(NatsServer):
    def start(self, timeout: float = 15.0) -> "FleetNats":
        from osapi import config

        names = Names.from_config(config.load(None, {}))
        if not auth.users_paths(self.workdir)[0].exists():
            auth.write_users(self.workdir, self.token, [], names)
        self.conf.write_text(natsd.render_config(host=self.host, port=self.port, store_dir=self.store_dir,
                                                 token=self.token, users_file=auth.USERS_CONF))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(natsd.find_binary()), "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def renderer(self, poll: float = 0.2):
        from osapi import config
        from osapi.fleet.renderer import Renderer

        return Renderer(self.workdir, self.token, lambda: self.proc.pid if self.proc and self.proc.poll() is None
                        else None, Names.from_config(config.load(None, {})), poll=poll)


class RawHost:
    """A raw nats-py connection with a host's user and password; ``errors``: what the server refused."""

    def __init__(self):
        self.nc = None
        self.errors: list[str] = []
        self.closed = asyncio.Event()

    async def connect(self, url: str, user: str, password: str, reconnect: bool = False, tls=None) -> "RawHost":
        """``tls``: an ``ssl.SSLContext`` (a TLS node: the bundle's CA)."""
        import nats

        async def error_cb(exc):
            self.errors.append(str(exc))

        async def closed_cb():
            self.closed.set()

        self.nc = await nats.connect(url, user=user, password=password, inbox_prefix=auth.inbox_prefix(user),
                                     connect_timeout=2, allow_reconnect=reconnect, max_reconnect_attempts=3 if reconnect else 0,
                                     reconnect_time_wait=0.2, error_cb=error_cb, closed_cb=closed_cb,
                                     **({"tls": tls} if tls is not None else {}))
        return self

    def refused(self, fragment: str) -> bool:
        return any("permissions violation" in e.lower() and fragment.lower() in e.lower() for e in self.errors)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
