"""Reads and writes of the KV layout (docs/jobs.md, Storage layout), shared by client and worker.

KV ``job-queue``
    ``jobs.<id>``                         the immutable job (JSON)
    ``status.<id>.<event>.<host>.<nanos>`` append-only events; the key says it all,
                                          the value holds details (error, delivery)
KV ``job-responses``
    ``<id>.<host>``                       one host's result: ``{status, data, error, …}``
stream ``JOBS``
    ``jobs.<query|modify>.<target>``      the job id, to wake the right workers

Listings use JetStream's subject listing (``subjects``: sorted, paged, with the
total, no message read); several keys are read in one batch direct get
(``direct_batch``, ``multi_get``; a chunk the server refuses is read key by key).
Job bodies and per-job summaries are cached: jobs never change.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Iterable

from osapi.job import natsadapter
from osapi.job import status as st
from osapi.job.setup import Names

log = logging.getLogger("osapi.job.store")

REQUEST_TIMEOUT = 5.0
MULTI_MAX = 1000  # results of one multi-subject batch get (the server's own limit is about 1024)
EVENT_CHUNK = 150  # job ids per batch get of events (a one-host job has 4 events: 600 results)
KEY_CHUNK = 500  # exact keys (job bodies, responses) per batch get: one result each
BULK_THRESHOLD = 200  # more job summaries than this missing: read every job body in batches
CACHE_SIZE = 20000  # job bodies kept for pages
MAX_SUBJECT_PAGES = 1000  # 100,000 subjects a page: a bound, not a limit anyone meets


def _loads(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class Store:
    def __init__(self, nc, cfg):
        self.nc = nc
        self.cfg = cfg
        self.js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self.names = Names.from_config(cfg)
        self._kv: dict[str, Any] = {}
        self._warned: set = set()  # stream settings already warned about (setup.warn_differences)
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._summaries: dict[str, st.Summary] = {}  # filled when asked (``summaries``): workers never ask
        self._batch_prefix: str | None = None  # the reply subjects of batch gets (``direct_batch``)
        self._batch_tokens = itertools.count(1)
        self._batches: dict[str, tuple[list, dict, asyncio.Future]] = {}
        self._batch_subscribing = asyncio.Lock()
        # an expected host silent this long after submission is no_response (status.py), for jobs
        # stored without their own bound (``answer_by_ns``)
        self.silence_limit = float(cfg.api.server.job_timeout)

    # ------------------------------------------------------------ setup and handles

    async def setup(self, update_consumers: bool = False) -> None:
        """Missing streams, buckets and shared consumers; existing streams and buckets are never
        changed (a warning per differing setting, once per Store); ``update_consumers``: also
        rewrite existing consumers (workers)."""
        from osapi.job.setup import ensure_all

        self._kv = await ensure_all(self.js, self.cfg, update_consumers=update_consumers, warned=self._warned)

    def kv(self, role: str):
        """The KV handle for ``jobs``, ``responses``, ``registry``, ``idempotency`` or ``rollouts`` (made without a round trip)."""
        handle = self._kv.get(role)
        if handle is None:
            bucket = {
                "jobs": self.names.jobs_bucket,
                "responses": self.names.responses_bucket,
                "registry": self.names.registry_bucket,
                "idempotency": self.names.idempotency_bucket,
                "rollouts": self.names.rollouts_bucket,
                "fleet": self.names.fleet_bucket,
            }[role]
            handle = natsadapter.kv_handle(self.js, bucket, Names.kv_stream(bucket), direct=True)
            self._kv[role] = handle
        return handle

    def stream_of(self, role: str) -> str:
        """The stream that stores the bucket of ``role``."""
        return natsadapter.kv_stream(self.kv(role))

    def kv_prefix(self, role: str) -> str:
        """The subject prefix of the keys of ``role``'s bucket (``$KV.<bucket>.``)."""
        return natsadapter.kv_prefix(self.kv(role))

    def subject_of(self, role: str, key: str) -> str:
        return f"{self.kv_prefix(role)}{key}"

    # ------------------------------------------------------------ subject listings

    async def subjects(self, stream: str, subject_filter: str, offset: int = 0) -> tuple[dict[str, int], int]:
        """One page of the subjects matching a filter (server-sorted) and the total count."""
        import nats.js.errors as jse

        request: dict[str, Any] = {"subjects_filter": subject_filter}
        if offset:
            request["offset"] = offset
        msg = await self.nc.request(f"$JS.API.STREAM.INFO.{stream}", dumps(request), timeout=REQUEST_TIMEOUT)
        data = json.loads(msg.data)
        if "error" in data:
            raise jse.APIError.from_error(data["error"])
        found = (data.get("state") or {}).get("subjects") or {}
        return found, int(data.get("total", len(found)))

    async def all_subjects(self, stream: str, subject_filter: str, offset: int = 0) -> tuple[list[str], int]:
        """Every matching subject from ``offset`` on, in sorted order, and the total."""
        out: list[str] = []
        total = 0
        for _ in range(MAX_SUBJECT_PAGES):
            found, total = await self.subjects(stream, subject_filter, offset + len(out))
            out.extend(sorted(found))
            if not found or offset + len(out) >= total:
                break
        return out, total

    async def count_jobs(self) -> int:
        _, total = await self.subjects(self.stream_of("jobs"), self.subject_of("jobs", "jobs.>"), 1 << 40)
        return total

    async def all_job_ids(self) -> list[str]:
        """Every stored job id, oldest first."""
        prefix = self.subject_of("jobs", "jobs.")
        found, _ = await self.all_subjects(self.stream_of("jobs"), f"{prefix}>")
        return [s[len(prefix):] for s in found]

    async def newest_job_ids(self, offset: int, limit: int) -> tuple[list[str], int]:
        """Ids ``offset … offset+limit-1`` counted from the newest, and the total.

        Two subject listings: the total (no subjects returned), then the tail
        from the page's start. Cost grows with ``offset + limit``, not with the
        number of jobs stored.
        """
        stream, prefix = self.stream_of("jobs"), self.subject_of("jobs", "jobs.")
        total = await self.count_jobs()
        start = max(0, total - offset - limit)
        if offset >= total:
            return [], total
        tail, total_now = await self.all_subjects(stream, f"{prefix}>", start)
        ids = [s[len(prefix):] for s in tail]  # ascending, positions start … total_now-1
        # jobs created between the two listings move the newest end: slice by the newer total
        lo = max(0, total_now - offset - limit - start)
        hi = max(0, total_now - offset - start)
        return list(reversed(ids[lo:hi])), total_now

    # ------------------------------------------------------------ jobs

    async def put_job(self, job: dict) -> int:
        revision = await self.kv("jobs").create(f"jobs.{job['id']}", dumps(job))
        self._remember(job)
        return revision

    def _remember(self, job: dict) -> None:
        self._cache[job["id"]] = job
        self._cache.move_to_end(job["id"])
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def get_job(self, job_id: str) -> dict | None:
        import nats.js.errors as jse

        cached = self._cache.get(job_id)
        if cached is not None:
            return cached
        try:
            entry = await self.kv("jobs").get(f"jobs.{job_id}")
        except jse.KeyNotFoundError:
            return await self._job_from_leader(job_id)
        job = _loads(entry.value)
        if not isinstance(job, dict) or job.get("id") != job_id:
            return None
        self._remember(job)
        return job

    async def _job_from_leader(self, job_id: str) -> dict | None:
        """The job body as the stream leader has it: a miss of a direct get, confirmed.

        Direct gets are answered by any replica, and in a cluster a follower may
        not hold a body stored a moment ago (or, on a node just back, long ago).
        "No such job" decides things -- a worker skips or purges the job -- so it
        is only believed from the leader (``$JS.API.STREAM.MSG.GET``, leader-only).
        """
        import nats.js.errors as jse

        try:
            msg = await self.js.get_msg(self.stream_of("jobs"), subject=self.subject_of("jobs", f"jobs.{job_id}"))
        except jse.NotFoundError:
            return None
        if (msg.headers or {}).get("KV-Operation"):  # a delete or purge marker
            return None
        job = _loads(msg.data)
        if not isinstance(job, dict) or job.get("id") != job_id:
            return None
        self._remember(job)
        return job

    async def still_stored(self, job_id: str) -> bool:
        """Whether the job is still stored (not deleted or expired), without reading its body.

        A worker asks after answering, and the body of a broadcast lists every expected
        host (1,000 hosts: 12 KB read by each of them). Its ``submitted`` event, a few
        bytes written with the body and purged with it, says the same. A miss is
        believed only from the stream leader (``_job_from_leader``): a replica may lag.
        """
        got = await self.multi_last(self.stream_of("jobs"), [self.subject_of("jobs", f"status.{job_id}.{st.SUBMITTED}.>")])
        if got and any(not (msg.headers or {}).get("KV-Operation") for msg in got):
            return True
        self.forget(job_id)
        return await self._job_from_leader(job_id) is not None

    async def job_and_events(self, job_id: str, host: str | None = None) -> tuple[dict | None, list[st.Event]]:
        """The job body (read afresh) and its events: one batch request when the server answers it whole.

        ``host``: only that host's events and a failed submission's (``st.abandoned``), not
        every host's: each of N hosts of a broadcast reading all the others' events makes a
        broadcast cost O(N²) reads (docs/fleet-scale.md).
        """
        body = self.subject_of("jobs", f"jobs.{job_id}")
        if host is None:
            filters = [self.subject_of("jobs", f"status.{job_id}.>")]
        else:
            filters = [self.subject_of("jobs", f"status.{job_id}.*.{host}.*"),
                       self.subject_of("jobs", f"status.{job_id}.{st.FAILED}.{st.SUBMISSION_HOST}.*")]
        got = await self.multi_last(self.stream_of("jobs"), [body, *filters])
        if got is None:  # an older server, or more events than one batch returns
            self.forget(job_id)
            job, events = await asyncio.gather(self.get_job(job_id), self.events(job_id))
            return job, _of_host(events, host)
        job, subjects = None, []
        for msg in got:
            subject = msg.headers.get("Nats-Subject", "")
            if subject != body:
                subjects.append(subject)
                continue
            value = _loads(msg.data)  # a delete marker has no data
            if isinstance(value, dict) and value.get("id") == job_id:
                job = value
                self._remember(job)
        if job is None:  # from a replica that may lag: only the leader's answer decides (``_job_from_leader``)
            self.forget(job_id)
            job = await self._job_from_leader(job_id)
            if job is not None:
                return job, _of_host(await self.events(job_id), host)
        return job, self._parse_events(subjects, job_id)

    async def get_jobs(self, ids: Iterable[str]) -> dict[str, dict]:
        """Bodies of ``ids`` (missing ones left out): from the cache, else in batches of ``KEY_CHUNK``."""
        ids = list(ids)
        out = {i: self._cache[i] for i in ids if i in self._cache}
        missing = [i for i in ids if i not in out]
        if missing:
            pre = self.subject_of("jobs", "jobs.")
            found = await self.multi_values(self.stream_of("jobs"), [f"{pre}{i}" for i in missing],
                                            lambda subject: self.get_job(subject[len(pre):]))
            for subject, data in found.items():
                job = _loads(data) if isinstance(data, (bytes, bytearray)) else data
                if isinstance(job, dict) and job.get("id") == subject[len(pre):]:
                    self._remember(job)
                    out[job["id"]] = job
        return out

    async def summaries(self, ids: list[str]) -> dict[str, st.Summary]:
        """``Summary`` of every job in ``ids`` -- *all* stored ids: the cache is pruned to them.

        Missing summaries are read with the bodies: key by key when few, else
        every body in batches of 1,000 (bodies are not kept: only summaries).
        After such a bulk read, a job still missing is gone (deleted meanwhile):
        nothing is read one by one.
        """
        for i in ids:  # bodies read since the last call (``_remember`` leaves the summary to here)
            if i not in self._summaries and i in self._cache:
                self._summaries[i] = st.summarize(self._cache[i], self.silence_limit)
        missing = [i for i in ids if i not in self._summaries]
        if len(missing) > BULK_THRESHOLD:
            try:
                await self._load_all_summaries()
                missing = []
            except Exception as exc:  # noqa: BLE001 - a server without batch gets: read them below
                log.debug("batch get of jobs failed (%s); reading them one by one", exc)
        if missing:
            for i, job in (await self.get_jobs(missing)).items():
                self._summaries[i] = st.summarize(job, self.silence_limit)
        wanted = set(ids)  # drops jobs that expired or were deleted (by any process) since the last call
        self._summaries = {i: s for i, s in self._summaries.items() if i in wanted}
        return self._summaries

    async def _load_all_summaries(self) -> None:
        """A ``Summary`` of every stored job, 1000 bodies a request (JetStream batch direct get)."""
        pre = self.subject_of("jobs", "jobs.")
        async for subject, data in self.batch_get(self.stream_of("jobs"), f"{pre}>"):
            job = _loads(data)
            if isinstance(job, dict) and job.get("id") == subject[len(pre):]:
                self._summaries[job["id"]] = st.summarize(job, self.silence_limit)

    async def direct_batch(self, stream: str, request: dict) -> tuple[list, dict]:
        """One JetStream batch direct get (server 2.11+): the messages and the end-of-batch headers.

        The replies come to one wildcard subscription per ``Store`` (``_batch_replies``), each
        request under its own token: a subscription per request would cost a SUB and an
        UNSUB, each propagated to every cluster node, for every read (a broadcast to N hosts:
        2N interest changes on every node).
        """
        replies = await self._batch_replies()
        token = str(next(self._batch_tokens))
        got: list = []
        end: dict = {}
        done = asyncio.get_running_loop().create_future()
        self._batches[token] = (got, end, done)
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", dumps(request), reply=f"{replies}.{token}")
            await asyncio.wait_for(done, REQUEST_TIMEOUT)
        finally:
            self._batches.pop(token, None)
        return got, end

    async def _batch_replies(self) -> str:
        """The subject prefix the batch replies come to (subscribed once; nats-py renews it on reconnect)."""
        if self._batch_prefix is None:
            async with self._batch_subscribing:  # concurrent first reads: one subscription, not one each
                if self._batch_prefix is None:
                    await self._subscribe_batch_replies()
        return self._batch_prefix

    async def _subscribe_batch_replies(self) -> None:
        prefix = self.nc.new_inbox()

        async def on_msg(msg) -> None:
            waiting = self._batches.get(msg.subject[len(prefix) + 1:])
            if waiting is None:  # a batch given up (timed out): its late messages are dropped
                return
            got, end, done = waiting
            headers = msg.headers or {}
            if not msg.data and "Status" in headers:
                end.update(headers)
                if not done.done():
                    done.set_result(None)
            else:
                got.append(msg)

        await self.nc.subscribe(f"{prefix}.*", cb=on_msg)
        self._batch_prefix = prefix

    async def batch_get(self, stream: str, subject_filter: str, batch: int = 1000, sequences: bool = False):
        """Yield ``(subject, data)`` of every message matching a filter, oldest first
        (``sequences``: ``(subject, data, stream sequence)``)."""
        seq = 1
        for _ in range(MAX_SUBJECT_PAGES):
            got, end = await self.direct_batch(stream, {"seq": seq, "next_by_subj": subject_filter, "batch": batch})
            for msg in got:
                subject = msg.headers.get("Nats-Subject", "")
                if sequences:
                    yield subject, msg.data, int(msg.headers.get("Nats-Sequence") or 0)
                else:
                    yield subject, msg.data
            if end.get("Status") != "204" or not got or end.get("Nats-Num-Pending") == "0":
                return
            seq = int(got[-1].headers["Nats-Sequence"]) + 1

    async def multi_get(self, stream: str, subjects: list[str]) -> dict[str, bytes] | None:
        """Every message on ``subjects`` (wildcards allowed) in one request; None if it cannot say all.

        JetStream refuses more than about a thousand results at once (413):
        callers then fall back to one request per key.
        """
        got = await self.multi_last(stream, subjects)
        return None if got is None else {msg.headers.get("Nats-Subject", ""): msg.data for msg in got}

    async def multi_last(self, stream: str, subjects: list[str]) -> list | None:
        """``multi_get`` as messages, headers included (``Nats-Subject``, ``Nats-Sequence``, ``Nats-Time-Stamp``)."""
        if not subjects:
            return []
        try:
            got, end = await self.direct_batch(stream, {"multi_last": subjects, "batch": MULTI_MAX})
        except asyncio.TimeoutError:
            return None
        status = end.get("Status")
        if status == "404" and not got:
            return []
        if status != "204" or end.get("Nats-Num-Pending", "0") != "0":
            return None
        return got

    async def multi_values(self, stream: str, subjects: list[str], one_by_one, chunk: int = KEY_CHUNK) -> dict:
        """``{subject: data}`` for exact ``subjects``, ``chunk`` a batch request, all chunks at once.

        A chunk the server cannot answer in one batch (an older server, too many
        results) is read with ``one_by_one(subject)`` per subject (its result,
        or None when the key does not exist, becomes the value).
        """
        chunks = [subjects[i:i + chunk] for i in range(0, len(subjects), chunk)]
        found = await asyncio.gather(*(self.multi_get(stream, c) for c in chunks))
        out: dict = {}
        fallback: list[str] = []
        for part, got in zip(chunks, found):
            if got is None:
                fallback.extend(part)
            else:
                out.update(got)
        if fallback:
            values = await _gather_bounded([one_by_one(s) for s in fallback])
            out.update({s: v for s, v in zip(fallback, values) if v is not None})
        return out

    def forget(self, job_id: str) -> None:
        self._cache.pop(job_id, None)
        self._summaries.pop(job_id, None)

    async def publish_job(self, subject: str, job_id: str, per_subject: bool = False) -> int:
        """Announce a job (deduplicated by id; ``per_subject``: by id and subject, for a job sent to
        several host subjects)."""
        msg_id = f"{job_id}:{subject}" if per_subject else job_id
        ack = await self.js.publish(subject, job_id.encode(), headers={"Nats-Msg-Id": msg_id})
        return ack.seq

    # ------------------------------------------------------------ events

    async def add_event(self, job_id: str, event: str, host: str, **details: Any) -> int:
        nanos = time.time_ns()
        await self.kv("jobs").put(st.event_key(job_id, event, host, nanos), dumps(details))
        return nanos

    async def events(self, job_id: str) -> list[st.Event]:
        found, _ = await self.subjects(self.stream_of("jobs"), self.subject_of("jobs", f"status.{job_id}.>"))
        return self._parse_events(found, job_id)

    def _parse_events(self, subjects: Iterable[str], job_id: str | None = None) -> list[st.Event]:
        pre = len(self.kv_prefix("jobs"))
        out = []
        for subject in subjects:
            parsed = st.parse_event_key(subject[pre:])
            if parsed and (job_id is None or parsed[0] == job_id):
                out.append(parsed[1])
        return out

    async def all_events(self) -> dict[str, list[st.Event]]:
        """Every job's events from one subject listing (status filters and statistics)."""
        found, _ = await self.all_subjects(self.stream_of("jobs"), self.subject_of("jobs", "status.>"))
        pre = len(self.kv_prefix("jobs"))
        out: dict[str, list[st.Event]] = {}
        for subject in found:
            parsed = st.parse_event_key(subject[pre:])
            if parsed:
                out.setdefault(parsed[0], []).append(parsed[1])
        return out

    # ------------------------------------------------------------ responses

    async def put_response(self, job_id: str, host: str, record: dict) -> None:
        await self.kv("responses").put(f"{job_id}.{host}", dumps(record))

    async def create_response(self, job_id: str, host: str, record: dict) -> bool:
        """Write a response only if the host has none yet; False when it has (it answered meanwhile)."""
        import nats.js.errors as jse

        try:
            await self.kv("responses").create(f"{job_id}.{host}", dumps(record))
        except jse.KeyWrongLastSequenceError:
            return False
        return True

    async def response(self, job_id: str, host: str) -> dict | None:
        import nats.js.errors as jse

        try:
            entry = await self.kv("responses").get(f"{job_id}.{host}")
        except jse.KeyNotFoundError:
            return None
        return json.loads(entry.value)

    async def responses(self, job_id: str, hosts: Iterable[str] | None = None) -> dict[str, dict]:
        """Responses of a job: of ``hosts`` if given, else of every host that answered."""
        if hosts is None:
            prefix = self.subject_of("responses", f"{job_id}.")
            found, _ = await self.all_subjects(self.stream_of("responses"), f"{prefix}>")
            hosts = [s[len(prefix):] for s in found]
        hosts = list(hosts)
        found = await _gather_bounded([self.response(job_id, h) for h in hosts])
        return {h: r for h, r in zip(hosts, found) if r is not None}

    # ------------------------------------------------------------ whole jobs

    async def events_of(self, ids: list[str]) -> dict[str, list[st.Event]]:
        """Events of several jobs: batch requests of ``EVENT_CHUNK`` jobs (all at once); a chunk
        with more events than one batch returns (big broadcasts) is listed job by job."""
        stream = self.stream_of("jobs")
        chunks = [ids[i:i + EVENT_CHUNK] for i in range(0, len(ids), EVENT_CHUNK)]
        found = await asyncio.gather(*(self.multi_get(stream, [self.subject_of("jobs", f"status.{i}.>") for i in c])
                                       for c in chunks))
        out: dict[str, list[st.Event]] = {i: [] for i in ids}
        fallback: list[str] = []
        pre = len(self.kv_prefix("jobs"))
        for chunk, got in zip(chunks, found):
            if got is None:
                fallback.extend(chunk)
                continue
            for job_id, event in filter(None, (st.parse_event_key(k[pre:]) for k in got)):
                if job_id in out:
                    out[job_id].append(event)
        if fallback:
            listed = await _gather_bounded([self.events(i) for i in fallback])
            out.update(zip(fallback, listed))
        return out

    async def responses_of(self, wanted: list[tuple[str, str]]) -> dict[str, dict[str, dict]]:
        """Responses for (job id, host) pairs, in batch requests (``multi_values``)."""
        out: dict[str, dict[str, dict]] = {}
        pre = self.subject_of("responses", "")
        subjects = [f"{pre}{i}.{h}" for i, h in wanted]

        async def one(subject: str):
            job_id, _, host = subject[len(pre):].partition(".")
            return await self.response(job_id, host)

        found = await self.multi_values(self.stream_of("responses"), subjects, one)
        for (job_id, host), subject in zip(wanted, subjects):
            value = found.get(subject)
            value = _loads(value) if isinstance(value, (bytes, bytearray)) else value
            if isinstance(value, dict):
                out.setdefault(job_id, {})[host] = value
        return out

    async def views(self, ids: list[str]) -> dict[str, dict]:
        """Job objects (docs/api.md, Envelopes) for ``ids``; missing jobs are left out."""
        jobs, events = await asyncio.gather(self.get_jobs(ids), self.events_of(ids))
        # hosts with a final event have written their response first: fetch exactly those
        wanted = [(i, h) for i in ids if i in jobs
                  for h, e in st.last_per_host(events.get(i, ())).items() if e.event in st.FINAL]
        responses = await self.responses_of(wanted)
        now = time.time_ns()
        return {i: st.job_view(jobs[i], events.get(i, []), responses.get(i, {}), now, self.silence_limit)
                for i in ids if i in jobs}

    async def view(self, job_id: str) -> dict | None:
        return (await self.views([job_id])).get(job_id)

    async def full(self) -> str | None:
        """Why the job store is full (a bucket at ``job.kv.max_bytes``, less a small margin), or None."""
        buckets = (self.names.jobs_bucket, self.names.responses_bucket)
        infos = await asyncio.gather(*(self.js.stream_info(Names.kv_stream(b)) for b in buckets))
        full = [f"bucket {bucket} holds {info.state.bytes} of {info.config.max_bytes} bytes"
                for bucket, info in zip(buckets, infos)
                if (info.config.max_bytes or 0) > 0
                and info.state.bytes >= info.config.max_bytes - full_margin(info.config.max_bytes)]
        if not full:
            return None
        return (f"job store full: {'; '.join(full)} (job.kv.max_bytes): new jobs are refused and workers "
                "start none until old jobs expire (job.kv.ttl) or are deleted, or job.kv.max_bytes is raised")

    async def purge_job(self, job_id: str) -> None:
        """Remove the job, its events and its responses, leaving no delete markers."""
        self.forget(job_id)
        await asyncio.gather(
            self.js.purge_stream(self.stream_of("jobs"), subject=self.subject_of("jobs", f"jobs.{job_id}")),
            self.js.purge_stream(self.stream_of("jobs"), subject=self.subject_of("jobs", f"status.{job_id}.>")),
            self.js.purge_stream(self.stream_of("responses"), subject=self.subject_of("responses", f"{job_id}.>")),
        )


def full_margin(max_bytes: int) -> int:
    """Free bytes below which a bucket counts as full: room for a job or a few events at most."""
    return min(max_bytes // 10, max(1024, max_bytes // 100))


async def _gather_bounded(coros: list, limit: int = 256) -> list:
    """``asyncio.gather`` with at most ``limit`` requests in flight."""
    if len(coros) <= limit:
        return list(await asyncio.gather(*coros))
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


def _of_host(events: list[st.Event], host: str | None) -> list[st.Event]:
    """``events`` of ``host`` and a failed submission's (``Store.job_and_events``); all of them for None."""
    if host is None:
        return events
    return [e for e in events if e.host == host or (e.host == st.SUBMISSION_HOST and e.event == st.FAILED)]
