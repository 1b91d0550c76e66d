"""``/api/v1/jobs*``: the job queue itself -- submit, list, read, follow (events.py), delete, retry, statistics.

POST /jobs checks the operation type, its data and the target before anything
reaches NATS, so a refused request (400) never leaves a job behind. Its
``dry_run: true`` (modify operations only) makes every host compute the change
and apply nothing (README.md "Dry run"); ``rollout`` sends a multi-host job batch
by batch (``osapi.job.rollout``, README.md "Rollouts"). An ``Idempotency-Key`` header makes a
retried request answer the first job again instead of creating a second one
(``osapi.job.idempotency``, README.md "Idempotency keys").
"""

from __future__ import annotations

import re

from osapi.api import audit, schemas
from osapi.api import events as event_stream
from osapi.api.errors import bad_request
from osapi.api.health import remember_job_stats
from osapi.api.routing import (
    API_PREFIX, Call, InvalidValue, Param, Reply, Response, Route, check_fields, json_type,
    dry_run_field, int_param, parse_choice, parse_target,
)
from osapi.domain import operations
from osapi.domain.errors import InvalidJob
from osapi.job import idempotency
from osapi.job.client import RETRYABLE, JobClient, JobRequest

TAG = "jobs"
QUEUE_TIMEOUT = 15.0  # seconds a queue operation may take before the API answers 503
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_OFFSET = 999_999_999


def _job_id(call: Call) -> str:
    job_id = call.path["job_id"]
    if not JOB_ID_RE.fullmatch(job_id):
        raise bad_request("invalid job_id", f"a job id is a UUID such as 3f2b…; got {job_id[:80]!r}")
    return job_id


def create(call: Call) -> Reply:
    body = call.body_object()
    check_fields(body, {"operation", "target_hostname", "dry_run", "rollout"})
    operation = body.get("operation")
    if operation is None:
        raise bad_request("missing field operation", 'operation is required: {"type": …, "data": {…}}')
    if not isinstance(operation, dict):
        raise bad_request("invalid field operation", f"operation must be an object, got {json_type(operation)}")
    check_fields(operation, {"type", "data"}, "operation")
    if "type" not in operation:
        raise bad_request("missing field operation.type", f"known types: {', '.join(operations.OPERATIONS)}")
    try:
        op = operations.get(operation["type"])
    except operations.InvalidData as exc:
        raise bad_request("invalid field operation.type", str(exc)) from None
    data = operation.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise bad_request("invalid field operation.data", f"operation.data must be an object, got {json_type(data)}")
    try:
        data = op.check(data)
    except operations.InvalidData as exc:
        raise bad_request("invalid field operation.data", f"{op.type}: {exc}") from None
    dry_run = dry_run_field(body, op)
    target = body.get("target_hostname", "_any")
    if not isinstance(target, str):
        raise bad_request("invalid field target_hostname", f"target_hostname must be a string, got {json_type(target)}")
    try:
        target = parse_target(target)
    except InvalidValue as exc:
        raise bad_request("invalid field target_hostname", exc.details("target_hostname")) from None

    rollout = None
    if "rollout" in body:
        if not isinstance(body["rollout"], dict):
            raise bad_request("invalid field rollout", "rollout must be an object {batch, max_failures, pause}, "
                                                       f"got {json_type(body['rollout'])}")
        try:
            rollout = JobClient.check_rollout(body["rollout"], target)
        except InvalidJob as exc:
            raise bad_request("invalid field rollout", str(exc)) from None

    audit.note(call.environ, operation=op.type, target=target.text, dry_run=dry_run or None)
    request = JobRequest.of(op, data, target, dry_run)  # validated above: the client parses nothing again
    key = call.headers.get(idempotency.HEADER)
    replayed = False
    if key is None:
        job = call.services.bridge.call(lambda client: client.create(request, rollout), QUEUE_TIMEOUT)
    else:
        # the same request = the same validated operation, data, target and dry_run
        digest = idempotency.body_hash({"operation": {"type": op.type, "data": data}, "target_hostname": target.text,
                                        "dry_run": dry_run, **({"rollout": rollout} if rollout is not None else {})})
        slot = idempotency.slot(call.subject, key)
        job, replayed = call.services.bridge.call(
            lambda client: client.create_once(request, slot, digest, rollout), QUEUE_TIMEOUT
        )
    audit.note(call.environ, job_id=job.get("job_id"))
    headers = {"Location": f"{API_PREFIX}/jobs/{job.get('job_id')}"}
    if replayed:
        call.environ[audit.REPLAYED_KEY] = True
        return Reply(200, job, {**headers, idempotency.REPLAYED_HEADER: "true"})
    return Reply(201, job, headers)


def parse_idempotency_key(text: str) -> str:
    try:
        return idempotency.check_key(text)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


IDEMPOTENCY_KEY = Param(
    idempotency.HEADER,
    {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_LENGTH, "pattern": idempotency.PATTERN},
    f"1-{idempotency.MAX_LENGTH} printable ASCII characters, no blank at either end (a UUID will do). The same "
    "key with the same request (operation, data, target, dry_run) within `job.kv.ttl` answers 200 with the "
    "first answer and `Idempotent-Replayed: true` and stores nothing; with another request, 422. Keys "
    "belong to the token's subject. A request that finds its key still being submitted by another waits "
    f"up to {idempotency.WAIT:g}s for that answer, else 409 with `Retry-After`. A submission that fails "
    "(503) frees its key for the retry.",
    parse_idempotency_key,
)


def list_jobs(call: Call) -> Reply:
    q = call.query
    page = call.services.bridge.call(
        lambda client: client.list(status=q["status"], limit=q["limit"], offset=q["offset"]), QUEUE_TIMEOUT
    )
    return Reply(200, page)


def get(call: Call) -> Reply:
    job_id = _job_id(call)
    return Reply(200, call.services.bridge.call(lambda client: client.get(job_id), QUEUE_TIMEOUT))


def delete(call: Call) -> Reply:
    job_id = _job_id(call)
    call.services.bridge.call(lambda client: client.delete(job_id), QUEUE_TIMEOUT)
    return Reply(204, None)


def retry(call: Call) -> Reply:
    """A new job for the hosts of a job that failed, did not answer or were skipped (README: retry)."""
    job_id = _job_id(call)
    body = call.body()
    body = {} if body is None else call.body_object()
    check_fields(body, {"only"})
    only = body.get("only")
    if "only" in body:
        if not isinstance(only, list) or not only:
            allowed = ", ".join(schemas.RETRYABLE)
            raise bad_request("invalid field only", f"only must be a non-empty array of {allowed}, got {json_type(only)}")
        for state in only:
            if state not in schemas.RETRYABLE:
                shown = state if isinstance(state, str) else json_type(state)
                raise bad_request("invalid field only",
                                  f"{str(shown)[:80]!r} is not a state to retry; use {', '.join(schemas.RETRYABLE)}")
    states = RETRYABLE if only is None else only
    answer = call.services.bridge.call(lambda client: client.retry(job_id, states), QUEUE_TIMEOUT)
    audit.note(call.environ, job_id=answer.get("job_id"))
    return Reply(201, answer, {"Location": f"{API_PREFIX}/jobs/{answer.get('job_id')}"})


def status(call: Call) -> Reply:
    counts = call.services.bridge.call(lambda client: client.stats(), QUEUE_TIMEOUT)
    remember_job_stats(call, counts)
    return Reply(200, counts)


def workers(call: Call) -> Reply:
    return Reply(200, call.services.bridge.call(lambda client: client.workers(), QUEUE_TIMEOUT))


_err = schemas.error_responses

EVENTS_DESCRIPTION = (
    "A `text/event-stream`: first the job's stored events, then each new one as it is stored. Each "
    "event has `id:` (its stream sequence, for `Last-Event-ID`), `event:` (`submitted`, `acknowledged`, "
    "`started`, `completed` or `failed`) and `data:` (one line of JSON: `{timestamp, hostname, error?}`; "
    "for `submitted` the hostname is the target). When the job reaches a final status (completed, failed, "
    "partial_failure) comes `event: end` with the job (as `GET /jobs/{job_id}` returns it) as `data`, and "
    f"the stream closes. While nothing happens a comment line (`: idle`) comes every "
    f"{event_stream.IDLE_COMMENT:g} s. A stream also closes when the job is deleted. At most "
    f"{event_stream.MAX_EVENT_STREAMS} streams are open at once."
)


def routes() -> list[Route]:
    return [
        Route("POST", "/jobs", create, "submit a job (asynchronous)", TAG, "write",
              body=schemas.job_request(),
              body_description="the operation, where it runs and, for a modify operation, whether it is a "
                               "dry run; unknown fields are refused",
              headers=(IDEMPOTENCY_KEY,),
              responses={201: Response("the job is stored and announced", schemas.JOB_CREATED),
                         200: Response(
                             f"a replay: this `{idempotency.HEADER}` came with the same request within "
                             "`job.kv.ttl`; the first answer again (same `job_id`), nothing stored",
                             schemas.JOB_CREATED,
                             headers={idempotency.REPLAYED_HEADER: {
                                 "required": True, "schema": {"type": "string", "const": "true"},
                                 "description": "this answer is the first request's"}}),
                         409: Response(
                             f"a request with this `{idempotency.HEADER}` is still being submitted "
                             "(retry after `Retry-After` seconds); nothing stored", schemas.ref("Error"),
                             headers={"Retry-After": {"required": True, "schema": {"type": "string",
                                                                                    "pattern": "^[0-9]+$"},
                                                      "description": "seconds"}}),
                         422: Response(f"this `{idempotency.HEADER}` came with a different request within "
                                       "`job.kv.ttl`; nothing stored", schemas.ref("Error")),
                         **_err(400, 401, 403, 413, 503)},
              operation_id="jobs_create"),
        Route("GET", "/jobs", list_jobs, "list jobs, newest first", TAG, "read",
              query=(
                  Param("status", {"type": "string", "enum": list(schemas.JOB_STATUSES)},
                        "only jobs in this status", parse_choice(*schemas.JOB_STATUSES), None),
                  int_param("limit", 1, MAX_LIMIT, DEFAULT_LIMIT, f"page size, 1 to {MAX_LIMIT}"),
                  int_param("offset", 0, MAX_OFFSET, 0, f"jobs to skip, 0 to {MAX_OFFSET}"),
              ),
              responses={200: Response("one page of jobs", schemas.JOB_LIST), **_err(400, 401, 403, 503)},
              operation_id="jobs_list"),
        Route("GET", "/jobs/status", status, "queue statistics", TAG, "read",
              responses={200: Response("counts by status and operation", schemas.QUEUE_STATS),
                         **_err(400, 401, 403, 503)},
              operation_id="jobs_status"),
        Route("GET", "/jobs/workers", workers, "registered worker hosts", TAG, "read",
              responses={200: Response("live worker hosts from the registry, one row per host", schemas.WORKERS),
                         **_err(400, 401, 403, 503)},
              description="One row per host: several worker processes on one host act as one host (each job "
                          "runs once per host), so a host is listed once with `processes`, the number of its "
                          "live worker processes, the earliest `started_at` and the latest `last_seen`. A worker "
                          "drops out when its heartbeats stop for three heartbeat intervals; an entry older "
                          "than that is never listed, even if the NATS server kept it.",
              operation_id="jobs_workers"),
        Route("GET", "/jobs/{job_id}", get, "one job with its responses and timeline", TAG, "read",
              responses={200: Response("the job", schemas.ref("Job")), **_err(400, 401, 403, 404, 503)},
              operation_id="jobs_get"),
        Route("GET", "/jobs/{job_id}/events", event_stream.handler(_job_id), "follow a job's events (server-sent "
              "events)", TAG, "read",
              headers=(event_stream.LAST_EVENT_ID,),
              responses={200: Response("the job's events as they are stored, then `end` (see the description); "
                                       "the schema is that of one event", event_stream.EVENT_SCHEMA,
                                       event_stream.MEDIA_TYPE),
                         **_err(401, 403, 404),
                         400: Response("an invalid job id or Last-Event-ID header", schemas.ref("Error")),
                         503: Response(f"NATS is not reachable, or {event_stream.MAX_EVENT_STREAMS} event streams "
                                       "are already open (`too many event streams open`, with a `Retry-After` "
                                       "header)", schemas.ref("Error"))},
              description=EVENTS_DESCRIPTION,
              operation_id="jobs_events"),
        Route("POST", "/jobs/{job_id}/retry", retry, "run a job again on its failed, silent or skipped hosts", TAG,
              "write", body=schemas.RETRY_REQUEST, body_required=False,
              body_description="which host states to retry; an empty body retries all three",
              responses={201: Response("the new job, sent to exactly those hosts", schemas.RETRY_CREATED),
                         **_err(400, 401, 403, 404, 409, 413, 503)},
              description="A new job with the same operation and data, sent to exactly the hosts of the job "
                          "whose state (`hosts`) is one of `only` (default `failed`, `no_response`, "
                          "`skipped`). It keeps the job's `target_hostname`, names it in `retry_of`, expects "
                          "exactly those hosts (`hosts`, `summary`) and is announced to each of them on its "
                          "own host subject, so no other host runs it. 409 when no host is in those states.",
              operation_id="jobs_retry"),
        Route("DELETE", "/jobs/{job_id}", delete, "delete a job, its events and responses", TAG, "write",
              responses={204: Response("deleted"), **_err(400, 401, 403, 404, 503)},
              operation_id="jobs_delete"),
    ]
