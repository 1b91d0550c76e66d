"""JSON Schemas of the API's bodies, shared by the routes and the OpenAPI document.

Operation data and results come from the operations table; this module adds
what the API wraps around them: the error envelope, the synchronous
``{job_id, results}`` answer, the job object and the queue statistics. The
document is OpenAPI 3.1, so these are plain JSON Schema (2020-12) and tests
validate real responses against them with ``jsonschema``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from osapi.api.errors import REASONS
from osapi.domain.ids import JOB_ID_PATTERN
from osapi.domain.subjects import BROADCAST_TARGET_PATTERN, MAX_TARGET_LENGTH, TARGET_PATTERN

REF = "#/components/schemas/"



@dataclass(frozen=True)
class Response:
    """One response of a route, as the OpenAPI document shows it."""

    description: str
    schema: dict | None = None  # None: no body
    media_type: str = "application/json"
    headers: dict[str, dict] = field(default_factory=dict)  # name -> OpenAPI header object


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
NULLABLE_STR = {"type": ["string", "null"]}
JOB_STATUSES = ("submitted", "processing", "completed", "failed", "partial_failure")

TARGET_DESCRIPTION = (
    "where the job runs: `_any` (one worker, load-balanced), `_all` (every worker), "
    "`key:value` (every worker whose label `key` equals `value` or starts with `value.`), "
    "anything else is a hostname"
)
# What the API accepts as a target: the job system's own rule (``osapi.domain.subjects``).
TARGET = {"type": "string", "minLength": 1, "maxLength": MAX_TARGET_LENGTH, "pattern": TARGET_PATTERN}
JOB_ID = {"type": "string", "format": "uuid", "pattern": JOB_ID_PATTERN,
          "description": "a job id: a lower-case UUID"}


def ref(name: str) -> dict:
    return {"$ref": REF + name}


def obj(props: dict, required: list[str] | None = None, additional=None) -> dict:
    schema: dict = {"type": "object", "properties": props}
    schema["required"] = list(props) if required is None else required
    if additional is not None:
        schema["additionalProperties"] = additional
    return schema


ERROR = obj(
    {
        "error": {"type": "string", "description": "what went wrong, in a few words"},
        "details": {"type": "string", "description": "which value, and what to do; may be empty"},
        "code": {"type": "integer", "description": "the HTTP status, repeated"},
        "job_id": {"type": "string", "description": "404 (no live worker matches) and 504 only: the job that stays queued"},
    },
    ["error", "details", "code"],
)

FAILED_ITEM = obj(
    {
        "hostname": STR,
        "status": {"type": "string", "enum": ["failed", "no_response"],
                   "description": "failed: the host ran the job and it failed; no_response: a host the worker "
                                  "registry listed for the target did not answer within api.server.job_timeout "
                                  "(or left the registry before answering)"},
        "error": STR,
    },
    ["hostname", "status", "error"],
)
FAILED_ITEM["description"] = "a host that failed or did not answer"

HOST_STATES = ("pending", "running", "ok", "failed", "no_response", "skipped")
OUTCOME_COUNTS = ("targeted", "ok", "failed", "no_response", "skipped", "pending")

JOB = obj(
    {
        "id": STR,
        "status": {"type": "string", "enum": list(JOB_STATUSES)},
        "created": TIME,
        "updated_at": TIME,
        "target_hostname": STR,
        "operation": obj({"type": STR, "data": {"type": "object"}}, ["type", "data"]),
        "hostname": {"type": ["string", "null"], "description": "the (first) host that answered"},
        "result": {"description": "the (first) host's result data, or null"},
        "error": {"type": ["string", "null"]},
        "hosts": {
            "type": "object",
            "description": "every host's outcome. A broadcast (`_all`, a label): the hosts the worker registry "
                           "listed for the target at submission, and any other host that took the job; a "
                           "one-host job (`_any`, a hostname): the host that took it, or the target while "
                           "nobody has. `no_response`: an expected host with no event at all "
                           "`api.server.job_timeout` after submission (the bound of the API process that "
                           "accepted the job, stored with it; in a rollout, after its batch was sent), or one a "
                           "synchronous call stopped waiting for; "
                           "a host that answers later decides its own state again. A job whose submission "
                           "failed reaches no host: `{}`",
            "additionalProperties": obj(
                {"state": {"type": "string", "enum": list(HOST_STATES)},
                 "batch": {"type": "integer", "minimum": 1, "description": "rollouts only: the host's batch"}},
                ["state"],
            ),
        },
        "summary": {
            **obj({name: {"type": "integer", "minimum": 0} for name in OUTCOME_COUNTS}),
            "description": "hosts per state: `targeted` is the number of hosts in `hosts`; `pending` counts "
                           "the `pending` and `running` ones",
        },
        "retry_of": {**JOB_ID, "description": "a retry only: the job it retries (POST /jobs/{job_id}/retry)"},
        "responses": {
            "type": "object",
            "additionalProperties": obj(
                {"status": STR, "data": {}, "error": NULLABLE_STR}, ["status"]
            ),
        },
        "worker_states": {
            "type": "object",
            "additionalProperties": obj(
                {"status": STR, "error": NULLABLE_STR, "duration": {"type": ["number", "string", "null"]}},
                ["status"],
            ),
        },
        "timeline": {
            "type": "array",
            "items": obj({"timestamp": TIME, "event": STR,
                          "hostname": {**NULLABLE_STR, "description": "the worker's host; for `submitted`, the target"}},
                         ["timestamp", "event"]),
        },
    },
    [
        "id", "status", "created", "updated_at", "target_hostname", "operation",
        "hostname", "result", "error", "hosts", "summary", "responses", "worker_states", "timeline",
    ],
)

JOB_LIST = obj({"total_items": INT, "items": {"type": "array", "items": ref("Job")}})

JOB_CREATED = obj(
    {
        "job_id": STR,
        "status": {"type": "string", "const": "submitted"},
        "revision": INT,
        "timestamp": TIME,
    }
)

def _operation_request(op) -> dict:
    """``{type, data}`` of one operation type, as strict as its validator."""
    data = copy.deepcopy(op.data_schema)
    required = ["type"]
    if data.get("required"):
        required.append("data")  # without data the validator misses a required field
    else:
        data = {"anyOf": [data, {"type": "null"}], "description": "the operation's data; default {}"}
    return obj({"type": {"type": "string", "const": op.type}, "data": data}, required, additional=False)


def job_request() -> dict:
    """The body of ``POST /jobs``: one branch per operation type of the table.

    Each branch is a whole body: the operation, a target and, for a modify
    operation only, ``dry_run`` (a query with ``dry_run`` is refused).
    """
    from osapi.domain import operations

    def branch(op, rollout: bool) -> dict:
        props = {
            "operation": _operation_request(op),
            "target_hostname": {**TARGET, "default": "_any", "description": TARGET_DESCRIPTION},
        }
        if op.has_dry_run:
            props["dry_run"] = copy.deepcopy(operations.DRY_RUN_SCHEMA)
        if not rollout:
            return obj(props, ["operation"], additional=False)
        # a rollout: a multi-host target, given explicitly (the default _any is one host)
        props["target_hostname"] = {**TARGET, "pattern": BROADCAST_TARGET_PATTERN,
                                    "description": "a multi-host target: `_all` or `key:value`"}
        props["rollout"] = rollout_request()
        return obj(props, ["operation", "target_hostname", "rollout"], additional=False)

    return {
        "type": "object",
        "oneOf": [branch(op, rollout) for op in operations.OPERATIONS.values() for rollout in (False, True)],
        "description": "an operation type of the table with its data, the target, for a modify operation "
                       "dry_run, and a rollout for a multi-host target",
    }


def rollout_request() -> dict:
    """``rollout`` of ``POST /jobs``: as strict as ``osapi.job.rollout.check``."""
    from osapi.job import rollout

    return obj(
        {
            "batch": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": rollout.MAX_COUNT},
                                {"type": "string", "pattern": rollout.BATCH_PERCENT}],
                      "description": "hosts per batch: a number, or a percentage of the targeted hosts "
                                     "(`\"25%\"`, rounded up, at least 1)"},
            "max_failures": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": rollout.MAX_COUNT},
                                       {"type": "string", "pattern": rollout.FAILURES_PERCENT}],
                             "default": 0,
                             "description": "failed + no_response hosts tolerated; one more and no further "
                                            "batch starts (the remaining hosts are `skipped`): a number or a "
                                            "percentage of the targeted hosts"},
            "pause": {"type": "string", "pattern": rollout.PAUSE_PATTERN, "default": "0s",
                      "description": "waited between batches: a duration such as `0s`, `30s`, `5m`"},
        },
        ["batch"],
        additional=False,
    ) | {"description": "a multi-host target only (`_all`, a label; a one-host target is a 400): send the job "
                        "batch by batch to the hosts the worker registry lists at submission, in hostname "
                        "order; a batch starts when every host of the previous one has a final outcome (a host "
                        "silent for `api.server.job_timeout` is `no_response`) and `pause` has passed"}


RETRYABLE = ("failed", "no_response", "skipped")
RETRY_REQUEST = obj(
    {"only": {"type": "array", "minItems": 1,
              "items": {"type": "string", "enum": list(RETRYABLE)},
              "description": "the host states to retry; default all three"}},
    [],
    additional=False,
)
RETRY_CREATED = obj(
    {
        "job_id": {**JOB_ID, "description": "the new job"},
        "retry_of": {**JOB_ID, "description": "the job retried"},
        "hosts": {"type": "array", "items": STR, "minItems": 1,
                  "description": "the hosts the new job is sent to, sorted"},
    }
)

COUNTS = {"type": "object", "additionalProperties": INT}
QUEUE_STATS = obj(
    {
        "total_jobs": INT,
        "status_counts": COUNTS,
        "operation_counts": COUNTS,
        "dlq_count": INT,
    }
)

WORKER = obj(
    {
        "hostname": STR,
        "labels": {"type": "object", "additionalProperties": STR,
                   "description": "the labels of the host's newest worker process"},
        "version": {"type": "string", "description": "the osapi version of the host's newest worker process"},
        "started_at": {**TIME, "description": "RFC 3339, UTC: when the host's oldest live worker process started"},
        "last_seen": {**TIME, "description": "RFC 3339, UTC: the host's latest heartbeat (of any of its processes)"},
        "processes": {"type": "integer", "minimum": 1,
                      "description": "live worker processes on this host (they act as one host: each job runs "
                                     "once per host)"},
    }
)
WORKER["description"] = "one worker host (all its live worker processes together)"
WORKERS = obj({"total": {"type": "integer", "description": "worker hosts listed"},
               "workers": {"type": "array", "items": WORKER}})

VERSION = obj({"version": STR})
HEALTH = obj({"status": {"type": "string", "const": "ok"}})
READY = obj({"status": {"type": "string", "const": "ready"}}, ["status"])
NOT_READY = obj(
    {
        "status": {"type": "string", "const": "not_ready"},
        "error": {"type": "string", "description": "why"},
    },
    ["status", "error"],
)
COMPONENT = obj(
    {"status": {"type": "string", "enum": ["ok", "error"]}, "error": STR, "url": STR, "bucket": STR},
    ["status"],
)
HEALTH_STATUS = obj(
    {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "version": STR,
        "uptime_seconds": NUM,
        "components": obj({"nats": COMPONENT, "kv": COMPONENT}),
        "jobs": {
            **obj({
                **QUEUE_STATS["properties"],
                "stale": {"type": "boolean",
                          "description": "false: counted just now; true: they could not be counted (see error)"},
                "as_of": {"type": ["string", "null"], "format": "date-time",
                          "description": "stale only: when these counts were taken (RFC 3339, UTC); null: "
                                         "this API process never counted them, the counts are zeros"},
                "error": {"type": "string", "description": "stale only: why the jobs could not be counted"},
            }, [*QUEUE_STATS["required"], "stale"]),
            "description": "the counts of GET /api/v1/jobs/status; when NATS or the job bucket is away: the "
                           "last counts this API process got (or zeros), with stale: true, as_of and error",
        },
    }
)

COMPONENTS = {
    "Error": ERROR,
    "FailedResult": FAILED_ITEM,
    "Job": JOB,
}


def sync_result(result_schema: dict, extra: dict | None = None) -> dict:
    """``{job_id, results: [ok item | failed item]}`` for one operation's result schema."""
    item = copy.deepcopy(result_schema) or {"type": "object", "properties": {}}
    item.setdefault("type", "object")
    props = {"hostname": STR, **item.get("properties", {}), **(extra or {})}
    item["properties"] = props
    required = ["hostname", *(extra or {}), *item.get("required", [])]
    item["required"] = list(dict.fromkeys(required))  # an extra field (e.g. status: ok) is always there
    return obj(
        {
            "job_id": STR,
            "results": {"type": "array", "items": {"anyOf": [item, ref("FailedResult")]}},
        }
    )


ERROR_DESCRIPTIONS = {
    400: "bad input: malformed JSON, a missing or invalid field, query parameter or target",
    401: "no token, or an invalid one (see the WWW-Authenticate header and details)",
    403: "the token lacks the scope this endpoint needs",
    404: "no such job",
    409: "no host of the job is in a state that `only` names",
    413: "the body is larger than 1 MiB",
    503: "NATS is not reachable",
    504: "no worker answered within api.server.job_timeout",
}


def error_responses(*codes: int) -> dict:
    return {code: Response(ERROR_DESCRIPTIONS.get(code, REASONS.get(code, "error")), ref("Error")) for code in codes}


def with_status(schema: dict, status: str) -> dict:
    """``schema`` with its ``status`` property pinned to one value (200 vs 503 bodies)."""
    out = copy.deepcopy(schema)
    out["properties"]["status"] = {"type": "string", "const": status}
    return out
