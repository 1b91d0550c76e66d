"""Create the JetStream objects osapi needs, idempotently and race-safely.

Everything comes from ``job.*`` and ``audit.*`` (the objects are listed in
docs/jobs.md, Storage layout): the stream ``JOBS``, the KV buckets for jobs,
responses, the worker registry, the ``Idempotency-Key``s of ``POST /jobs``
(``idempotency.py``) and the rollouts being driven (``rollout.py``), the DLQ stream that captures the server's
max-deliveries advisories, the ``AUDIT`` stream, and the durable pull consumers
(``consumer_configs``: ``-any``, ``-host-<host>``, ``-dlq``).

``ensure_all`` creates what is missing and never changes an existing stream or
bucket: it warns once per differing setting (``warn_differences``). ``plan`` and
``apply`` are ``osapi job setup [--apply]``, the operator's way to change them.
Workers create and update the consumers; the API only creates a missing one.
A host consumer unused for ``HOST_CONSUMER_INACTIVE`` is removed by the server;
it is one copy (``HOST_CONSUMER_REPLICAS``) whatever its stream's replicas.
Why each rule: docs/jobs.md, "Stream and bucket settings, osapi job setup".
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from osapi.domain import subjects as subj

log = logging.getLogger("osapi.job.setup")

STREAM_NAME_IN_USE = 10058
NOT_ENOUGH_PEERS = {10005, 10023}  # "no suitable peers for placement", "insufficient resources"
SHARED_MAX_WAITING = 4096  # pull requests waiting at once on a fleet-wide consumer (one per worker process)
DUPLICATE_WINDOW = 120.0
REGISTRY_MAX_AGE = 3600.0  # entries expire by their own TTL; this only sweeps leftovers
HOST_CONSUMER_INACTIVE = 7 * 86400.0  # a host consumer nobody pulled from this long is removed by the server
# One copy per host consumer, on one member of its stream: at 1,000 hosts on 3 nodes, 3 copies cost each
# node ~620 MiB instead of ~200 and made a broadcast cost 2.3x the nats-server CPU; a node loss then holds
# the jobs of the hosts whose consumer it held until it returns (the stream keeps them). docs/jobs.md,
# "Host consumers: one copy"; figures in bench/results.md, "Fleet".
HOST_CONSUMER_REPLICAS = 1
# JOBS holds one consumer per host: nats-server (2.15) refuses a stream's 1,001st consumer when the
# stream leaves max_consumers unlimited (-1), so it is set, high (docs/fleet-scale.md)
JOBS_MAX_CONSUMERS = 1_000_000
AUDIT_STREAM = "AUDIT"
AUDIT_SUBJECTS = "audit.>"


@dataclass(frozen=True)
class Names:
    """Every JetStream name derived from configuration, in one place."""

    stream: str
    dlq_stream: str
    prefix: str
    jobs_bucket: str
    responses_bucket: str
    registry_bucket: str
    idempotency_bucket: str
    consumer: str
    rollouts_bucket: str = ""  # the rollouts being driven (rollout.py): one entry per active rollout
    fleet_bucket: str = ""  # enrolled fleet hosts (osapi.fleet.hosts): one entry per host, no TTL

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
            idempotency_bucket=f"{job.kv_bucket}-idempotency",
            consumer=job.consumer_name,
            rollouts_bucket=f"{job.kv_bucket}-rollouts",
            fleet_bucket=f"{job.kv_bucket}-fleet",
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


# ---------------------------------------------------------------- streams and buckets

# (setting, StreamConfig attribute), in the order they are reported
SETTINGS = (
    ("subjects", "subjects"),
    ("retention", "retention"),
    ("storage", "storage"),
    ("replicas", "num_replicas"),
    ("max_age", "max_age"),
    ("max_msgs", "max_msgs"),
    ("max_bytes", "max_bytes"),
    ("max_msgs_per_subject", "max_msgs_per_subject"),
    ("discard", "discard"),
    ("duplicate_window", "duplicate_window"),
    ("allow_direct", "allow_direct"),
    ("allow_rollup_hdrs", "allow_rollup_hdrs"),
    ("allow_msg_ttl", "allow_msg_ttl"),
    ("deny_delete", "deny_delete"),
)
UNLIMITED = -1
_LIMITS = {"max_msgs", "max_bytes", "max_msgs_per_subject"}
_DURATIONS = {"max_age", "duplicate_window"}
_ENUMS = {"retention": "limits", "storage": "file", "discard": "old"}  # attribute: the server's default
_IF_SET = {"allow_direct", "allow_msg_ttl", "duplicate_window"}  # compared only when osapi sets them


@dataclass(frozen=True)
class Wanted:
    """A stream or KV bucket as the configuration wants it."""

    kind: str  # "stream" or "bucket"
    name: str  # JOBS, job-queue, ...
    config: object  # nats.js.api.StreamConfig
    keys: dict  # setting -> the configuration key it comes from

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Difference:
    """One setting of one stream or bucket: the cluster's value and the configured one.

    ``setting == "exists"``: the object is missing (``cluster`` False, ``configured`` True).
    """

    kind: str
    name: str
    setting: str
    cluster: object
    configured: object
    key: str | None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "setting": self.setting, "cluster": self.cluster,
                "configured": self.configured, "key": self.key}


def _normal(attr: str, value):
    """A StreamConfig value in one comparable, JSON-able form (seconds, -1 for unlimited, enum values)."""
    import enum

    if attr in _LIMITS:
        return UNLIMITED if value is None or value < 0 else int(value)
    if attr in _DURATIONS:
        return float(value or 0)
    if attr == "subjects":
        return sorted(value or [])
    if attr == "num_replicas":
        return int(value or 1)
    if attr in _ENUMS:
        value = _ENUMS[attr] if value is None else value
        return str(value.value if isinstance(value, enum.Enum) else value)
    return bool(value)


def show_value(setting: str, value) -> str:
    """A value for people: ``24h``, ``unlimited``, ``jobs.>``."""
    from osapi.config import format_duration

    if isinstance(value, bool):
        return "yes" if value else "no"
    if setting in _DURATIONS:
        return format_duration(value) if value else "unlimited"
    if setting in _LIMITS and value == UNLIMITED:
        return "unlimited"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def differences(wanted: Wanted, cluster_config) -> list[Difference]:
    """Every setting where the existing stream (``cluster_config``) differs from ``wanted``."""
    out = []
    for setting, attr in SETTINGS:
        configured = getattr(wanted.config, attr)
        if attr in _IF_SET and not configured:
            continue
        mine, theirs = _normal(attr, configured), _normal(attr, getattr(cluster_config, attr, None))
        if mine != theirs:
            out.append(Difference(wanted.kind, wanted.name, setting, theirs, mine, wanted.keys.get(setting)))
    return out


def warn_differences(found: list[Difference], warned: set | None = None) -> None:
    """One warning per setting that the configuration disagrees with NATS.

    ``warned``: differences already warned about (the caller keeps it: a process that
    sets up again after each reconnect warns once, not at every reconnect).
    """
    warned = set() if warned is None else warned
    for diff in found:
        seen = (diff.label, diff.setting, repr(diff.cluster), repr(diff.configured))
        if seen in warned:
            continue
        warned.add(seen)
        key = f" ({diff.key})" if diff.key else ""
        log.warning("%s: %s is %s in NATS but %s in this process's configuration%s; keeping %s "
                    "(`osapi job setup --apply` changes it to the configured value)",
                    diff.label, diff.setting, show_value(diff.setting, diff.cluster),
                    show_value(diff.setting, diff.configured), key, show_value(diff.setting, diff.cluster))


async def ensure_stream(js, wanted: Wanted, warned: set | None = None):
    """Create the stream if it is missing; never change an existing one. Returns its StreamInfo.

    An existing stream whose settings differ from ``wanted`` is used as it is, with
    one warning per differing setting (``warn_differences``).
    """
    import nats.errors
    import nats.js.errors as jse

    try:
        return await js.add_stream(wanted.config)
    except jse.APIError as exc:
        if exc.err_code in NOT_ENOUGH_PEERS:
            raise _cluster_not_ready(wanted, exc) from None
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    except nats.errors.TimeoutError:
        raise _cluster_not_ready(wanted, None) from None
    info = await js.stream_info(wanted.config.name)
    found = differences(wanted, info.config)
    warn_differences(found, warned)
    if not found:
        log.debug("%s exists with settings osapi does not compare; using it as it is", wanted.label)
    return info


def _cluster_not_ready(wanted: Wanted, exc) -> Exception:
    """Why a stream could not be created while a JetStream cluster forms or misses servers: the
    API and workers log it and try again (they never give up), so it says what they wait for."""
    from osapi.domain.errors import NatsUnavailable

    replicas = int(wanted.config.num_replicas or 1)
    if exc is None:
        return NatsUnavailable(
            f"JetStream did not answer the creation of {wanted.label}: a cluster answers only once it has "
            "a meta leader (a majority of its servers up and connected by their routes); waiting for it")
    key = wanted.keys.get("replicas", "job.*.replicas")
    return NatsUnavailable(
        f"JetStream cannot place {wanted.label} on {replicas} servers ({key} = {replicas}): fewer than "
        f"{replicas} servers of the cluster are up ({exc.description or exc}); waiting for them")


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


def _keys(section: str, **extra: str) -> dict:
    keys = {"storage": f"job.{section}.storage", "replicas": f"job.{section}.replicas"}
    keys.update(extra)
    return keys


def wanted_streams(cfg) -> list[Wanted]:
    """Every stream and bucket osapi needs, as ``job.*`` configures them, in a fixed order."""
    from nats.js import api

    names = Names.from_config(cfg)
    job = cfg.job
    kv = job.kv
    jobs_stream = api.StreamConfig(
        name=names.stream,
        subjects=[job.stream_subjects],
        retention=api.RetentionPolicy.LIMITS,
        max_age=job.stream.max_age,
        max_msgs=job.stream.max_msgs,
        storage=api.StorageType(job.stream.storage),
        num_replicas=job.stream.replicas,
        discard=api.DiscardPolicy(job.stream.discard),
        duplicate_window=min(DUPLICATE_WINDOW, job.stream.max_age),
        max_consumers=JOBS_MAX_CONSUMERS,
    )
    dlq_stream = api.StreamConfig(
        name=names.dlq_stream,
        subjects=[names.dlq_subject],
        retention=api.RetentionPolicy.LIMITS,
        max_age=job.dlq.max_age,
        max_msgs=job.dlq.max_msgs,
        storage=api.StorageType(job.dlq.storage),
        num_replicas=job.dlq.replicas,
        discard=api.DiscardPolicy.OLD,
    )
    audit_stream = api.StreamConfig(
        name=AUDIT_STREAM,
        subjects=[AUDIT_SUBJECTS],
        retention=api.RetentionPolicy.LIMITS,
        max_age=cfg.audit.max_age,
        storage=api.StorageType.FILE,
        num_replicas=cfg.audit.replicas,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW,  # an entry re-sent after a lost ack is stored once (Nats-Msg-Id)
        allow_direct=True,
    )
    kv_keys = _keys("kv", max_age="job.kv.ttl", max_bytes="job.kv.max_bytes")
    return [
        Wanted("stream", names.stream, jobs_stream,
               _keys("stream", subjects="job.stream_subjects", max_age="job.stream.max_age",
                     max_msgs="job.stream.max_msgs", discard="job.stream.discard")),
        Wanted("stream", names.dlq_stream, dlq_stream,
               _keys("dlq", max_age="job.dlq.max_age", max_msgs="job.dlq.max_msgs")),
        Wanted("bucket", names.jobs_bucket,
               _kv_stream_config(names.jobs_bucket, kv.ttl, kv.max_bytes, kv.storage, kv.replicas), kv_keys),
        Wanted("bucket", names.responses_bucket,
               _kv_stream_config(names.responses_bucket, kv.ttl, kv.max_bytes, kv.storage, kv.replicas), kv_keys),
        Wanted("bucket", names.registry_bucket,
               _kv_stream_config(names.registry_bucket, REGISTRY_MAX_AGE, kv.max_bytes, kv.storage, kv.replicas),
               {k: v for k, v in kv_keys.items() if k != "max_age"}),  # its max_age is osapi's own
        Wanted("bucket", names.idempotency_bucket,
               _kv_stream_config(names.idempotency_bucket, kv.ttl, kv.max_bytes, kv.storage, kv.replicas), kv_keys),
        Wanted("bucket", names.rollouts_bucket,
               _kv_stream_config(names.rollouts_bucket, kv.ttl, kv.max_bytes, kv.storage, kv.replicas), kv_keys),
        Wanted("bucket", names.fleet_bucket,
               _kv_stream_config(names.fleet_bucket, None, kv.max_bytes, kv.storage, kv.replicas),
               {k: v for k, v in kv_keys.items() if k != "max_age"}),  # enrollments never expire
        Wanted("stream", AUDIT_STREAM, audit_stream, {"max_age": "audit.max_age", "replicas": "audit.replicas"}),
    ]


def _kv_handle(js, bucket: str, info):
    from osapi.job import natsadapter

    return natsadapter.kv_handle(js, bucket, Names.kv_stream(bucket), direct=bool(info.config.allow_direct))


async def ensure_all(js, cfg, update_consumers: bool = True, warned: set | None = None) -> dict:
    """Streams, buckets and the shared consumers. Returns the KV handles by role.

    Missing streams and buckets are created; existing ones are never changed
    (differences are warned about: ``osapi job setup`` changes them).
    ``update_consumers=False`` (the API): an existing consumer is left as the workers set it.
    ``warned``: see ``warn_differences``.
    """
    names = Names.from_config(cfg)
    infos = {}
    for wanted in wanted_streams(cfg):
        infos[wanted.kind, wanted.name] = await ensure_stream(js, wanted, warned)
    kv = {role: _kv_handle(js, bucket, infos["bucket", bucket]) for role, bucket in (
        ("jobs", names.jobs_bucket), ("responses", names.responses_bucket), ("registry", names.registry_bucket),
        ("idempotency", names.idempotency_bucket), ("rollouts", names.rollouts_bucket),
        ("fleet", names.fleet_bucket))}
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
    config.num_replicas = HOST_CONSUMER_REPLICAS
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
    ``update=False``: create it only if it is missing; an existing one is not touched.
    An existing consumer that already has every setting of ``config`` is not updated: an
    update is a proposal through the cluster's meta leader, and a fleet's workers starting
    together would send one per worker and shared consumer (docs/fleet-scale.md)."""
    import nats.js.errors as jse

    try:
        info = await js.consumer_info(stream, config.name)
        if not update or _has_settings(info.config, config):
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


def _has_settings(found, wanted) -> bool:
    """Whether the consumer config ``found`` (from NATS) has every setting ``wanted`` sets (not None).

    Metadata: the keys ``wanted`` sets (the server adds its own). Durations: to the
    microsecond (they travel as nanoseconds). Anything that differs means an update.
    """
    import dataclasses

    for field in dataclasses.fields(wanted):
        value = getattr(wanted, field.name)
        if value is None:
            continue
        have = getattr(found, field.name, None)
        if field.name == "metadata":
            if any((have or {}).get(k) != v for k, v in value.items()):
                return False
        elif isinstance(value, float) and isinstance(have, (int, float)):
            if abs(value - have) > 1e-6:
                return False
        elif isinstance(value, list) and isinstance(have, list) and value and isinstance(value[0], float):
            if len(value) != len(have) or any(abs(a - b) > 1e-6 for a, b in zip(value, have)):
                return False
        elif have != value:
            return False
    return True


# ---------------------------------------------------------------- `osapi job setup`


async def plan(js, cfg) -> list[Difference]:
    """What differs between NATS and the configuration, missing objects included. Changes nothing."""
    import nats.js.errors as jse

    found: list[Difference] = []
    for wanted in wanted_streams(cfg):
        try:
            info = await js.stream_info(wanted.config.name)
        except jse.NotFoundError:
            found.append(Difference(wanted.kind, wanted.name, "exists", False, True, None))
            continue
        found.extend(differences(wanted, info.config))
    return found


async def apply(js, cfg, found: list[Difference]) -> list[dict]:
    """Create or update every stream and bucket named in ``found`` to the configured settings.

    One result per object: ``{kind, name, action: create|update, status: ok|failed, error}``.
    A refused update (storage cannot change in place) fails that object only.
    """
    import nats.js.errors as jse

    results = []
    for wanted in wanted_streams(cfg):
        mine = [d for d in found if (d.kind, d.name) == (wanted.kind, wanted.name)]
        if not mine:
            continue
        action = "create" if any(d.setting == "exists" for d in mine) else "update"
        result = {"kind": wanted.kind, "name": wanted.name, "action": action, "status": "ok", "error": None}
        try:
            if action == "create":
                await js.add_stream(wanted.config)
            else:
                await js.update_stream(wanted.config)
            log.info("%s: %s the configured settings", wanted.label,
                     "created with" if action == "create" else "updated to")
        except jse.APIError as exc:
            result.update(status="failed", error=str(exc.description or exc))
        results.append(result)
    return results
