"""The worker (``osapi job worker start``): takes jobs from JetStream and runs them
through the operations table (docs/jobs.md, "Workers and delivery").

Cut along its seams; ``worker.py``'s ``Worker`` puts them together:

``worker.py``      ``Worker``: connect (retried: ``osapi.retry``), set up, start the
                   loops below, stop and drain within the grace period
``consumer.py``    the two pull loops (``_any`` and this host's consumer), ``Slots``
``execution.py``   one delivery: read the job, run the provider, report, ack or nak
``redelivery.py``  a redelivery: finished already, held while a live instance runs it, or run
``deadletter.py``  max-deliveries advisories -> ``failed`` jobs, and the loop that reads them
``heartbeat.py``   the worker's entry in the registry (``osapi.job.registry``)
``common.py``      the log and the small helpers they share
"""
