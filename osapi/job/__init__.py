"""The job system on NATS JetStream (docs/jobs.md: operations, storage layout,
status, delivery, dead letters, settings).

Read top to bottom, the modules follow a job:

``operations.py``  the one table: type → kind, validation, provider function
``subjects.py``    targets (``_any``, ``_all``, ``key:value``, hostname) → subjects
``connection.py``  one long-lived, self-reconnecting NATS connection per process
``natsadapter.py`` every nats-py internal osapi relies on
``setup.py``       streams, KV buckets, DLQ, consumers — idempotent, race-safe
``ids.py``         UUIDv7 job ids (their text sorts by creation time)
``store.py``       the KV layout: jobs, append-only status events, responses
``status.py``      status computed from events, and the job object
``statusindex.py`` every job's status for statistics and status filters, read incrementally
``client.py``      ``JobClient``: create, get, list, delete, stats, workers, run
``registry.py``    worker heartbeats with a per-message TTL
``worker.py``      ``osapi job worker start``: pull, run, report, ack
``deadletter.py``  max-deliveries advisories → ``failed`` jobs
``errors.py``      ``InvalidJob`` 400, ``JobNotFound`` 404, ``NatsUnavailable`` 503,
                   ``JobStoreFull`` 503, ``JobTimeout`` 504, ``RetryableError`` (for providers)
``testhooks.py``   test-only operations, unknown unless registered by test code or
                   ``OSAPITEST_HOOKS=1`` at start (then a warning is logged)
"""
