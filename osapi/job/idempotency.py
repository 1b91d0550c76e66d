"""Idempotency keys of ``POST /jobs`` (README.md "Idempotency keys").

A client that sends ``Idempotency-Key: K`` and retries after a timeout or a 503
must never create a second job. The state lives in NATS, so every API process
sees it: KV ``<job.kv_bucket>-idempotency`` (``setup.py``; TTL ``job.kv.ttl``), one
entry per key. The entry's name is ``slot()``: a SHA-256 of the token subject and
the key, never the header itself (a hostile header must not reach a NATS subject),
and a key belongs to one token subject. Its value is a ``Record``:

* ``pending`` (the request that claimed the key is submitting its job): the
  request's ``body`` hash, the ``job_id`` it is submitting and ``since_ns``;
* ``done``: the ``body`` hash and the ``answer`` the first request got.

The first request claims the key with a KV *create* (compare-and-set: of two
concurrent requests exactly one succeeds), submits, then stores its answer. A
later request with the same key and the same body gets that answer again
(``replayed``) and stores nothing; with another body it is ``IdempotencyConflict``
(422). One that finds the key ``pending`` waits up to ``WAIT`` seconds for the
answer, then gets ``IdempotencyInProgress`` (409 with ``Retry-After``).

A submission that fails (503) gives the key up (the entry is deleted, in the
background and retried, as the failed job itself is marked in ``client.py``), so
the client's retry makes a new job. A ``pending`` entry older than ``STALE``
seconds belongs to an API process that died mid-request: the next request takes
it over -- if that process's job was stored and did not fail at submission, its
answer is rebuilt and replayed, else the key is claimed anew.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Awaitable, Callable

from osapi.domain.errors import IdempotencyConflict, IdempotencyInProgress
from osapi.retry import Backoff, GaveUp, retry

log = logging.getLogger("osapi.job.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_LENGTH = 200
# 1-200 printable ASCII characters; HTTP drops blanks around a header value, so a key
# neither starts nor ends with one (JSON Schema form: ``$`` is the end of the text).
PATTERN = r"^[!-~](?:[ -~]{0,198}[!-~])?$"
KEY_RE = re.compile(PATTERN.replace("$", r"\Z"))
WAIT = 5.0  # seconds a request waits for the answer of the request that holds its key
POLL = 0.05  # seconds between two looks at a pending key
STALE = 60.0  # a pending key this old outlived its request (QUEUE_TIMEOUT 15 s + the shielded submission)
CLAIMS = 5  # attempts to claim a key that keeps being given up or taken over under us
RELEASE_PAUSE = (0.5, 30.0)  # giving a key up after a failed submission: first and longest pause


def check_key(value: str) -> str:
    """The key as sent, or ``ValueError`` saying what a key is."""
    if not KEY_RE.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(f"must be 1-{MAX_LENGTH} printable ASCII characters (no control character, no "
                         f"blank at either end), got {len(value)} characters: {shown!r}")
    return value


def slot(subject: str | None, key: str) -> str:
    """The KV key of an idempotency key: hex SHA-256 of the token subject and the key."""
    return hashlib.sha256(f"{subject or ''}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()


def body_hash(request: dict) -> str:
    """SHA-256 of a request in canonical JSON (sorted keys, no blanks, ASCII)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dumps(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _loads(data: bytes | None) -> dict:
    try:
        record = json.loads(data or b"")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class Keys:
    """The idempotency entries of one ``JobClient``'s store."""

    def __init__(self, store):
        self.store = store
        self._releases: set[asyncio.Task] = set()

    @property
    def kv(self):
        return self.store.kv("idempotency")

    async def _read(self, name: str) -> tuple[dict, int] | None:
        import nats.js.errors as jse

        try:
            entry = await self.kv.get(name)
        except (jse.KeyNotFoundError, jse.KeyDeletedError):
            return None
        if entry.value is None or getattr(entry, "operation", None) is not None:  # a delete or purge marker
            return None
        return _loads(entry.value), entry.revision

    async def once(self, name: str, digest: str, job_id: str,
                   submit: Callable[[], Awaitable[dict]],
                   existing: Callable[[str], Awaitable[dict | None]]) -> tuple[dict, bool]:
        """``(answer, replayed)``: ``submit()``'s answer if this request claims ``name``, else the first one's.

        ``existing(job_id)``: the answer for a job a dead request stored, or None
        (no such job, or its submission failed).
        """
        import nats.js.errors as jse

        pending = {"state": "pending", "body": digest, "job_id": job_id, "since_ns": time.time_ns()}
        for _ in range(CLAIMS):
            try:
                revision = await self.kv.create(name, _dumps(pending))
            except jse.KeyWrongLastSequenceError:
                found = await self._settled(name, digest)
                if found is None:
                    continue  # given up meanwhile: claim it again
                record, revision = found
                if record.get("state") == "done":
                    answer = record.get("answer") or {}
                    if await existing(str(answer.get("job_id"))) is not None:
                        return answer, True
                    # its job was deleted since: the key is free again, this request submits anew
                    try:
                        revision = await self.kv.update(name, _dumps(pending), last=revision)
                    except jse.KeyWrongLastSequenceError:
                        continue
                    return await self._submit(name, revision, digest, submit), False
                # pending past STALE: its request is gone
                answer = await existing(str(record.get("job_id")))
                if answer is not None:
                    done = {"state": "done", "body": digest, "answer": answer}
                    try:
                        await self.kv.update(name, _dumps(done), last=revision)
                    except jse.KeyWrongLastSequenceError:
                        continue  # someone else settled it: look again
                    return answer, True
                try:
                    revision = await self.kv.update(name, _dumps(pending), last=revision)
                except jse.KeyWrongLastSequenceError:
                    continue
            return await self._submit(name, revision, digest, submit), False
        raise IdempotencyInProgress(
            f"{HEADER}: the key changed hands {CLAIMS} times while this request tried to claim it",
            "retry the same request in a few seconds")

    async def _settled(self, name: str, digest: str) -> tuple[dict, int] | None:
        """The key's record once it is done (or stale pending); None once it was given up; 422/409 else."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            found = await self._read(name)
            if found is None:
                return None
            record, revision = found
            if record.get("body") != digest:
                raise IdempotencyConflict(
                    f"this {HEADER} was used with a different request body (operation, data, target or "
                    "dry_run) within job.kv.ttl",
                    "send the first request's body again, or use a new key for a new request")
            if record.get("state") == "done":
                return found
            age = (time.time_ns() - int(record.get("since_ns") or 0)) / 1e9
            if age > STALE:
                return found
            if loop.time() >= deadline:
                raise IdempotencyInProgress(
                    f"a request with this {HEADER} is still submitting job {record.get('job_id')} "
                    f"(for {age:.0f}s)",
                    "retry the same request in a few seconds: it then gets that request's answer")
            await asyncio.sleep(POLL)

    async def _submit(self, name: str, revision: int, digest: str, submit: Callable[[], Awaitable[dict]]) -> dict:
        """Submit as the key's holder; store the answer, or give the key up if the submission fails."""
        import nats.js.errors as jse

        try:
            answer = await submit()
        except BaseException:
            self.release(name, revision)
            raise
        try:
            await self.kv.update(name, _dumps({"state": "done", "body": digest, "answer": answer}), last=revision)
        except (jse.Error, OSError, asyncio.TimeoutError) as exc:
            # the job is stored and published: the answer stands; a retry after STALE finds the job
            log.warning("job %s: cannot store the answer of its %s: %s", answer.get("job_id"), HEADER, exc)
        return answer

    def release(self, name: str, revision: int) -> None:
        """Give a key up after a failed submission, in the background, retried (bounded by ``job.kv.ttl``)."""
        task = asyncio.ensure_future(self._release(name, revision))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, name: str, revision: int) -> None:
        import nats.js.errors as jse

        async def delete() -> None:
            try:
                await self.kv.delete(name, last=revision)
            except jse.KeyWrongLastSequenceError:
                return  # taken over meanwhile (stale): not ours any more

        try:  # NATS still away: try again
            await retry(delete, Backoff(*RELEASE_PAUSE), within=max(60.0, float(self.store.cfg.job.kv.ttl or 0)))
        except GaveUp as exc:
            log.error("cannot give up an %s after a failed submission (%s); it is taken over "
                      "after %gs", HEADER, exc.last, STALE)

    async def settle(self, timeout: float) -> None:
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=timeout)


def answer_of(job: dict, revision: int) -> dict:
    """The ``POST /jobs`` answer for a stored job body (``client._submit``'s shape)."""
    from osapi.job import status as st

    return {"job_id": job["id"], "status": st.SUBMITTED, "revision": revision, "timestamp": job["created"]}
