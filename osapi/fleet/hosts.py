"""The enrollment bucket ``<job.kv_bucket>-fleet``: one entry per enrolled host.

Key: the hostname (lower case). Value: ``{hostname, labels, enrolled_at, user,
password_hash}`` -- the NATS user and the bcrypt hash of its password, what
every node renders into its nats-server's users file (``auth.py``); readable by
the control plane only (a fleet host's permissions do not reach this bucket).
The password itself is stored nowhere: ``enroll`` returns it once, for the bundle
of ``POST /fleet/hosts``; a lost bundle is a ``rotate``. Entries never expire.

Enrolling also creates the host's durable consumer, filtered on the *enrolled*
hostname and labels (a fleet host may not create or change consumers): what a
host receives is decided here, whatever labels it configures locally. Revoking
deletes the entry (every control-plane node's renderer then drops the user:
``renderer.py``), the consumer and the host's registry entries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from osapi.config import NAME_RE, is_label_value
from osapi.fleet import auth
from osapi.job import status as st
from osapi.job.store import dumps

log = logging.getLogger("osapi.fleet.hosts")

MAX_LABELS = 32


class AlreadyEnrolled(Exception):
    """The host is enrolled and ``rotate`` was not asked for."""


class NotEnrolled(Exception):
    """No such enrolled host."""


def check_labels(value) -> dict:
    """Labels as workers accept them (``job.worker.labels``); ``auth.InvalidHost`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise auth.InvalidHost("labels must be an object of label to value")
    if len(value) > MAX_LABELS:
        raise auth.InvalidHost(f"at most {MAX_LABELS} labels")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not NAME_RE.fullmatch(key) or len(key) > 64:
            raise auth.InvalidHost(f"label key must match [A-Za-z0-9_-]{{1,64}}, got {str(key)[:80]!r}")
        if not isinstance(val, str) or not is_label_value(val) or len(val) > 253:
            raise auth.InvalidHost(f"label {key!r}: value must be dot-separated segments of [A-Za-z0-9_-]+, "
                                   f"got {str(val)[:80]!r}")
        out[key] = val
    return out


def _entry(data: bytes | None) -> dict | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    try:
        auth.check_entry(value)
    except auth.InvalidHost:
        return None
    return value


async def enrolled(store) -> dict[str, dict]:
    """Every enrolled host's entry by hostname (credentials included): batch reads of 1,000 entries."""
    return (await enrolled_seen(store))[0]


async def enrolled_seen(store) -> tuple[dict[str, dict], int]:
    """``enrolled`` and the highest stream sequence the read saw.

    The bucket keeps one message per key (the entry or its delete marker), so a
    batch get over every key is the bucket's current state, and it includes the
    stream's last message: a read that saw less than the stream's ``last_seq``
    came from a replica that is behind (direct gets may be answered by any
    replica), and whoever caches by ``last_seq`` reads again (``renderer``, the
    registry).
    """
    prefix = store.subject_of("fleet", "")
    out = {}
    seen = 0
    async for subject, data, seq in store.batch_get(store.stream_of("fleet"), f"{prefix}>", sequences=True):
        seen = max(seen, seq)
        entry = _entry(data)
        if entry is not None and subject == prefix + entry["hostname"]:
            out[entry["hostname"]] = entry
    return out, seen


def labels_of(entries: dict[str, dict]) -> dict[str, dict]:
    """``{hostname: labels}`` of enrolled entries (the labels that win over a host's own)."""
    return {h: dict(e.get("labels") or {}) for h, e in entries.items()}


async def enrolled_labels(store) -> dict[str, dict]:
    """``{hostname: labels}`` of every enrolled host (the labels that win over a host's own)."""
    return labels_of(await enrolled(store))


async def enroll(store, cfg, hostname: str, labels: dict | None, rotate: bool = False) -> dict:
    """Enroll (or, with ``rotate``, re-issue the credentials of) a host; the stored entry plus its ``password``.

    ``AlreadyEnrolled`` when it is enrolled and not ``rotate``. A rotation keeps the
    enrollment time and takes the new labels when given (else keeps the old ones).
    The consumer is created (or its filter updated) before the entry is written: a
    host never has credentials for a consumer that does not exist. The password is
    hashed here, once (bcrypt, 0.1 to 0.2 s of CPU, in a thread: the event loop goes on).
    """
    import nats.js.errors as jse

    hostname = auth.check_hostname(hostname)
    labels = check_labels(labels) if labels is not None else None
    kv = store.kv("fleet")
    old, revision = None, None
    try:
        got = await kv.get(hostname)
        old, revision = _entry(got.value), got.revision
    except jse.KeyNotFoundError:
        pass
    if old is not None and not rotate:
        raise AlreadyEnrolled(hostname)
    user, password = auth.new_credentials()
    hashed = await asyncio.to_thread(auth.hash_password, password)
    entry = {
        "hostname": hostname,
        "labels": labels if labels is not None else (old or {}).get("labels", {}),
        "enrolled_at": (old or {}).get("enrolled_at") or st.rfc3339(time.time_ns()),
        "user": user,
        "password_hash": hashed,
    }
    await ensure_host_consumer(store, cfg, hostname, entry["labels"])
    try:
        if revision is None:
            await kv.create(hostname, dumps(entry))
        else:
            await kv.update(hostname, dumps(entry), last=revision)
    except jse.KeyWrongLastSequenceError:
        raise AlreadyEnrolled(hostname) from None  # enrolled (or rotated) by another request meanwhile
    log.info("fleet host %s %s", hostname, "credentials rotated" if old else "enrolled",
             extra={"fields": {"labels": ",".join(f"{k}={v}" for k, v in sorted(entry["labels"].items())) or "-"}})
    return {**entry, "password": password}


async def ensure_host_consumer(store, cfg, hostname: str, labels: dict) -> None:
    """The host's durable consumer, filtered on its enrolled hostname and labels; it never expires."""
    from osapi.job.setup import ensure_consumer, host_consumer_config

    config = host_consumer_config(cfg, hostname, labels)
    config.inactive_threshold = None  # the host cannot create it again: the control plane keeps it
    config.metadata = {**(config.metadata or {}), "osapi_enrolled": "true"}
    await ensure_consumer(store.js, store.names.stream, config, update=True)


async def revoke(store, hostname: str) -> None:
    """Remove an enrolled host: its entry, its consumer, its registry entries. ``NotEnrolled`` if unknown."""
    import nats.js.errors as jse

    hostname = auth.check_hostname(hostname)
    kv = store.kv("fleet")
    try:
        got = await kv.get(hostname)
    except jse.KeyNotFoundError:
        raise NotEnrolled(hostname) from None
    if _entry(got.value) is None:
        raise NotEnrolled(hostname)
    await kv.delete(hostname)
    try:
        await store.js.delete_consumer(store.names.stream, store.names.host_consumer(hostname))
    except jse.NotFoundError:
        pass
    await forget(store, hostname)
    log.info("fleet host %s revoked", hostname)


# seconds after a revocation when its registry entries are removed again: a heartbeat the host sent
# before every node dropped its connections (renderer.POLL plus a reload, within 10 s) would
# otherwise keep it in GET /jobs/workers until that entry's TTL
FORGET_AGAIN = (3.0, 10.0)


async def forget(store, hostname: str) -> None:
    """Remove the host's registry entries (``<hostname>.*``)."""
    await store.js.purge_stream(store.stream_of("registry"), subject=store.subject_of("registry", f"{hostname}.*"))


async def forget_again(store, hostname: str, after=FORGET_AGAIN) -> None:
    """``forget`` once more at each of ``after`` (seconds since the revocation); errors are logged, not raised."""
    waited = 0.0
    for moment in after:
        await asyncio.sleep(max(0.0, moment - waited))
        waited = moment
        try:
            if await store.kv("fleet").get(hostname) is not None:
                return  # enrolled again meanwhile: its entries are its new worker's
        except Exception:  # noqa: BLE001 - not found: still revoked (the usual case)
            pass
        try:
            await forget(store, hostname)
        except Exception as exc:  # noqa: BLE001 - NATS away: the entries' TTL removes them
            log.debug("cannot remove the registry entries of revoked host %s: %s", hostname, exc)


async def listing(store, live_rows: list[dict]) -> dict:
    """``{total, hosts: [{hostname, labels, enrolled_at, connected, last_seen}]}``, by hostname.

    ``live_rows``: the registry's rows, one per host (``osapi.job.registry.by_host``).
    """
    hosts = await enrolled(store)
    live = {row["hostname"].lower(): row for row in live_rows}
    rows = []
    for hostname, entry in sorted(hosts.items()):
        seen = live.get(hostname)
        rows.append({"hostname": hostname, "labels": dict(entry.get("labels") or {}),
                     "enrolled_at": entry.get("enrolled_at"), "connected": seen is not None,
                     "last_seen": seen.get("last_seen") if seen else None})
    return {"total": len(rows), "hosts": rows}
