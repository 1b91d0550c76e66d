"""Create the JetStream objects osapi needs, idempotently and race-safely.

Everything comes from ``job.*`` configuration:

* stream ``job.stream_name`` (``JOBS``) on ``job.stream_subjects`` — one message
  (the job id) per job, limits retention per ``job.stream.*``;
* KV ``job.kv_bucket`` (``job-queue``: jobs and status events) and
  ``job.kv_response_bucket`` (``job-responses``) per ``job.kv.*``;
* KV ``<job.kv_bucket>-workers`` — the worker registry (heartbeats with a
  per-message TTL, see ``registry.py``);
* stream ``<job.stream_name>_DLQ`` per ``job.dlq.*`` — dead jobs. It captures the
  server's ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.*`` advisories,
  so a job lands there even when every worker that took it died; workers turn
  each entry into a ``failed`` event (``deadletter.py``);
* durable pull consumers (``consumer_configs``): ``<consumer_name>-any`` shared by
  the fleet, ``<consumer_name>-host-<host>`` per host, ``<consumer_name>-dlq``.

JetStream's create calls are idempotent for an identical configuration, so
several processes may run this at once. When a stream exists with another
configuration (an operator changed ``job.kv.ttl``), it is updated; when the
change is not allowed in place (storage), a warning names it and the existing
stream is used as it is.

Consumers are shared by the fleet, so one side owns their settings: workers
create *and update* them from their ``job.consumer.*``; the API only creates a
missing one (``update_consumers=False``) and never rewrites what the workers set.

A host's consumer is removed by the server after ``HOST_CONSUMER_INACTIVE``
(7 days) without a worker of that host pulling: a retired host does not keep
a consumer (and its pending jobs) forever. The price: a host that comes back
after more than 7 days is a new host -- it does not replay the jobs sent while
it was away (at most ``job.stream.max_age`` of them, 24 h by default, are
still in the stream then).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from osapi.job import subjects as subj

log = logging.getLogger("osapi.job.setup")

STREAM_NAME_IN_USE = 10058
SHARED_MAX_WAITING = 4096  # pull requests waiting at once on a fleet-wide consumer (one per worker process)
DUPLICATE_WINDOW = 120.0
REGISTRY_MAX_AGE = 3600.0  # entries expire by their own TTL; this only sweeps leftovers
HOST_CONSUMER_INACTIVE = 7 * 86400.0  # a host consumer nobody pulled from this long is removed by the server


@dataclass(frozen=True)
class Names:
    """Every JetStream name derived from configuration, in one place."""

    stream: str
    dlq_stream: str
    prefix: str
    jobs_bucket: str
    responses_bucket: str
    registry_bucket: str
    consumer: str

    @classmethod
    def from_config(cls, cfg) -> "Names":
        job = cfg.job
        return cls(
            stream=job.stream_name,
            dlq_stream=f"{job.stream_name}_DLQ",
            prefix=subj.prefix_of(job.stream_subjects),
            jobs_bucket=job.kv_bucket,
            responses_bucket=job.kv_response_bucket,
            registry_bucket=f"{job.kv_bucket}-workers",
            consumer=job.consumer_name,
        )

    @staticmethod
    def kv_stream(bucket: str) -> str:
        return f"KV_{bucket}"

    @property
    def any_consumer(self) -> str:
        return f"{self.consumer}-any"

    @property
    def dlq_consumer(self) -> str:
        return f"{self.consumer}-dlq"

    def host_consumer(self, hostname: str) -> str:
        return f"{self.consumer}-host-{host_slug(hostname)}"

    @property
    def dlq_subject(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.>"


def host_slug(hostname: str) -> str:
    """A consumer-name-safe form of a hostname (no dots), unique per hostname.

    ``web1`` → ``web1``; ``web1.example.com`` → ``web1_example_com-<8 hex of its hash>``
    (the hash keeps ``a.b`` and ``a_b`` apart).
    """
    name = subj.host_token(hostname)
    slug = re.sub(r"[^a-z0-9_-]", "_", name)
    if slug != name or len(slug) > 64:
        slug = f"{slug[:64]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


# ---------------------------------------------------------------- streams


async def ensure_stream(js, config) -> None:
    """Create ``config``; if the name exists with another configuration, update it."""
    import nats.js.errors as jse

    try:
        await js.add_stream(config)
        return
    except jse.APIError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    try:
        await js.update_stream(config)
        log.info("updated stream %s to the configured settings", config.name)
    except jse.APIError as exc:
        log.warning("stream %s exists with settings that cannot change in place (%s); using it as it is",
                    config.name, exc.description or exc)


def _kv_stream_config(bucket: str, ttl: float | None, max_bytes: int, storage: str, replicas: int):
    """What nats-py's ``create_key_value`` builds, with direct gets and per-message TTLs on."""
    from nats.js import api

    return api.StreamConfig(
        name=Names.kv_stream(bucket),
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=min(DUPLICATE_WINDOW, ttl) if ttl else DUPLICATE_WINDOW,
        max_age=ttl,
        max_bytes=max_bytes,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=replicas,
        storage=api.StorageType(storage),
    )


async def ensure_kv(js, bucket: str, ttl: float | None, max_bytes: int, storage: str, replicas: int):
    from nats.js.kv import KeyValue

    config = _kv_stream_config(bucket, ttl, max_bytes, storage, replicas)
    await ensure_stream(js, config)
    info = await js.stream_info(config.name)
    return KeyValue(name=bucket, stream=config.name, pre=f"$KV.{bucket}.", js=js,
                    direct=bool(info.config.allow_direct))


async def ensure_all(js, cfg, update_consumers: bool = True) -> dict:
    """Streams, buckets and the shared consumers. Returns the three KV handles by role.

    ``update_consumers=False`` (the API): an existing consumer is left as the workers set it.
    """
    from nats.js import api

    names = Names.from_config(cfg)
    job = cfg.job
    await ensure_stream(js, api.StreamConfig(
        name=names.stream,
        subjects=[job.stream_subjects],
        retention=api.RetentionPolicy.LIMITS,
        max_age=job.stream.max_age,
        max_msgs=job.stream.max_msgs,
        storage=api.StorageType(job.stream.storage),
        num_replicas=job.stream.replicas,
        discard=api.DiscardPolicy(job.stream.discard),
        duplicate_window=min(DUPLICATE_WINDOW, job.stream.max_age),
    ))
    await ensure_stream(js, api.StreamConfig(
        name=names.dlq_stream,
        subjects=[names.dlq_subject],
        retention=api.RetentionPolicy.LIMITS,
        max_age=job.dlq.max_age,
        max_msgs=job.dlq.max_msgs,
        storage=api.StorageType(job.dlq.storage),
        num_replicas=job.dlq.replicas,
        discard=api.DiscardPolicy.OLD,
    ))
    kv = {
        "jobs": await ensure_kv(js, names.jobs_bucket, job.kv.ttl, job.kv.max_bytes, job.kv.storage, job.kv.replicas),
        "responses": await ensure_kv(js, names.responses_bucket, job.kv.ttl, job.kv.max_bytes,
                                     job.kv.storage, job.kv.replicas),
        "registry": await ensure_kv(js, names.registry_bucket, REGISTRY_MAX_AGE, job.kv.max_bytes,
                                    job.kv.storage, job.kv.replicas),
    }
    await ensure_consumer(js, names.stream, any_consumer_config(cfg), update=update_consumers)
    await ensure_consumer(js, names.dlq_stream, dlq_consumer_config(cfg), update=update_consumers)
    return kv


# ---------------------------------------------------------------- consumers


def _job_consumer(cfg, name: str, filters: list[str], metadata: dict):
    from nats.js import api

    consumer = cfg.job.consumer
    config = api.ConsumerConfig(
        name=name,
        durable_name=name,
        # a consumer's first creation starts at "now": a new host does not replay
        # history; later creations find the durable and resume where it was
        deliver_policy=api.DeliverPolicy.NEW,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=consumer.ack_wait,
        max_deliver=consumer.max_deliver,
        max_ack_pending=consumer.max_ack_pending,
        metadata=metadata,
    )
    if len(filters) == 1:
        config.filter_subject = filters[0]
    else:
        config.filter_subjects = filters
    return config


def any_consumer_config(cfg):
    names = Names.from_config(cfg)
    config = _job_consumer(cfg, names.any_consumer, [subj.any_subject(names.prefix)], {"osapi_target": "_any"})
    config.max_waiting = SHARED_MAX_WAITING
    return config


def host_consumer_config(cfg, hostname: str, labels: dict):
    names = Names.from_config(cfg)
    config = _job_consumer(cfg, names.host_consumer(hostname), subj.host_subjects(hostname, labels, names.prefix),
                           {"osapi_hostname": hostname})
    config.inactive_threshold = HOST_CONSUMER_INACTIVE
    return config


def dlq_consumer_config(cfg):
    from nats.js import api

    names = Names.from_config(cfg)
    return api.ConsumerConfig(
        name=names.dlq_consumer,
        durable_name=names.dlq_consumer,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=100,
        max_waiting=SHARED_MAX_WAITING,
    )


async def ensure_consumer(js, stream: str, config, update: bool = True) -> None:
    """Create or update a durable. If the update is refused (a setting that cannot change in
    place, e.g. the deliver policy), the existing consumer is used unchanged, with a warning.
    ``update=False``: create it only if it is missing; an existing one is not touched."""
    import nats.js.errors as jse

    if not update:
        try:
            await js.consumer_info(stream, config.name)
            return
        except jse.NotFoundError:
            pass
    try:
        await js.add_consumer(stream, config)
    except jse.APIError as exc:
        try:
            await js.consumer_info(stream, config.name)
        except jse.NotFoundError:
            raise exc from None
        log.warning("consumer %s on %s exists with settings that cannot change in place (%s); using it as it is",
                    config.name, stream, exc.description or exc)
