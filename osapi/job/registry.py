"""The worker registry: one heartbeat entry per worker process, expiring by itself.

KV ``<job.kv_bucket>-workers``, key ``<hostname>.<instance>``, value
``{hostname, labels, version, started_at, last_seen, ttl, pid, instance}``,
rewritten at each heartbeat with a per-message TTL of three intervals; a worker
that stops cleanly removes its entry. Readers also leave out (and purge) entries
older than their ``ttl`` by the NATS server's clock, read the whole registry in
one batch request, give an enrolled fleet host its enrolled labels (the fleet
bucket read again only when its last sequence moved), and fold processes into
one row per host. The reasons: docs/jobs.md, "Registry".

Heartbeat every 5 s with a TTL of 15 s by default (``osapi job worker start
--heartbeat``: the TTL is three intervals).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import re
import time
from typing import Any, NamedTuple

from osapi.job.store import REQUEST_TIMEOUT, Store, _gather_bounded, dumps

log = logging.getLogger("osapi.job.registry")

DEFAULT_INTERVAL = 5.0
TTL_INTERVALS = 3
DEFAULT_TTL = DEFAULT_INTERVAL * TTL_INTERVALS  # for an entry that does not say its own
PUBLIC_FIELDS = ("hostname", "labels", "version", "started_at", "last_seen")


class Heartbeat(NamedTuple):
    """One registry message as the server stored it."""

    subject: str
    entry: dict[str, Any] | None  # None: not a registry entry
    seq: int | None
    stored_ns: int | None  # the server's clock when the heartbeat was stored


class Registry:
    def __init__(self, store: Store):
        self.store = store
        # the enrolled fleet hosts' labels (osapi.fleet.hosts), read again only when the fleet
        # bucket's last sequence moves: a broadcast then reads no enrolled entry
        self._fleet_seq: int | None = None
        self._fleet_labels: dict[str, dict] = {}

    async def beat(self, key: str, entry: dict, ttl: float) -> None:
        subject = self.store.subject_of("registry", key)
        await self.store.js.publish(subject, dumps(entry), msg_ttl=max(1, math.ceil(ttl)))

    async def remove(self, key: str) -> None:
        await self.store.js.purge_stream(self.store.stream_of("registry"), subject=self.store.subject_of("registry", key))

    async def entries(self) -> list[dict[str, Any]]:
        """Every live entry (full records, one per process), sorted by hostname then start time."""
        beats, (now_ns, enrolled) = await asyncio.gather(self._heartbeats(), self._now_and_enrolled())
        prefix = self.store.subject_of("registry", "")
        live, stale = [], []
        for beat in beats:
            if beat.entry is None or beat.subject[len(prefix):].rpartition(".")[0] != beat.entry["hostname"]:
                continue  # a key is <hostname>.<instance>: an entry naming another host is not believed
            labels = enrolled.get(beat.entry["hostname"].lower())
            if labels is not None:  # an enrolled fleet host: its enrolled labels, not its own (osapi.fleet)
                beat.entry["labels"] = dict(labels)
            (stale if is_stale(beat.entry, beat.stored_ns, now_ns) else live).append(beat)
        if stale:
            await self._purge(stale, now_ns)
        values = [b.entry for b in live]
        values.sort(key=lambda e: (e["hostname"], e.get("started_at") or ""))
        return values

    async def _now_and_enrolled(self) -> tuple[int, dict[str, dict]]:
        """The NATS server's time and the enrolled fleet hosts' labels: one request while the fleet bucket is unchanged.

        The fleet bucket's stream info carries both the server's time (``ts``) and the
        bucket's last sequence; the bucket itself is read only when that moved (and
        again next time when a replica behind the leader answered the read). No fleet
        bucket (an older setup) or no right to it: the registry's stream tells the
        time, and hosts keep their own labels.
        """
        info = await self._stream_info(self.store.stream_of("fleet"))
        if info is None:
            return await self._server_now_ns(), {}
        now = stamp_ns(info.get("ts")) or time.time_ns()
        seq = (info.get("state") or {}).get("last_seq")
        if seq is not None and seq == self._fleet_seq:
            return now, self._fleet_labels
        if seq == 0:  # nothing was ever enrolled (a single appliance): nothing to read
            self._fleet_labels, self._fleet_seq = {}, 0
            return now, {}
        from osapi.fleet.hosts import enrolled_seen, labels_of

        try:
            found, seen = await enrolled_seen(self.store)
        except Exception as exc:  # noqa: BLE001 - NATS trouble: hosts' own labels this time
            log.debug("cannot read the enrolled fleet hosts: %s", exc)
            return now, {}
        self._fleet_labels = labels_of(found)
        self._fleet_seq = seq if isinstance(seq, int) and seen >= seq else None
        return now, self._fleet_labels

    async def _stream_info(self, stream: str) -> dict | None:
        """A stream's info as the server sent it (``ts`` included); None when it cannot be had."""
        try:
            msg = await self.store.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=REQUEST_TIMEOUT)
            info = json.loads(msg.data)
        except Exception as exc:  # noqa: BLE001 - a slow server, no permission: the caller falls back
            log.debug("cannot read the info of stream %s: %s", stream, exc)
            return None
        return info if isinstance(info, dict) and "error" not in info else None

    async def _heartbeats(self) -> list[Heartbeat]:
        prefix = self.store.subject_of("registry", "")
        stream = self.store.stream_of("registry")
        found = await self.store.multi_last(stream, [f"{prefix}>"])
        if found is None:
            subjects, _ = await self.store.all_subjects(stream, f"{prefix}>")
            found = [m for m in await _gather_bounded([self._read(stream, s) for s in subjects]) if m is not None]
        return [_heartbeat(msg.headers or {}, msg.data) for msg in found]

    async def _read(self, stream: str, subject: str):
        import nats.js.errors as jse

        try:
            return await self.store.js.get_msg(stream, subject=subject, direct=True)
        except jse.NotFoundError:
            return None

    async def _server_now_ns(self) -> int:
        """The NATS server's current time (``ts`` of a stream-info answer); this host's clock if it has none."""
        try:
            msg = await self.store.nc.request(f"$JS.API.STREAM.INFO.{self.store.stream_of('registry')}", b"",
                                              timeout=REQUEST_TIMEOUT)
            stamp = stamp_ns(json.loads(msg.data).get("ts"))
        except Exception as exc:  # noqa: BLE001 - an older server, or a slow one: our own clock will do
            log.debug("cannot read the NATS server's time: %s", exc)
            stamp = None
        return stamp if stamp is not None else time.time_ns()

    async def _purge(self, stale: list[Heartbeat], now_ns: int) -> None:
        """Remove stale heartbeats (best effort): only each one's message, never a newer beat of its key."""
        stream = self.store.stream_of("registry")
        prefix = self.store.subject_of("registry", "")

        async def purge(beat: Heartbeat) -> None:
            age = f"{(now_ns - beat.stored_ns) / 1e9:.0f}s" if beat.stored_ns else "unknown"
            log.info("removing the stale worker registry entry %s: last heartbeat %s ago, TTL %gs "
                     "(the NATS server kept it past its TTL)", beat.subject[len(prefix):], age, entry_ttl(beat.entry))
            with contextlib.suppress(Exception):
                if beat.seq is not None:
                    await self.store.js.purge_stream(stream, subject=beat.subject, seq=beat.seq + 1)

        await _gather_bounded([purge(b) for b in stale])

    async def workers(self) -> dict:
        """``{total, workers: [{hostname, labels, version, started_at, last_seen, processes}]}``: one row per host."""
        hosts = by_host(await self.entries())
        return {"total": len(hosts), "workers": hosts}


def by_host(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per hostname: earliest ``started_at``, latest ``last_seen``, the newest process's labels and version."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["hostname"], []).append(entry)
    rows = []
    for hostname, procs in sorted(groups.items()):
        newest = max(procs, key=lambda e: str(e.get("started_at") or ""))
        started = [str(e["started_at"]) for e in procs if e.get("started_at")]
        seen = [str(e["last_seen"]) for e in procs if e.get("last_seen")]
        rows.append({
            "hostname": hostname,
            "labels": newest.get("labels") if isinstance(newest.get("labels"), dict) else {},
            "version": newest.get("version"),
            "started_at": min(started) if started else None,  # RFC 3339 UTC, same format: text order is time order
            "last_seen": max(seen) if seen else None,
            "processes": len(procs),
        })
    return rows


def entry_ttl(entry: dict[str, Any] | None) -> float:
    """The entry's TTL in seconds as the server applies it (whole seconds, rounded up)."""
    ttl = (entry or {}).get("ttl")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        ttl = DEFAULT_TTL
    return float(max(1, math.ceil(ttl)))


def is_stale(entry: dict[str, Any], stored_ns: int | None, now_ns: int) -> bool:
    """Whether a heartbeat is older than its TTL (server clock; the entry's own ``last_seen`` if unstamped)."""
    if stored_ns is None:
        stored_ns = stamp_ns(entry.get("last_seen"))
        if stored_ns is None:
            return False  # cannot tell: the server's TTL decides
    return now_ns - stored_ns > entry_ttl(entry) * 1e9


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def stamp_ns(text: Any) -> int | None:
    """RFC 3339 with up to nanoseconds (``2026-01-02T03:04:05.123456789Z``, as NATS writes them) → Unix ns."""
    match = _STAMP.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        return None
    whole, fraction, zone = match.groups()
    try:
        base = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def _heartbeat(headers: dict, data: bytes | None) -> Heartbeat:
    seq = headers.get("Nats-Sequence")
    return Heartbeat(headers.get("Nats-Subject", ""), _entry(data), int(seq) if str(seq or "").isdigit() else None,
                     stamp_ns(headers.get("Nats-Time-Stamp")))


def _entry(data: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("hostname"), str) else None
