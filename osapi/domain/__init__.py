"""The domain: what a job is, shared by the submitting side (API, client, CLI) and
the worker side. Pure Python: no NATS, no Bottle, no I/O.

``operations.py``  the one table: type -> kind, validation, provider function, surfaces
``subjects.py``    the target syntax (``_any``, ``_all``, ``key:value``, hostname) and
                   the subject each target is published on
``ids.py``         UUIDv7 job ids (their text sorts by creation time)
``errors.py``      ``InvalidJob`` 400, ``JobNotFound`` 404, ``NatsUnavailable`` 503,
                   ``JobStoreFull`` 503, ``JobTimeout`` 504, ``RetryableError`` (for providers)
"""
