"""The job system on NATS JetStream, the submitting side and the storage both
sides share (docs/jobs.md: storage layout, status, delivery, settings). What a
job is (operations, targets, ids, errors) is ``osapi.domain``; who runs it is
``osapi.worker``.

Read top to bottom, the modules follow a job:

``connection.py``  one long-lived, self-reconnecting NATS connection per process
``natsadapter.py`` every nats-py internal osapi relies on
``setup.py``       streams, KV buckets, DLQ, consumers — idempotent, race-safe
``store.py``       the KV layout: jobs, append-only status events, responses
``status.py``      status computed from events, and the job object
``statusindex.py`` every job's status for statistics and status filters, read incrementally
``idempotency.py`` ``Idempotency-Key``: one job per key and request body
``client.py``      ``JobClient``: create, get, list, delete, stats, workers, run
``rollout.py``     a multi-host job sent batch by batch, driven by the API
``watch.py``       a job's events as they are written (``GET /jobs/{id}/events``)
``registry.py``    worker heartbeats with a per-message TTL
"""
