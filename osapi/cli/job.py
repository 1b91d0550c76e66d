"""``osapi job worker start``: run one worker in the foreground.
``osapi job setup [--apply]``: compare the streams and buckets in NATS with ``job.*``
and, when asked, change them (``osapi.job.setup.plan`` / ``apply``).

The worker's hostname is ``job.worker.hostname`` (default: the system
hostname), its labels ``job.worker.labels``, its concurrency
``job.worker.max_jobs``. SIGTERM or SIGINT: stop taking jobs, finish the running
ones within ``--grace``, exit 0; a second signal exits at once. If NATS closes
the connection for good (e.g. after its token was rotated) the worker exits 1,
so that its supervisor starts it again with a fresh connection.
"""

from __future__ import annotations

from osapi.cli import Context, add_group, add_parser
from osapi.errors import OperationError, UsageError

SETUP_HELP = """\
A worker or an API process creates the streams and buckets that are missing but
never changes existing ones: it logs one warning per setting where its
configuration differs from NATS. This command shows those differences (object,
setting, value in NATS, configured value, configuration key) for the job.*
configuration it is given, and --apply changes NATS to the configured values
(more or fewer replicas, limits, max_age, storage, discard). Storage cannot change
in place: such an update fails and names the stream. Consumers are not touched
(workers own their settings).

--apply asks for confirmation on a terminal unless --yes is given; without a
terminal on stdin it refuses (exit 2) and changes nothing, unless --yes is given.

Exit status: 0 nothing differs, or --apply changed everything; 1 differences
found (without --apply), an update failed, or NATS could not be reached; 2 usage
or configuration error, or --apply refused without a terminal and without --yes.
"""


NAME = "job"
HELP = "job-system processes (the worker) and the streams' settings"


def register(subparsers) -> None:
    job = add_group(subparsers, NAME, HELP)
    setup = add_parser(job, "setup", "show how the streams and buckets in NATS differ from job.*; --apply changes them",
                       epilog=SETUP_HELP)
    setup.add_argument("--apply", action="store_true",
                       help="create or update the streams and buckets to the configured settings")
    setup.add_argument("--yes", action="store_true", help="with --apply: do not ask for confirmation")
    setup.set_defaults(func=job_setup)
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
    from osapi.worker.worker import Worker
    from osapi.process import exit_with_supervisor

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
    from osapi.job.connection import tls_context

    tls_context(cfg)  # nats.tls.ca that is no readable CA: exit 2 before starting
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


# ---------------------------------------------------------------- `osapi job setup`


def job_setup(ctx: Context) -> int:
    import asyncio

    args = ctx.args
    if args.yes and not args.apply:
        raise UsageError("--yes only goes with --apply", "run `osapi job setup --apply --yes`")
    return asyncio.run(_job_setup(ctx))


async def _job_setup(ctx: Context) -> int:
    import asyncio

    import nats.errors

    from osapi.job import setup
    from osapi.job.connection import close, connect, describe

    cfg = ctx.config
    nc = await connect(cfg, "osapi-job-setup")
    report: dict = {"nats": describe(cfg), "differences": [], "applied": False, "results": []}
    try:
        js = nc.jetstream(timeout=10.0)
        try:
            found = await setup.plan(js, cfg)
            report["differences"] = [d.as_dict() for d in found]
            if found and ctx.args.apply:
                await asyncio.to_thread(_confirm, ctx, found)
                report["results"] = await setup.apply(js, cfg, found)
                report["applied"] = True
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise OperationError(f"cannot read or change the job streams in NATS at {describe(cfg)}: "
                                 f"{getattr(exc, 'description', None) or exc or type(exc).__name__}") from None
    finally:
        await close(nc)
    ctx.emit(report, _setup_text)
    if report["applied"]:
        return 1 if any(r["status"] != "ok" for r in report["results"]) else 0
    return 1 if found else 0


def _confirm(ctx: Context, found) -> None:
    """Ask on a terminal; refuse (exit 2) without one. Returns only when confirmed (or --yes)."""
    if ctx.args.yes:
        return
    objects = sorted({d.label for d in found})
    what = f"change {len(objects)} stream(s)/bucket(s) in NATS ({', '.join(objects)})"
    if not ctx.env.stdin_isatty:
        raise UsageError(f"refusing to {what} without confirmation: stdin is not a terminal; nothing was changed",
                         "add --yes to confirm")
    ctx.env.stderr.write(_differences_text(found) + f"\nAbout to {what} to the configured values.\nProceed? [y/N] ")
    ctx.env.stderr.flush()
    if ctx.env.stdin.readline().strip().lower() not in ("y", "yes"):
        raise OperationError("cancelled: nothing was changed")


def _differences_text(found) -> str:
    from osapi.cli.output import table
    from osapi.job.setup import show_value

    return table(("OBJECT", "SETTING", "IN NATS", "CONFIGURED", "KEY"), (
        (d.label, d.setting, show_value(d.setting, d.cluster), show_value(d.setting, d.configured), d.key or "-")
        for d in found))


def _setup_text(report: dict) -> str:
    from osapi.job.setup import Difference

    found = [Difference(**d) for d in report["differences"]]
    if not found:
        return f"no differences: every stream and bucket in NATS ({report['nats']}) matches the configuration"
    lines = [f"NATS at {report['nats']}", _differences_text(found)]
    if not report["applied"]:
        lines.append(f"{len(found)} difference(s); `osapi job setup --apply` changes NATS to the configured values")
        return "\n".join(lines)
    lines.append("")
    for result in report["results"]:
        done = f"{result['action']}d" if result["status"] == "ok" else f"{result['action']} FAILED: {result['error']}"
        lines.append(f"{result['kind']} {result['name']}: {done}")
    return "\n".join(lines)
