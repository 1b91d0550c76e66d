"""How long a revocation takes with N enrolled hosts (README.md, "Fleet hosts", figures).

One nats-server configured as a control-plane node (users from osapi's users
file) with N enrolled users. Measures: rendering the file (N users), the
server's start with it, and a revocation: rewrite without one user, SIGHUP,
until that user's live connection is closed by the server (and its new
connections are refused). ``python bench/fleet_reload.py 1000 10000``. Each
entry carries a bcrypt hash as an enrolled one does (made at enrollment, not
here); only the revoked host's is its own, the others share one.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fleet_support import FleetNats, RawHost  # noqa: E402

from osapi import config  # noqa: E402
from osapi.fleet import auth  # noqa: E402
from osapi.job.setup import Names  # noqa: E402


def measure(n: int) -> dict:
    names = Names.from_config(config.load(None, {}))
    entries = []
    shared = auth.hash_password(auth.new_credentials()[1])  # one bcrypt hash (0.1 s) for all but the last host
    for i in range(n):
        user, password = auth.new_credentials()
        hashed = auth.hash_password(password) if i == n - 1 else shared
        entries.append({"user": user, "password": password, "password_hash": hashed,
                        "hostname": f"host{i}.example.com"})
    with tempfile.TemporaryDirectory() as tmp:
        server = FleetNats(Path(tmp) / "nats")
        t0 = time.perf_counter()
        auth.write_users(server.workdir, server.token, entries, names)
        render = time.perf_counter() - t0
        size = auth.users_paths(server.workdir)[0].stat().st_size
        t0 = time.perf_counter()
        server.start(timeout=120)
        start = time.perf_counter() - t0
        try:
            return asyncio.run(_revoke(server, entries, names, render, start, size))
        finally:
            server.stop()


async def _revoke(server, entries, names, render, start, size) -> dict:
    victim = entries[-1]
    host = await RawHost().connect(server.url, victim["user"], victim["password"])
    t0 = time.perf_counter()
    auth.write_users(server.workdir, server.token, entries[:-1], names)
    auth.reload(server.proc.pid)
    await asyncio.wait_for(host.closed.wait(), 60)
    dropped = time.perf_counter() - t0
    refused = None
    while time.perf_counter() - t0 < 60:
        try:
            again = await RawHost().connect(server.url, victim["user"], victim["password"])
            await again.close()
        except Exception:  # noqa: BLE001 - refused: the reload is applied
            refused = time.perf_counter() - t0
            break
        await asyncio.sleep(0.01)
    return {"users": len(entries), "render_s": round(render, 3), "file_bytes": size, "start_s": round(start, 2),
            "revoked_connection_dropped_s": round(dropped, 3), "new_connection_refused_s": refused and round(refused, 3)}


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["1000"]:
        print(measure(int(arg)), flush=True)
