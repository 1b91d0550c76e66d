"""``osapi job worker start``: run one worker in the foreground.

The worker's hostname is ``job.worker.hostname`` (default: the system
hostname), its labels ``job.worker.labels``, its concurrency
``job.worker.max_jobs``. SIGTERM or SIGINT: stop taking jobs, finish the running
ones within ``--grace``, exit 0; a second signal exits at once. If NATS closes
the connection for good (e.g. after its token was rotated) the worker exits 1,
so that its supervisor starts it again with a fresh connection.
"""

from __future__ import annotations

from osapi.cli import Context, add_group, add_parser
from osapi.errors import UsageError


def register(subparsers) -> None:
    job = add_group(subparsers, "job", "job-system processes (the worker)")
    worker = add_group(job, "worker", "the worker that runs jobs on this host")
    start = add_parser(worker, "start", "run one worker in the foreground until SIGTERM", epilog=(
        "Exit status: 0 after SIGTERM/SIGINT; 1 when NATS closed the connection for good "
        "(the supervisor restarts it); 2 usage or configuration error."))
    start.add_argument("--heartbeat", default="5s", metavar="DURATION",
                       help="registry heartbeat interval; a worker silent for 3 intervals drops out (default: 5s)")
    start.add_argument("--grace", default="30s", metavar="DURATION",
                       help="on SIGTERM, how long running jobs may take to finish (default: 30s)")
    start.set_defaults(func=start_worker)


def start_worker(ctx: Context) -> int:
    import asyncio
    import logging
    import os
    import signal

    from osapi import config
    from osapi.job.connection import describe
    from osapi.job.worker import Worker
    from osapi.supervise import exit_with_supervisor

    exit_with_supervisor()  # under supervise: never outlive a killed supervisord

    durations = {}
    for flag in ("heartbeat", "grace"):
        try:
            durations[flag] = config.parse_duration(getattr(ctx.args, flag))
        except config.Invalid as exc:
            raise UsageError(f"--{flag} {exc}") from None
    if durations["heartbeat"] < 1:
        raise UsageError(f"--heartbeat must be at least 1s, got {ctx.args.heartbeat!r}")
    cfg = ctx.config
    config.nats_token(cfg)  # a state-dir token another user could have written: exit 2 before starting
    worker = Worker(cfg, heartbeat=durations["heartbeat"], grace=durations["grace"])
    log = logging.getLogger("osapi.job.worker")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = {"count": 0}

        def on_signal(signum: int) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                logging.shutdown()
                os._exit(0)
            log.info("%s received", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await worker.serve(stop)

    log.info("starting worker %s (osapi nats at %s)", worker.hostname, describe(cfg))
    asyncio.run(main())
    if worker.abandoned:
        # provider threads still running past the grace: do not wait for them at exit
        logging.shutdown()
        os._exit(worker.exit_code)
    return worker.exit_code
