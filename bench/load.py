"""Load generation shared by the throughput, footprint and load-test code.

``submit_jobs`` runs C concurrent keep-alive clients that POST jobs until a
count or a deadline is reached. ``CompletionWatch`` sees jobs finish the way the
job system records it (docs/jobs.md, Events and computed status): a ``completed`` or ``failed`` event key
``status.<id>.<event>.<host>.<nanos>`` in the KV bucket ``job-queue``. It is a
plain NATS subscription on the bucket's subjects -- it costs the appliance
nothing and involves no polling.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from bench.httpclient import AsyncConnection

HOSTNAME_JOB = {"operation": {"type": "system.hostname.get", "data": {}}, "target_hostname": "_any"}


@dataclass
class Submitted:
    job_ids: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)   # HTTP status -> count
    errors: list[str] = field(default_factory=list)          # transport errors, bodies of 5xx
    first: float = 0.0
    last: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


async def submit_jobs(port: int, token: str, *, concurrency: int, total: int | None = None,
                      seconds: float | None = None, body: dict = HOSTNAME_JOB) -> Submitted:
    """POST ``body`` to /api/v1/jobs from ``concurrency`` clients; bounded by count and/or time."""
    out = Submitted()
    remaining = [total if total is not None else 10 ** 9]
    deadline = time.perf_counter() + (seconds if seconds is not None else 3600)
    out.first = time.perf_counter()

    async def client() -> None:
        conn = AsyncConnection(port, token)
        try:
            while remaining[0] > 0 and time.perf_counter() < deadline:
                remaining[0] -= 1
                try:
                    status, raw = await conn.request("POST", "/api/v1/jobs", body)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    out.errors.append(f"transport: {exc!r}")
                    continue
                out.statuses[status] = out.statuses.get(status, 0) + 1
                if status == 201:
                    out.job_ids.append(json.loads(raw)["job_id"])
                elif status >= 500 and len(out.errors) < 20:
                    out.errors.append(f"{status}: {raw[:300]!r}")
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    out.last = time.perf_counter()
    return out


class CompletionWatch:
    """Job ids that reached ``completed``/``failed``, with the time each was first seen."""

    FINAL = ("completed", "failed")

    def __init__(self, nats_url: str, nats_token: str, bucket: str = "job-queue"):
        self.url, self.token, self.bucket = nats_url, nats_token, bucket
        self.done: dict[str, float] = {}
        self.final_status: dict[str, str] = {}
        self._nc = None
        self._wanted: set[str] | None = None
        self._all_done = asyncio.Event()

    async def start(self) -> "CompletionWatch":
        import nats

        self._nc = await nats.connect(self.url, token=self.token or None, name="osapi-bench-watch")
        for event in self.FINAL:
            await self._nc.subscribe(f"$KV.{self.bucket}.status.*.{event}.>", cb=self._on_event)
        await self._nc.flush()
        return self

    async def _on_event(self, msg) -> None:
        parts = msg.subject.split(".")
        # $KV . bucket . status . <id> . <event> . <host...> . <nanos>
        job_id, event = parts[3], parts[4]
        if job_id not in self.done:
            self.done[job_id] = time.perf_counter()
            self.final_status[job_id] = event
        if self._wanted is not None and self._wanted <= self.done.keys():
            self._all_done.set()

    async def wait_for(self, job_ids, timeout: float) -> bool:
        """True when every id in ``job_ids`` has finished within ``timeout`` seconds."""
        self._wanted = set(job_ids)
        if self._wanted <= self.done.keys():
            return True
        self._all_done.clear()
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
