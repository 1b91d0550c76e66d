"""Liveness, readiness, status, version and the OpenAPI document.

``/health`` answers as long as the process serves HTTP. ``/health/ready`` is
what a load balancer asks: NATS connected and the job bucket reachable.
``/health/status`` (read scope) tells an operator why: each component, the
version, the API's uptime and the queue counts.
"""

from __future__ import annotations

import time

from osapi import __version__
from osapi.api import schemas
from osapi.api.errors import ApiError
from osapi.api.routing import Call, Reply, Response, Route

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
    jobs = None
    if kv["status"] == "ok":
        try:
            jobs = call.services.bridge.call(lambda client: client.stats(), CHECK_TIMEOUT + 2)
        except Exception:  # counts are a nice-to-have here; the components say what is wrong
            jobs = None
    healthy = nats["status"] == "ok" and kv["status"] == "ok"
    body = {
        "status": "ok" if healthy else "degraded",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - call.services.started, 3),
        "components": {"nats": nats, "kv": kv},
        "jobs": jobs,
    }
    return Reply(200 if healthy else 503, body)


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
              responses={200: Response("ready", schemas.READY), 503: Response("not ready", schemas.READY)},
              operation_id="health_ready"),
        Route("GET", "/health/status", status, "components, version, uptime and job counts", TAG, "read",
              prefix="",
              responses={200: Response("every component ok", schemas.HEALTH_STATUS),
                         503: Response("a component is not ok", schemas.HEALTH_STATUS),
                         **err(401, 403)},
              operation_id="health_status"),
        Route("GET", "/version", version, "the server's version", "meta", None,
              responses={200: Response("the version", schemas.VERSION)}, operation_id="version"),
        Route("GET", "/openapi.json", openapi, "this document", "meta", None,
              responses={200: Response("the OpenAPI 3.1 document", {"type": "object"})},
              operation_id="openapi"),
    ]
