"""Failures of the job system, each mapped by the REST API to one HTTP status.

``InvalidJob`` → 400, ``JobNotFound`` → 404, ``NatsUnavailable`` → 503,
``JobStoreFull`` → 503 (distinct message: the KV buckets reached
``job.kv.max_bytes``), ``NoLiveWorker`` → 404, ``JobTimeout`` → 504,
``IdempotencyConflict`` → 422, ``IdempotencyInProgress`` → 409 (``idempotency.py``). They derive from ``osapi.errors.OsapiError`` so the CLI's
error funnel prints them as one line with exit status 1.

``RetryableError`` is different: a provider raises it when trying the same job
again later may succeed (a busy resource, a lock held by someone else). The
worker then redelivers the job with ``job.consumer.back_off`` delays, up to
``job.consumer.max_deliver`` deliveries, after which it goes to the dead-letter
stream. Any other provider exception is taken as deterministic: the job fails
for that host at once and is not retried.
"""

from __future__ import annotations

from osapi.errors import OsapiError

STORE_FULL = 10077  # JetStream: "maximum bytes exceeded" (a bucket at max_bytes with discard "new")


def is_store_full(exc: BaseException) -> bool:
    """A JetStream refusal because a KV bucket reached ``job.kv.max_bytes``."""
    if isinstance(exc, JobStoreFull):
        return True
    detail = getattr(exc, "description", None) or str(exc)
    return getattr(exc, "err_code", None) == STORE_FULL or "maximum bytes exceeded" in detail


class JobError(OsapiError):
    """Base of every job-system failure."""


class InvalidJob(JobError):
    """Bad operation type, data or target; the message names the field. Nothing was stored."""


class JobNotFound(JobError):
    """No job with that id (never existed, deleted, or expired after ``job.kv.ttl``)."""


class NothingToRetry(JobError):
    """A retry found no host of the job in the states it names; nothing was submitted (API 409)."""


class NatsUnavailable(JobError):
    """NATS cannot be reached or does not answer; the message names the URL."""


class JobStoreFull(JobError):
    """A KV bucket reached ``job.kv.max_bytes`` (JetStream refuses new entries: discard policy "new").

    NATS itself is fine; old jobs expire after ``job.kv.ttl``, or the operator
    deletes jobs or raises the limit.
    """


class JobTimeout(JobError):
    """No worker answered within the timeout. ``job_id`` is the job that was submitted."""

    def __init__(self, message: str, job_id: str, hint: str | None = None):
        super().__init__(message, hint)
        self.job_id = job_id


class NoLiveWorker(JobTimeout):
    """No live worker matches the target (a typo in a hostname, a label nobody has).

    The caller's mistake, not the server's: the API answers 404 (a 5xx would make HTTP
    clients retry and queue another job each time). The job stays queued for a host
    that may still come; ``job_id`` names it.
    """


class IdempotencyConflict(JobError):
    """An ``Idempotency-Key`` used again with a different request. Nothing was stored."""


class IdempotencyInProgress(JobError):
    """The request holding this ``Idempotency-Key`` has not answered yet. Nothing was stored."""


class RetryableError(Exception):
    """Raised by a provider when the same job may succeed if tried again later."""
