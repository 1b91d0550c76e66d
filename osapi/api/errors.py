"""The error envelope (docs/api.md, Envelopes) and how failures become HTTP statuses.

Every 4xx/5xx the API sends is ``{"error": …, "details": …, "code": <status>}``:
``error`` is the category in a few words ("invalid query parameter limit",
"no worker answered in time"); ``details`` is the specific fact -- which value,
which job, how long -- and, where it helps, what to do, without restating the
category (raw API users read both, one after the other). Handlers raise ``ApiError``; failures from the
job system are translated in one place (``from_exception``) so that a status
code means the same thing on every route. Nothing here ever puts a traceback
into a response.
"""

from __future__ import annotations

from http import HTTPStatus

IN_PROGRESS_RETRY_AFTER = 1  # seconds, the Retry-After of a 409 "Idempotency-Key in progress"

# Statuses a handler may answer with, and the reason phrase waitress does not know.
REASONS = {s.value: s.phrase for s in HTTPStatus}


class ApiError(Exception):
    """An answer that is an error: status, a short ``error`` and optional ``details``."""

    def __init__(self, status: int, error: str, details: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict | None = None):
        super().__init__(f"{status} {error}: {details}" if details else f"{status} {error}")
        self.status = int(status)
        self.error = error
        self.details = details
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict:
        return envelope(self.status, self.error, self.details, self.extra)


def envelope(status: int, error: str, details: str | None = None, extra: dict | None = None) -> dict:
    """The error body. ``details`` is always present (empty string when there is none)."""
    body = {"error": error, "details": details or "", "code": int(status)}
    if extra:
        body.update(extra)
    return body


def status_line(status: int) -> str:
    return f"{status} {REASONS.get(status, 'Unknown')}"


# ---------------------------------------------------------------- shortcuts


def bad_request(error: str, details: str | None = None) -> ApiError:
    return ApiError(400, error, details)


def not_found(error: str, details: str | None = None) -> ApiError:
    return ApiError(404, error, details)


def unavailable(details: str) -> ApiError:
    return ApiError(503, "NATS is not reachable", details)


# ---------------------------------------------------------------- translation


def from_exception(exc: BaseException) -> ApiError | None:
    """The ``ApiError`` for an expected failure of the job system or NATS, else None.

    None means "a bug": the caller answers 500 and logs the traceback.
    """
    if isinstance(exc, ApiError):
        return exc
    if _is_nats_error(exc):
        text = str(exc) or type(exc).__name__
        return ApiError(503, "NATS is not reachable", f"{type(exc).__name__}: {text}")
    try:
        from osapi.domain import errors as job_errors
    except ImportError:  # pragma: no cover - the job system is part of the package
        return None
    if isinstance(exc, job_errors.InvalidJob):
        return ApiError(400, "invalid job", str(exc))
    if isinstance(exc, job_errors.JobNotFound):
        return ApiError(404, "job not found", str(exc))
    if isinstance(exc, job_errors.IdempotencyConflict):
        return ApiError(422, "Idempotency-Key reused with a different body", str(exc))
    if isinstance(exc, job_errors.IdempotencyInProgress):
        return ApiError(409, "request with this Idempotency-Key in progress", str(exc),
                        headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER)})
    if isinstance(exc, job_errors.NothingToRetry):
        return ApiError(409, "no host to retry", str(exc))
    if isinstance(exc, job_errors.JobStoreFull):
        return ApiError(503, "job store full (job.kv.max_bytes)", str(exc))
    if isinstance(exc, job_errors.NatsUnavailable):
        return ApiError(503, "NATS is not reachable", str(exc))
    if isinstance(exc, job_errors.JobTimeout):
        job_id = getattr(exc, "job_id", None)
        extra = {"job_id": job_id} if job_id else None
        details = str(exc)  # which job, which target, how long: the category is in ``error``
        if job_id and job_id not in details:
            details = f"{details}; job {job_id}: see GET /api/v1/jobs/{job_id}" if details else f"job {job_id}"
        if isinstance(exc, job_errors.NoLiveWorker):
            return ApiError(404, "no live worker matches target", details, extra=extra)
        return ApiError(504, "no worker answered in time", details, extra=extra)
    return None


def _is_nats_error(exc: BaseException) -> bool:
    """Errors of nats-py (connection lost, JetStream unavailable, request timeouts)."""
    try:
        import nats.errors
    except ImportError:  # pragma: no cover - nats is a dependency
        return False
    return isinstance(exc, nats.errors.Error)
