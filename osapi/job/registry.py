"""The worker registry: one heartbeat entry per worker process, expiring by itself.

KV ``<job.kv_bucket>-workers``, key ``<hostname>.<instance>``, value
``{hostname, labels, version, started_at, last_seen, ttl, pid, instance}``.
Each heartbeat rewrites the key with a per-message TTL (JetStream ``Nats-TTL``),
so the server itself drops a worker that stopped beating — no clock
comparison between hosts. A worker that stops cleanly removes its entry at once.

Readers (``GET /jobs/workers``, broadcast completion) take every entry present as
live. They read the whole registry in one batch request (``Store.multi_get`` on
the bucket's prefix); with more entries than one batch returns, or on a server
without batch gets, they list the keys and read them one by one. Heartbeat every 5 s with a TTL of 15 s by default (``osapi job worker start
--heartbeat``: the TTL is three intervals).
"""

from __future__ import annotations

import json
import math
from typing import Any

from osapi.job.store import Store, _gather_bounded, dumps

DEFAULT_INTERVAL = 5.0
TTL_INTERVALS = 3
PUBLIC_FIELDS = ("hostname", "labels", "version", "started_at", "last_seen")


class Registry:
    def __init__(self, store: Store):
        self.store = store

    async def beat(self, key: str, entry: dict, ttl: float) -> None:
        subject = self.store.subject_of("registry", key)
        await self.store.js.publish(subject, dumps(entry), msg_ttl=max(1, math.ceil(ttl)))

    async def remove(self, key: str) -> None:
        await self.store.js.purge_stream(self.store.stream_of("registry"), subject=self.store.subject_of("registry", key))

    async def entries(self) -> list[dict[str, Any]]:
        """Every live entry (full records), sorted by hostname then start time."""
        prefix = self.store.subject_of("registry", "")
        stream = self.store.stream_of("registry")
        found = await self.store.multi_get(stream, [f"{prefix}>"])
        if found is not None:
            values = [_entry(data) for data in found.values()]
        else:
            subjects, _ = await self.store.all_subjects(stream, f"{prefix}>")
            values = await _gather_bounded([self._read(s[len(prefix):]) for s in subjects])
        live = [e for e in values if e is not None]
        live.sort(key=lambda e: (e["hostname"], e.get("started_at") or ""))
        return live

    async def _read(self, key: str) -> dict[str, Any] | None:
        import nats.js.errors as jse

        try:
            found = await self.store.kv("registry").get(key)
        except jse.KeyNotFoundError:
            return None
        return _entry(found.value)

    async def workers(self) -> dict:
        """``{total, workers: [{hostname, labels, version, started_at, last_seen}]}``."""
        live = await self.entries()
        shown = [{k: e.get(k) for k in PUBLIC_FIELDS} for e in live]
        return {"total": len(shown), "workers": shown}


def _entry(data: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("hostname"), str) else None
