"""``osapi supervise [--workers N]`` and ``osapi supervise status|start|stop|restart``."""

from __future__ import annotations

from argparse import RawDescriptionHelpFormatter

from osapi.cli import ArgumentParser, Context, add_parser
from osapi.errors import UsageError

EPILOG = """\
State directory: supervise.state_dir (OSAPI_SUPERVISE_STATE_DIR), else /var/lib/osapi as
root, else ~/.local/state/osapi. It holds secrets/ (signing_key, admin.token valid 10
years, nats.token, supervisor.password: mode 0600, created once, never overwritten),
supervisord.conf, supervisor.sock, nats/ (JetStream storage) and logs/ (rotated at 10 MB, 5 kept).
It is created 0700; one of ours that is laxer is set to 0700. Exit 2, naming the path
and the fix, when the state dir, secrets/ or a secret belongs to another user, is
writable by group or others, or (a secret) is a symbolic link.
Programs start in the order nats, api, workers and stop in the reverse order; SIGTERM
(or `osapi supervise stop`) stops them all and exits 0.
"""

STOP_EPILOG = """\
Without NAME: stop the whole supervisor, as SIGTERM does -- the workers, then
the API, then NATS, each waiting for the previous -- and wait until supervise
has exited (at most the programs' stop timeouts plus 30 s). With NAME: stop
that program only; supervise keeps running and `start`/`restart NAME` brings it
back (`stop all` stops every program but keeps supervise itself running).
"""

NAME_HELP = "nats, api, worker (every worker), worker-N (or worker:worker-N) for one worker, or all"
CONTROL_EXIT = """\
Exit status: 0 done; 1 supervise is not running (the message names its socket)
or the program failed to change state; 2 unknown program name.
"""


NAME = "supervise"
HELP = "run nats-server, the REST API and the workers under supervisord (foreground)"


def register(subparsers) -> None:
    sup = add_parser(subparsers, NAME, HELP, epilog=EPILOG)
    sup.add_argument("--workers", type=int, metavar="N",
                     help="worker processes (1-64; default: supervise.workers)")
    sup.set_defaults(func=run)
    commands = sup.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgumentParser)

    status = add_parser(commands, "status", "show the supervised programs; exit 1 when supervise is not running")
    status.set_defaults(func=show_status)
    start = add_parser(commands, "start", "start a stopped program", epilog=CONTROL_EXIT,
                       formatter_class=RawDescriptionHelpFormatter)
    start.add_argument("name", metavar="NAME", help=NAME_HELP)
    start.set_defaults(func=control, action="start")
    stop = add_parser(commands, "stop", "stop the whole supervisor (no NAME) or one program (NAME)",
                      epilog=STOP_EPILOG + "\n" + CONTROL_EXIT, formatter_class=RawDescriptionHelpFormatter)
    stop.add_argument("name", metavar="NAME", nargs="?", help=NAME_HELP + "; omit it to stop supervise itself")
    stop.set_defaults(func=control, action="stop")
    restart = add_parser(commands, "restart", "stop, then start a program", epilog=CONTROL_EXIT,
                         formatter_class=RawDescriptionHelpFormatter)
    restart.add_argument("name", metavar="NAME", help=NAME_HELP)
    restart.set_defaults(func=control, action="restart")


def _programs_and_workers(ctx: Context) -> tuple[list[str], int]:
    cfg = ctx.config
    workers = cfg.supervise.workers if ctx.args.workers is None else ctx.args.workers
    if not 1 <= workers <= 64:
        raise UsageError(f"--workers must be from 1 to 64, got {workers}")
    return list(cfg.supervise.programs), workers


def run(ctx: Context) -> int:
    from osapi import supervise

    programs, workers = _programs_and_workers(ctx)
    flags = supervise.passthrough_flags(ctx.args.osapi_file, ctx.args.debug, ctx.args.json)
    return supervise.run(ctx.config, programs, workers, flags)


def _uptime(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def show_status(ctx: Context) -> int:
    from osapi import supervise
    from osapi.cli.output import table

    data = supervise.status(supervise.layout(ctx.config))
    ctx.emit(data, lambda d: f"supervisord {d['state']} (pid {d['pid']}, socket {d['socket']})\n" + table(
        ["NAME", "STATE", "PID", "UPTIME", "DESCRIPTION"],
        [(p["name"], p["state"], p["pid"] or "", _uptime(p["uptime_seconds"]), p["description"])
         for p in d["processes"]],
    ))
    return 0


def control(ctx: Context) -> int:
    """``start``/``stop``/``restart NAME``, or ``stop`` of the whole supervisor.

    ``--json`` prints the result: ``{action, name, processes}`` for a program
    (its status entries afterwards), ``{action, name: null, supervisord, stopped}``
    for the whole supervisor.
    """
    from osapi import supervise

    paths = supervise.layout(ctx.config)
    if ctx.args.name is None:
        data = supervise.shutdown(paths)
        ctx.emit(data, lambda d: "\n".join(
            [f"{name}: STOPPED" for name in d["stopped"]]
            + [f"supervisord (pid {d['supervisord']['pid']}): {d['supervisord']['state']}"]
        ))
        return 0
    data = supervise.control(paths, ctx.args.action, ctx.args.name)
    ctx.emit(data, lambda d: "\n".join(f"{p['name']}: {p['state']}" for p in d["processes"]))
    return 0
