"""Synchronous domain endpoints, generated from the operations table.

An ``OperationRoute`` says which operation type a method + path runs and where
the operation's data comes from (path parameters, and for PUT/POST the JSON
body). ``routes()`` turns a list of them into ordinary ``Route``s whose handler
validates the data with the operation's own validator
(``osapi.job.operations``), checks the target, submits the job and waits for
the workers with ``JobClient.run`` -- the API never runs a provider itself.
Adding an endpoint for a new operation is one ``OperationRoute`` line.

``target_hostname`` is a query parameter on every domain route, and only there: a
body field of that name is refused (400), so the OpenAPI document can describe
every accepted request exactly.

A synchronous call holds a Waitress thread while it waits, up to ``job_timeout``
when a host hangs. ``WaitSlots`` bounds how many wait at once (``MAX_SYNC_WAITS``);
one more is refused at once with 503 and ``Retry-After`` (``server.py`` keeps
threads beyond that bound for every other request).
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
from dataclasses import dataclass
from typing import Callable

from osapi.api import schemas
from osapi.api.errors import ApiError, bad_request
from osapi.api.routing import TARGET_PARAM, Call, Reply, Response, Route
from osapi.job import operations

SYNC_MARGIN = 10.0  # seconds the bridge waits beyond job_timeout before giving up itself
MAX_SYNC_WAITS = 256  # synchronous calls waiting for workers at once; see server.py THREADS
RETRY_AFTER = 5  # seconds, the Retry-After of a call refused because MAX_SYNC_WAITS are waiting


class WaitSlots:
    """At most ``limit`` synchronous calls waiting for workers at once; one more is a 503 at once."""

    def __init__(self, limit: int = MAX_SYNC_WAITS):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit) if limit > 0 else None

    @contextlib.contextmanager
    def slot(self):
        if self._free is None or not self._free.acquire(blocking=False):
            raise ApiError(
                503, "too many synchronous calls waiting",
                f"{self.limit} synchronous calls are already waiting for workers; retry after "
                f"{RETRY_AFTER}s, or submit the job with POST /api/v1/jobs and read GET /api/v1/jobs/{{job_id}}",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        try:
            yield
        finally:
            self._free.release()


@dataclass(frozen=True)
class OperationRoute:
    method: str
    path: str
    op_type: str
    summary: str
    tag: str
    scope: str = "read"
    status: int = 200
    # ok result item -> what the endpoint returns for it (e.g. add status: ok)
    shape_result: Callable[[dict], dict] | None = None
    result_extra: dict | None = None  # extra properties in the documented ok item


def mark_ok(item: dict) -> dict:
    """Modify endpoints report ``status: ok|failed`` per host."""
    if item.get("status") != "failed":
        item = {"hostname": item.get("hostname"), "status": "ok", **{k: v for k, v in item.items() if k != "hostname"}}
    return item


def build_routes(specs: list[OperationRoute]) -> list[Route]:
    return [_route(spec) for spec in specs]


def _route(spec: OperationRoute) -> Route:
    op = operations.get(spec.op_type)
    has_body = spec.method in ("PUT", "POST")
    path_fields = re.findall(r"\{(\w+)\}", spec.path)

    def handler(call: Call) -> Reply:
        return _run(call, spec, op, has_body)

    body_schema = None
    if has_body:
        body_schema = copy.deepcopy(op.data_schema)
        body_schema.setdefault("properties", {})
        for name in path_fields:
            body_schema["properties"].pop(name, None)
        body_schema["additionalProperties"] = False
    return Route(
        method=spec.method,
        path=spec.path,
        handler=handler,
        summary=spec.summary,
        tag=spec.tag,
        scope=spec.scope,
        query=(TARGET_PARAM,),
        body=body_schema,
        body_description=f"the data of `{op.type}`; the target is the `target_hostname` query parameter",
        responses={
            spec.status: Response(
                f"one result per responding worker (`{op.type}`)",
                schemas.sync_result(op.result_schema, spec.result_extra),
            ),
            **schemas.error_responses(400, 401, 403, 503, 504),
            503: Response(f"NATS is not reachable, or {MAX_SYNC_WAITS} synchronous calls are already waiting "
                          "for workers (`too many synchronous calls waiting`, with a `Retry-After` header)",
                          schemas.ref("Error")),
            404: Response("no live worker matches the target (registry); `job_id` names the job, which stays "
                          "queued for a host that may come", schemas.ref("Error")),
        },
        description=f"Runs the `{op.type}` job ({op.kind}) on the target and waits for its workers: {op.summary}.",
        operation_id=op.type.replace(".", "_"),
    )


def _run(call: Call, spec: OperationRoute, op, has_body: bool) -> Reply:
    data: dict = dict(call.path)
    target = call.query["target_hostname"]
    if has_body:
        body = dict(call.body_object())
        if "target_hostname" in body:
            raise bad_request("unexpected field target_hostname in the request body",
                              "give the target as the query parameter: ?target_hostname=…")
        for name in data:
            if name in body:
                raise bad_request(f"unexpected field {name} in the request body",
                                  f"{name} is part of the path")
        data.update(body)
    try:
        data = op.check(data)
    except operations.InvalidData as exc:
        raise bad_request(f"invalid data for {op.type}", str(exc)) from None

    settings = call.services.settings
    with call.services.wait_slots.slot():
        result = call.services.bridge.call(
            # a job nobody picked up before its caller gave up must not run later (JobClient.run)
            lambda client: client.run(op.type, data, target, settings.job_timeout, settings.quiet_period,
                                      expires_after=settings.job_timeout + client.SYNC_EXPIRY_MARGIN),
            settings.job_timeout + SYNC_MARGIN,
            on_timeout=ApiError(504, "no worker answered in time",
                                f"{op.type} on target {target!r}: the API gave up after "
                                f"{settings.job_timeout + SYNC_MARGIN:g}s (job_timeout + {SYNC_MARGIN:g}s)"),
        )
    results = list(result.get("results") or [])
    if spec.shape_result is not None:
        results = [spec.shape_result(dict(item)) for item in results]
    return Reply(spec.status, {"job_id": result.get("job_id"), "results": results})
