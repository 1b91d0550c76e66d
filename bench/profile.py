"""Where the milliseconds of one synchronous call go: a per-stage profile.

``GET /api/v1/system/hostname`` to one host crosses four processes (the HTTP
client, the API, nats-server, the worker). Each stage is measured on its own,
with osapi's own code on a real appliance (nats-server, API and one worker
from the source tree), ``count`` times, p50 each:

* HTTP: a new connection, ``GET /health`` (parse, route, reply; no token, no NATS);
* auth: validating the bearer token (in this process);
* thread hop: ``NatsBridge.call`` of a coroutine that does nothing (a Waitress
  thread hands work to the NATS loop and gets the answer back);
* registry read, job write, ``submitted`` event write, notification publish:
  one request each on the API's ``Store`` / ``Registry``, one after the other;
  "submission" is ``JobClient._submit`` as it runs (what of that is overlapped);
* worker, notification → job read: from the notification's ack to the worker's
  ``acknowledged`` event (delivery of the pull, the job read), same clock;
* worker, job read → result seen: from that event to the response reaching the
  caller (start events, provider, response write, wake-up);
* provider alone: ``system.hostname.get`` in a thread pool, as the worker runs it;
* ``JobClient.run`` on the loop, the same through the bridge, and the whole
  HTTP call (a connection each): the end-to-end figures the stages add up to.

The stages of one call are not all sequential (the registry read overlaps the
submission), so the sum is an upper bound; the differences between the
end-to-end figures show what HTTP, auth and the hop add.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from concurrent.futures import ThreadPoolExecutor

from bench.report import Section
from bench.stats import ms, percentile

TITLE = "Hot path profile"
PATH = "/api/v1/system/hostname"


def _http(port: int, path: str, token: str | None) -> float:
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - start
    if resp.status != 200:
        raise RuntimeError(f"GET {path} answered {resp.status}")
    return elapsed


async def _noop(_client) -> None:
    return None


async def _job_stages(client, hostname: str, count: int) -> dict[str, list[float]]:
    """Stage times of submissions on the API's own client (seconds)."""
    from osapi.domain import operations
    from osapi.job import status as st
    from osapi.job.client import JobRequest
    from osapi.domain.ids import new_job_id
    from osapi.domain.subjects import parse_target, subject_for

    store = client.store
    out: dict[str, list[float]] = {k: [] for k in (
        "registry", "job write", "event write", "notify", "submission",
        "worker: notification → job read", "worker: job read → result seen", "run")}
    op = operations.get("system.hostname.get")
    target = parse_target(hostname)
    nowhere = parse_target("profile-nobody")  # a host no worker serves: nothing runs these
    request = JobRequest.of(op, {}, target)  # as the API's handler hands it over, parsed once
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        await client._expected_hosts(target)
        out["registry"].append(clock() - start)

        job_id = new_job_id()
        job = {"id": job_id, "created_ns": time.time_ns(), "target_hostname": nowhere.text, "broadcast": False,
               "operation": {"type": op.type, "data": {}}, "kind": op.kind}
        start = clock()
        await store.put_job(job)
        out["job write"].append(clock() - start)
        start = clock()
        await store.add_event(job_id, st.SUBMITTED, st.target_token(nowhere.text))
        out["event write"].append(clock() - start)
        subject = subject_for(op.kind, nowhere, store.names.prefix)
        start = clock()
        await store.publish_job(subject, job_id)
        out["notify"].append(clock() - start)
        await store.purge_job(job_id)
        await store.js.purge_stream(store.names.stream, subject=subject)

        # a real job: the submission, then the worker's part split at its `acknowledged` event
        job_id = new_job_id()
        prefix = store.subject_of("responses", f"{job_id}.")
        sub = await client.nc.subscribe(f"{prefix}>")
        try:
            start = clock()
            await client._submit_shielded(job_id, op, {}, target, set(), None)
            submitted, submitted_ns = clock(), time.time_ns()
            await sub.next_msg(timeout=30)
            seen_ns = time.time_ns()
            out["submission"].append(submitted - start)
        finally:
            await sub.unsubscribe()
        events = await store.events(job_id)
        acked = [e.nanos for e in events if e.event == st.ACKNOWLEDGED]
        if acked:
            out["worker: notification → job read"].append(max(0, acked[0] - submitted_ns) / 1e9)
            out["worker: job read → result seen"].append(max(0, seen_ns - acked[0]) / 1e9)

        start = clock()
        await client.run(request, 30.0, 5.0)
        out["run"].append(clock() - start)
    return out


def _provider(count: int) -> list[float]:
    from osapi.domain import operations

    op = operations.get("system.hostname.get")
    context = operations.HostContext("bench-host", {}, None)
    times = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        loop = asyncio.new_event_loop()
        try:
            for _ in range(count):
                start = time.perf_counter()
                loop.run_until_complete(loop.run_in_executor(pool, op.run, {}, context))
                times.append(time.perf_counter() - start)
        finally:
            loop.close()
    return times


def profile(app, count: int) -> list[tuple[str, list[float]]]:
    """``[(stage, times)]`` on a running appliance ``app`` (source mode: its env names NATS)."""
    from osapi import config
    from osapi.api.auth import Authenticator
    from osapi.api.bridge import NatsBridge
    from osapi.job.client import JobClient

    cfg = config.load(environ=app.env())
    bridge = NatsBridge(cfg, name="osapi-bench-profile").start()
    try:
        deadline = time.monotonic() + 30
        while not bridge.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if not bridge.connected:
            raise RuntimeError(f"the bench's bridge did not connect: {bridge.problem()}")
        stages: list[tuple[str, list[float]]] = []
        stages.append(("HTTP: new connection, GET /health", [_http(app.api_port, "/health", None)
                                                             for _ in range(count)]))
        auth = Authenticator(app.signing_key)
        header = f"Bearer {app.token}"
        times = []
        for _ in range(count):
            start = time.perf_counter()
            auth.claims(header)
            times.append(time.perf_counter() - start)
        stages.append(("auth: bearer token validated", times))
        times = []
        for _ in range(count):
            start = time.perf_counter()
            bridge.call(_noop, 30)
            times.append(time.perf_counter() - start)
        stages.append(("thread hop: Waitress thread → NATS loop → back", times))
        jobs = bridge.call(lambda client: _job_stages(client, app.hostname, count), 30 + 60 * count)
        for name in ("registry", "job write", "event write", "notify", "submission",
                     "worker: notification → job read", "worker: job read → result seen"):
            label = {"registry": "registry read (one-host target)", "job write": "job write (KV create)",
                     "event write": "`submitted` event write (KV put)",
                     "notify": "notification publish (stream, acked)",
                     "submission": "submission as `_submit` runs it (job, event, notification)"}.get(name, name)
            stages.append((label, jobs[name]))
        stages.append(("provider alone (thread pool)", _provider(count)))
        stages.append(("`JobClient.run` on the NATS loop", jobs["run"]))
        times = []
        request = JobClient.prepare({"type": "system.hostname.get", "data": {}}, app.hostname)
        for _ in range(count):
            start = time.perf_counter()
            bridge.call(lambda client: client.run(request, 30.0, 5.0), 60)
            times.append(time.perf_counter() - start)
        stages.append(("`JobClient.run` through the bridge (hop included)", times))
        stages.append((f"whole call: `GET {PATH}`, a connection each",
                       [_http(app.api_port, PATH, app.token) for _ in range(count)]))
        return stages
    finally:
        bridge.close()


def run(ctx) -> Section:
    section = Section("profile", TITLE)
    count = ctx.count(200, 20)
    with ctx.appliance("profile", mode="source") as app:
        # warm-up: the first calls pay one-time costs (imports, consumer binds)
        for _ in range(5):
            app.request("GET", PATH)
        stages = profile(app, count)
    for name, times in stages:
        if not times:
            section.add(name, None, "ms")
            continue
        section.add(f"{name}: p50", ms(percentile(times, 50)), "ms")
    p50 = {name: ms(percentile(times, 50)) for name, times in stages if times}
    parts = [p50.get(k, 0.0) for k in p50 if k.startswith(("submission", "worker:"))]
    run_ms = p50.get("`JobClient.run` on the NATS loop", 0.0)
    bridged = p50.get("`JobClient.run` through the bridge (hop included)", 0.0)
    whole = next((v for k, v in p50.items() if k.startswith("whole call")), 0.0)
    section.note(f"{count} of each, one after the other, p50; the stages are the rows above "
                 "(bench/profile.py says what each covers); the API, the worker and nats-server "
                 "started from the source tree")
    section.note(f"on the NATS loop: submission + the worker's two parts = {sum(parts):.2f} ms of "
                 f"`JobClient.run`'s {run_ms:.2f} ms; HTTP, auth, validation and Waitress's threads add "
                 f"{whole - bridged:.2f} ms (the whole call minus `JobClient.run` through the bridge)")
    return section
