"""The job system on NATS JetStream (CONTRACT §5).

Read top to bottom, the modules follow a job:

``operations.py``  the one table: type → kind, validation, provider function
``subjects.py``    targets (``_any``, ``_all``, ``key:value``, hostname) → subjects
``connection.py``  one long-lived, self-reconnecting NATS connection per process
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

JetStream objects (names from ``job.*``; defaults shown):

==========================  ====================================================
``JOBS``                    stream on ``jobs.>``: the job id on
                            ``jobs.<query|modify>.<_any|_all|host.<h>|label.<k>.<v…>>``
``KV_job-queue``            ``jobs.<id>`` (immutable), ``status.<id>.<event>.<host>.<nanos>``
``KV_job-responses``        ``<id>.<host>``: ``{status: ok|failed, data, error, …}``
``KV_job-queue-workers``    the worker registry, ``<host>.<instance>``
``JOBS_DLQ``                ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.>``
``jobs-worker-any``         durable, whole fleet, ``jobs.*._any``
``jobs-worker-host-<host>`` durable per host: ``_all``, its name, every label prefix;
                            removed by the server after 7 days unused (``setup.py``)
``jobs-worker-dlq``         durable on the DLQ, whole fleet
==========================  ====================================================

Delivery is at least once, results are per host and final. Retried: a worker
that dies or stays silent past ``job.consumer.ack_wait`` (redelivery), and a
provider raising ``RetryableError`` (negative ack after the
``job.consumer.back_off`` delay of that delivery). Not retried: any other
provider exception — the job fails on that host with the message. After
``job.consumer.max_deliver`` deliveries the server gives up, the advisory lands
in the DLQ, and a worker marks the job ``failed`` for that host. A running job
sends in-progress acks every ``ack_wait/3``, so long jobs are not redelivered;
nothing bounds a provider's run time except the provider itself.

``ack_wait`` and ``back_off`` are applied separately on purpose: JetStream would
replace ``ack_wait`` by the first ``back_off`` value if both were given to the
consumer, and then a dead worker would be noticed after 30 s instead of 2 m
(or the reverse).

Workers create and update the shared consumers from their ``job.consumer.*``;
the API only creates a missing one. Streams and buckets are written by every
process that sets up (API and workers): keep ``job.*`` the same on every host
of a fleet.

Where the contract is silent, the choices are documented next to the code:
broadcast hosts that never answer (``status.py``, ``client.py``), fast 504s when
no live worker matches, the expiry of synchronous jobs (``client.py``),
redeliveries of a job still running elsewhere and hand-backs at SIGTERM
(``worker.py``), foreign consumers' dead letters (``deadletter.py``).
"""
