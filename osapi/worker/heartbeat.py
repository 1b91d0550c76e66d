"""The heartbeat: the worker's entry in the registry (``osapi.job.registry``),
written every ``heartbeat`` seconds (and at once after a reconnect) with a TTL of
``TTL_INTERVALS`` beats, removed at stop. docs/jobs.md, "Registry".
"""

from __future__ import annotations

import asyncio
import os

from osapi import __version__
from osapi.job.registry import TTL_INTERVALS
from osapi.retry import sampled
from osapi.worker.common import describe as _describe, log, now as _now


class Heartbeat:
    """The registry entry of a ``Worker`` (a part of it: it reads the worker's state)."""

    def _entry(self) -> dict:
        return {
            "hostname": self.hostname,
            "labels": dict(self.labels),
            "version": __version__,
            "started_at": self.started_at,
            "last_seen": _now(),
            "ttl": self.heartbeat * TTL_INTERVALS,
            "pid": os.getpid(),
            "instance": self.instance,
        }

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._beat_now.clear()
            try:
                await self.registry.beat(self.registry_key, self._entry(), self.heartbeat * TTL_INTERVALS)
                failures = 0
            except Exception as exc:  # noqa: BLE001
                failures += 1
                if sampled(failures, 20):
                    log.warning("heartbeat failed: %s", _describe(exc))
            await _wait_any((self.stopping, self._beat_now), self.heartbeat)
        try:
            await self.registry.remove(self.registry_key)
        except Exception as exc:  # noqa: BLE001 - the entry expires by itself
            log.debug("cannot remove the registry entry: %s", exc)



async def _wait_any(events, seconds: float) -> None:
    """Sleep ``seconds`` unless one of ``events`` is set first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

