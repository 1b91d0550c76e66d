"""Keep this node's nats-server users equal to the enrollment bucket (README.md, "Fleet hosts").

Every API process on a control-plane node runs a ``Renderer`` (``local`` finds
the node's files: ``<state_dir>/nats-users.conf``, written by ``osapi nats
server start`` when nats-server requires auth, and the pid of the nats-server
holding the node's JetStream store lock). Each ``poll`` seconds it asks the
bucket's stream for its last sequence (one small request); when it moved, it
reads the bucket (again at the next look when the read came from a replica
that had not reached that sequence yet), writes the users file (atomically,
0600; not at all when the text is the same; the entries carry their password
hashes, nothing is hashed here) and sends nats-server SIGHUP. The server then applies the new
list and itself drops the connections of a removed user or a changed password.
So an enrollment, rotation or revocation made through any node reaches every
node within ``poll`` plus one reload, with no manual step.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from osapi.fleet import auth, hosts
from osapi.retry import Backoff, pause, sampled

log = logging.getLogger("osapi.fleet.renderer")

POLL = 1.0  # seconds between looks at the bucket
MAX_PAUSE = 5.0


class Renderer:
    def __init__(self, directory: Path, control_password: str, pid: Callable[[], int | None], names,
                 poll: float = POLL):
        self.directory = Path(directory)
        self.control_password = control_password
        self.pid = pid
        self.names = names
        self.poll = poll
        self.renders = 0  # files written (each followed by a reload)
        self._seen: int | None = None

    async def once(self, store) -> bool:
        """Render if the bucket changed since the last look; True when the file changed (and a reload was sent)."""
        info = await store.js.stream_info(store.stream_of("fleet"))
        seq = info.state.last_seq
        if seq == self._seen:
            return False
        found, seen = await hosts.enrolled_seen(store)
        entries = list(found.values())
        changed = auth.write_users(self.directory, self.control_password, entries, self.names)
        # a replica behind the leader answered the read: render what it had, and read again next time
        self._seen = seq if seen >= seq else None
        if changed:
            self.renders += 1
            pid = self.pid()
            if pid is None:
                log.warning("fleet users rendered into %s, but no nats-server runs for this node to reload them",
                            self.directory / auth.USERS_CONF)
            else:
                auth.reload(pid)
                log.info("fleet users rendered (%d enrolled hosts); nats-server %d reloads them", len(entries), pid)
        return changed

    async def run(self, store, stop: asyncio.Event | None = None) -> None:
        """``once`` every ``poll`` seconds until cancelled (or ``stop`` is set); errors are logged and
        retried after a growing pause (``osapi.retry``: ``poll``, ``2 × poll`` … at most ``MAX_PAUSE``)."""
        trouble = Backoff.linear(self.poll, MAX_PAUSE)
        while stop is None or not stop.is_set():
            try:
                await self.once(store)
                trouble.succeeded()
                wait = self.poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away, bucket missing: look again later
                wait = trouble.failed()
                if sampled(trouble.failures, 30):
                    log.warning("cannot render the fleet users: %s; retrying", getattr(exc, "description", None) or exc)
            await pause(wait, stop)


def node_pid(cfg) -> int | None:
    """The pid of the nats-server holding this node's JetStream store lock (``osapi nats server start``), or None."""
    from osapi import natsd

    try:
        text = (natsd.store_dir(cfg) / natsd.LOCK_NAME).read_text()
        pid = int(text.strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and os.path.exists(f"/proc/{pid}") else None


def local(cfg) -> Renderer | None:
    """The renderer of this node, when its nats-server runs with osapi's users file; else None."""
    from osapi import config, natsd
    from osapi.job.setup import Names

    directory = natsd.config_path(cfg).parent
    token = config.nats_server_token(cfg)
    if not token or not (directory / auth.USERS_CONF).is_file():
        return None
    return Renderer(directory, token, lambda: node_pid(cfg), Names.from_config(cfg))
