"""Liveness, readiness, status, version and the OpenAPI document.

``/health`` answers as long as the process serves HTTP. ``/health/ready`` is
what a load balancer asks: NATS connected and the job bucket reachable.
``/health/status`` (read scope) tells an operator why: each component, the
version, the API's uptime and the queue counts. ``components.kv`` is also
``error`` when the job store is full (a bucket within a small margin of
``job.kv.max_bytes``, from its stream info): jobs are refused then.

``jobs`` is always an object (the counts of ``GET /api/v1/jobs/status``) with
``stale``: ``false`` when counted just now. When they cannot be counted (NATS
or the job bucket away, or the count failed), ``stale: true``, ``error`` (why)
and ``as_of`` (when they were last counted): the last counts this API process
got (from either endpoint), or zeros with ``as_of: null`` if it never got any.
"""

from __future__ import annotations

import time

from osapi import __version__
from osapi.api import schemas
from osapi.api.errors import ApiError
from osapi.api.routing import Call, Reply, Response, Route
from osapi.job.status import STATUSES, rfc3339

CHECK_TIMEOUT = 3.0  # seconds one readiness probe may take
TAG = "health"


def _kv_check(call: Call) -> dict:
    """The job bucket's component entry: ``{status: ok|error, bucket, error?}``."""
    bucket = call.services.cfg.job.kv_bucket

    async def probe(nc):
        js = nc.jetstream(timeout=CHECK_TIMEOUT)
        await js.key_value(bucket)

    try:
        call.services.bridge.call_raw(probe, CHECK_TIMEOUT + 1)
    except ApiError as exc:
        return {"status": "error", "bucket": bucket, "error": exc.details or exc.error}
    except Exception as exc:  # bucket missing, JetStream off, timeout
        return {"status": "error", "bucket": bucket, "error": f"{type(exc).__name__}: {exc}".rstrip(": ")}
    return {"status": "ok", "bucket": bucket}


def _full_check(call: Call) -> str | None:
    """Why the job store is full (a bucket at ``job.kv.max_bytes``), None if not or when it cannot tell."""
    try:
        return call.services.bridge.call(lambda client: client.store_full(), CHECK_TIMEOUT + 1)
    except Exception:  # noqa: BLE001 - the other checks say what is wrong with NATS
        return None


def _nats_check(call: Call) -> dict:
    bridge = call.services.bridge
    if bridge.connected:
        return {"status": "ok", "url": bridge.connected_url or ", ".join(bridge.urls)}
    return {"status": "error", "url": ", ".join(bridge.urls), "error": bridge.problem()}


def health(call: Call) -> Reply:
    return Reply(200, {"status": "ok"})


def ready(call: Call) -> Reply:
    nats = _nats_check(call)
    if nats["status"] != "ok":
        return Reply(503, {"status": "not_ready", "error": nats["error"]})
    kv = _kv_check(call)
    if kv["status"] != "ok":
        return Reply(503, {"status": "not_ready", "error": f"job bucket {kv['bucket']}: {kv['error']}"})
    return Reply(200, {"status": "ready"})


def status(call: Call) -> Reply:
    nats = _nats_check(call)
    kv = _kv_check(call) if nats["status"] == "ok" else {
        "status": "error", "bucket": call.services.cfg.job.kv_bucket, "error": "NATS is not connected"}
    if kv["status"] == "ok":
        full = _full_check(call)
        if full:
            kv = {**kv, "status": "error", "error": full}
    if kv["status"] == "ok":
        try:
            counts = call.services.bridge.call(lambda client: client.stats(), CHECK_TIMEOUT + 2)
            remember_job_stats(call, counts)
            jobs = {**counts, "stale": False}
        except Exception as exc:  # counts are a nice-to-have here; the components say what is wrong
            why = (exc.details or exc.error) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            jobs = _last_known(call, f"cannot count the jobs: {why}")
    else:
        jobs = _last_known(call, f"job bucket {kv['bucket']}: {kv['error']}")
    healthy = nats["status"] == "ok" and kv["status"] == "ok"
    body = {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - call.services.started, 3),
        "components": {"nats": nats, "kv": kv},
        "jobs": jobs,
    }
    return Reply(200 if healthy else 503, body)


def remember_job_stats(call: Call, counts: dict) -> None:
    """Keep the latest queue counts: ``/health/status`` shows them (stale) while NATS is away."""
    call.services.last_job_stats = (time.time_ns(), counts)


def _last_known(call: Call, error: str) -> dict:
    last = call.services.last_job_stats
    if last is None:
        zeros = {"total_jobs": 0, "status_counts": {s: 0 for s in STATUSES}, "operation_counts": {}, "dlq_count": 0}
        return {**zeros, "stale": True, "as_of": None, "error": error}
    at, counts = last
    return {**counts, "stale": True, "as_of": rfc3339(at), "error": error}


def version(call: Call) -> Reply:
    return Reply(200, {"version": __version__})


def openapi(call: Call) -> Reply:
    return Reply(200, call.services.openapi())


def routes() -> list[Route]:
    err = schemas.error_responses
    return [
        Route("GET", "/health", health, "liveness: the process serves HTTP", TAG, None, prefix="",
              responses={200: Response("alive", schemas.HEALTH)}, operation_id="health"),
        Route("GET", "/health/ready", ready, "readiness: NATS connected and the job bucket reachable", TAG, None,
              prefix="",
              responses={200: Response("ready", schemas.READY), 503: Response("not ready", schemas.NOT_READY)},
              operation_id="health_ready"),
        Route("GET", "/health/status", status, "components, version, uptime and job counts", TAG, "read",
              prefix="",
              description="200 when NATS and the job bucket are ok, else 503 with status `degraded` and the "
                          "component's `error`; a full job store (a bucket at `job.kv.max_bytes`) makes `kv` an "
                          "error too. `jobs` is always an object: the counts of "
                          "`GET /api/v1/jobs/status` with `stale: false`, or, when they cannot be counted, "
                          "the last counts this API process got (zeros if none) with `stale: true`, `as_of` "
                          "(when they were taken, null for zeros) and `error`.",
              responses={200: Response("every component ok", schemas.with_status(schemas.HEALTH_STATUS, "ok")),
                         503: Response("a component is not ok",
                                       schemas.with_status(schemas.HEALTH_STATUS, "degraded")),
                         **err(401, 403)},
              operation_id="health_status"),
        Route("GET", "/version", version, "the server's version", "meta", None,
              responses={200: Response("the version", schemas.VERSION)}, operation_id="version"),
        Route("GET", "/openapi.json", openapi, "this document", "meta", None,
              responses={200: Response("the OpenAPI 3.1 document", {"type": "object"})},
              operation_id="openapi"),
    ]
