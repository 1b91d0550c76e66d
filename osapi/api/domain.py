"""Synchronous domain endpoints, generated from the operations table.

Every operation that declares a REST surface (``Operation.rest``) gets a route:
its method and path, and where its data comes from (path parameters, declared
query parameters, and for PUT/POST the JSON body). ``routes()`` turns them into
ordinary ``Route``s whose handler validates the data with the operation's own
validator (``osapi.domain.operations``), checks the target, submits the job and
waits for the workers with ``JobClient.run`` -- the API never runs a provider
itself.

A modify operation's PUT/POST body also takes ``dry_run`` (README.md "Dry run"):
each host computes the change and applies nothing.

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

from osapi.api import audit, schemas
from osapi.api.errors import ApiError, bad_request
from osapi.api.routing import (
    TARGET_PARAM, Call, Param, Reply, Response, Route, dry_run_field, int_param, parse_choice,
)
from osapi.domain import operations
from osapi.job.client import JobRequest

SYNC_MARGIN = 10.0  # seconds the bridge waits beyond job_timeout before giving up itself
MAX_SYNC_WAITS = 256  # synchronous calls waiting for workers at once; see server.py THREADS
RETRY_AFTER = 5  # seconds, the Retry-After of a call refused because MAX_SYNC_WAITS are waiting


class WaitSlots:
    """At most ``limit`` requests holding a thread at once; one more is refused at once (503).

    ``refusal(limit)`` is that 503 (default: synchronous calls waiting for workers).
    ``slot()`` holds one for a block; ``take()`` returns the release of one held
    beyond a block (an event stream releases it when it ends).
    """

    def __init__(self, limit: int = MAX_SYNC_WAITS, refusal=None):
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit) if limit > 0 else None
        self._refusal = refusal or _too_many_waits

    def take(self):
        """Hold a slot (503 when none is free); the returned callable releases it, once."""
        if self._free is None or not self._free.acquire(blocking=False):
            raise self._refusal(self.limit)
        held = [True]
        lock = threading.Lock()

        def release() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    self._free.release()

        return release

    @contextlib.contextmanager
    def slot(self):
        release = self.take()
        try:
            yield
        finally:
            release()


def _too_many_waits(limit: int) -> ApiError:
    return ApiError(
        503, "too many synchronous calls waiting",
        f"{limit} synchronous calls are already waiting for workers; retry after "
        f"{RETRY_AFTER}s, or submit the job with POST /api/v1/jobs and read GET /api/v1/jobs/{{job_id}}",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def mark_ok(item: dict) -> dict:
    """Modify endpoints report ``status: ok|failed|no_response`` per host."""
    if item.get("status") not in ("failed", "no_response"):
        item = {"hostname": item.get("hostname"), "status": "ok", **{k: v for k, v in item.items() if k != "hostname"}}
    return item


def routes() -> list[Route]:
    """A route for every operation of the table that declares one (``Operation.rest``)."""
    return [_route(op) for op in operations.OPERATIONS.values() if op.rest is not None]


def query_param(op: operations.Operation, name: str) -> Param:
    """The query parameter for the data field ``name``: parsed and documented from its schema."""
    schema = op.data_schema["properties"][name]
    description = schema.get("description", name)
    if schema.get("type") == "integer":
        param = int_param(name, schema["minimum"], schema["maximum"], schema["default"], description)
        return Param(name, param.schema, description, param.parse, None)  # the validator sets the default
    if "enum" in schema:
        documented = {k: v for k, v in schema.items() if k != "description"}
        return Param(name, documented, description, parse_choice(*schema["enum"]), None)
    raise ValueError(f"{op.type}: query parameter {name} needs an integer or enum schema")


def _route(op: operations.Operation) -> Route:
    rest = op.rest
    has_body = rest.method in ("PUT", "POST")
    path_fields = re.findall(r"\{(\w+)\}", rest.path)

    def handler(call: Call) -> Reply:
        return _run(call, op, has_body)

    body_schema = None
    if has_body:
        body_schema = copy.deepcopy(op.data_schema)
        body_schema.setdefault("properties", {})
        for name in path_fields:
            body_schema["properties"].pop(name, None)
        body_schema["additionalProperties"] = False
        if op.has_dry_run:
            body_schema["properties"]["dry_run"] = copy.deepcopy(operations.DRY_RUN_SCHEMA)
    extra = {"status": {"type": "string", "const": "ok"}} if rest.reports_status else None
    return Route(
        method=rest.method,
        path=rest.path,
        handler=handler,
        summary=op.summary,
        tag=op.type.partition(".")[0],
        scope=rest.scope,
        query=(TARGET_PARAM, *(query_param(op, name) for name in rest.query)),
        body=body_schema,
        body_description=f"the data of `{op.type}`; the target is the `target_hostname` query parameter",
        responses={
            rest.status: Response(
                f"one result per responding worker (`{op.type}`)",
                schemas.sync_result(op.result_schema, extra),
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


def _run(call: Call, op: operations.Operation, has_body: bool) -> Reply:
    data: dict = dict(call.path)
    dry_run = False
    data.update({name: call.query[name] for name in op.rest.query if name in call.given})
    target = call.query["target_hostname"]  # a Target, parsed once by TARGET_PARAM
    if has_body:
        body = dict(call.body_object())
        if "target_hostname" in body:
            raise bad_request("unexpected field target_hostname in the request body",
                              "give the target as the query parameter: ?target_hostname=…")
        for name in data:
            if name in body:
                raise bad_request(f"unexpected field {name} in the request body",
                                  f"{name} is part of the path")
        dry_run = dry_run_field(body, op)
        body.pop("dry_run", None)
        data.update(body)
    try:
        data = op.check(data)
    except operations.InvalidData as exc:
        raise bad_request(f"invalid data for {op.type}", str(exc)) from None

    audit.note(call.environ, operation=op.type, target=target.text, dry_run=dry_run or None)
    request = JobRequest.of(op, data, target, dry_run)  # validated above: the client parses nothing again
    settings = call.services.settings
    with call.services.wait_slots.slot():
        result = call.services.bridge.call(
            # a job nobody picked up before its caller gave up must not run later (JobClient.run)
            lambda client: client.run(request, settings.job_timeout, settings.quiet_period,
                                      expires_after=settings.job_timeout + client.SYNC_EXPIRY_MARGIN),
            settings.job_timeout + SYNC_MARGIN,
            on_timeout=ApiError(504, "no worker answered in time",
                                f"{op.type} on target {target.text!r}: the API gave up after "
                                f"{settings.job_timeout + SYNC_MARGIN:g}s (job_timeout + {SYNC_MARGIN:g}s)"),
        )
    audit.note(call.environ, job_id=result.get("job_id"))
    results = list(result.get("results") or [])
    if op.rest.reports_status:
        results = [mark_ok(dict(item)) for item in results]
    return Reply(op.rest.status, {"job_id": result.get("job_id"), "results": results})
