"""``osapi client job …``: submit, inspect, list, delete and run jobs; queue status; workers."""

from __future__ import annotations

import json
import time

from osapi.cli import Context
from osapi.cli.client import (
    EXIT_HELP, add_target, api, check_failed, check_target, command, duration_arg, group, int_range,
)
from osapi.errors import OperationError, UsageError

FINAL = ("completed", "failed", "partial_failure")
STATUSES = ("submitted", "processing", "completed", "failed", "partial_failure")
MAX_LIST_LIMIT = 1000  # GET /jobs: limit 1-1000 (CONTRACT §4.3)
FIRST_POLL_DELAY = 0.05  # job run: the second check, 50 ms after the first
JOB_ID_HELP = "the job's id (from job add, job list or an error message)"

JOB_FILE_HELP = """\
The JSON file holds an operation, e.g.
  {"type": "system.hostname.get", "data": {}}
  {"type": "network.ping.do", "data": {"address": "127.0.0.1", "count": 1}}
or a whole job body {"operation": {...}, "target_hostname": "_all"}. A
--target-hostname that differs from the file's target is refused (exit 2), as
the REST API refuses a conflicting target. "-" reads standard input.
"""

RUN_HELP = """\
Submits the job and checks GET /jobs/{id} at once, then after 50 ms, doubling
the wait up to --poll-interval, until the job is completed, failed or
partial_failure, and prints each host's result. Durations take a unit (500ms,
30s, 5m, 1h) or are a plain number of seconds.
When no live worker matches the target (GET /jobs/workers: a hostname, or a
label such as group:web that matches group=web, web.dev, ...), it says so at
once on stderr and keeps waiting: the job stays queued for a worker that
registers later.
With --json it prints the job as the last GET /jobs/{id} returned it.

Exit status: 0 the job completed; 1 the job failed, partially failed or did
not finish within --timeout (the message says which; the job keeps running on
the workers), or the API was unreachable, answered an error or rejected the
token; 2 usage or configuration error.
"""

STATUS_HELP = """\
On a terminal the view refreshes every --poll-interval-seconds until Ctrl-C
(which exits 0). With --once, or when stdout is not a terminal, it prints one
snapshot and exits.
"""


NAME = "job"
HELP = "submit and inspect jobs, queue status, workers"


def register(client) -> None:
    job = group(client, NAME, HELP)

    add = command(job, "add", "submit a job; prints its id and status", add_cmd,
                  epilog=JOB_FILE_HELP + "\n" + EXIT_HELP)
    add.add_argument("--json-file", required=True, metavar="F", help="the operation as JSON ('-': stdin)")
    add_target(add, default=None)

    get = command(job, "get", "show a job: status, hosts, results, timeline", get_cmd)
    get.add_argument("--job-id", required=True, metavar="ID", help=JOB_ID_HELP)

    lst = command(job, "list", "list jobs, newest first", list_cmd)
    lst.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    lst.add_argument("--limit", type=int_range(1, MAX_LIST_LIMIT), default=10, metavar="N",
                     help=f"jobs per page, 1-{MAX_LIST_LIMIT} (default: 10)")
    lst.add_argument("--offset", type=int_range(0), default=0, metavar="N", help="jobs to skip (default: 0)")

    delete = command(job, "delete", "delete a job, its events and its results", delete_cmd,
                     epilog="The API answers 204 with no body, so with --json nothing is printed.\n\n" + EXIT_HELP)
    delete.add_argument("--job-id", required=True, metavar="ID", help=JOB_ID_HELP)

    run = command(job, "run", "submit a job, wait for it and print each host's result", run_cmd,
                  epilog=JOB_FILE_HELP + "\n" + RUN_HELP)
    run.add_argument("--json-file", required=True, metavar="F", help="the operation as JSON ('-': stdin)")
    add_target(run, default=None)
    run.add_argument("-t", "--timeout", type=duration_arg, default=60.0, metavar="DURATION",
                     help="give up waiting after this long, e.g. 90s or 5m (default: 60s)")
    run.add_argument("-p", "--poll-interval", type=duration_arg, default=2.0, metavar="DURATION",
                     help="the longest wait between two checks of the job's status (default: 2s)")

    status = command(job, "status", "queue statistics: jobs per status and operation, dead letters", status_cmd,
                     epilog=STATUS_HELP + "\n" + EXIT_HELP)
    status.add_argument("--poll-interval-seconds", type=duration_arg, default=30.0, metavar="DURATION",
                        help="refresh interval of the live view, e.g. 30s or 1m (default: 30s)")
    status.add_argument("--once", action="store_true", help="print one snapshot and exit")

    workers = group(job, "workers", "the workers registered with the job system")
    command(workers, "list", "list registered workers: hostname, labels, version, last heartbeat", workers_cmd)


# ---------------------------------------------------------------- the job file


def read_job_file(ctx: Context) -> tuple[dict, str]:
    """The operation and target from ``--json-file`` (and ``--target-hostname``)."""
    path = ctx.args.json_file
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            text = ctx.env.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"--json-file {path}: cannot read it: {reason}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
        reason = getattr(exc, "msg", str(exc))
        raise UsageError(f"--json-file: {name} is not valid JSON{where}: {reason}") from None
    if isinstance(data, dict) and "operation" in data:
        operation, file_target = data["operation"], data.get("target_hostname")
    elif isinstance(data, dict) and "type" in data:
        operation, file_target = data, None
    else:
        raise UsageError(
            f"--json-file: {name} must hold an operation object such as "
            '{"type": "system.hostname.get", "data": {}}, or {"operation": {...}, "target_hostname": "..."}'
        )
    return operation, job_target(ctx.args.target, file_target, name)


def job_target(flag: str | None, file_target, name: str) -> str:
    """The target to send: the flag's or the file's (``_any`` when neither); both: they must agree.

    Silently preferring one of two different targets could run a change on the
    wrong hosts, so a conflict is refused, as the REST API refuses one.
    """
    if file_target is not None:
        if not isinstance(file_target, str):
            raise UsageError(f"--json-file: target_hostname in {name} must be a string, got {file_target!r}")
        try:
            check_target(file_target)
        except ValueError as exc:
            raise UsageError(f"--json-file: target_hostname in {name}: {exc}") from None
    if flag is None:
        return file_target or "_any"
    if file_target is not None and not _same_target(flag, file_target):
        raise UsageError(f"conflicting targets: file says {file_target}, -T says {flag}",
                         "drop one of them, or make them the same")
    return flag


def _same_target(a: str, b: str) -> bool:
    """Whether two valid targets name the same workers (host names compare case-insensitively)."""
    from osapi.job.subjects import parse_target

    return parse_target(a).token == parse_target(b).token


# ---------------------------------------------------------------- commands


def add_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    operation, target = read_job_file(ctx)
    ctx.emit(api(ctx).job_create(operation, target), fmt.job_created)


def get_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    ctx.emit(api(ctx).job_get(ctx.args.job_id), fmt.job_detail)


def list_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    args = ctx.args
    body = api(ctx).job_list(args.status, args.limit, args.offset)
    ctx.emit(body, lambda b: fmt.job_list(b, args.offset))


def delete_cmd(ctx: Context) -> None:
    api(ctx).job_delete(ctx.args.job_id)  # 204: no body, so --json prints nothing
    if not ctx.json:
        ctx.print(f"job {ctx.args.job_id} deleted")


def run_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    args = ctx.args
    timeout, interval = args.timeout, args.poll_interval
    operation, target = read_job_file(ctx)
    client = api(ctx)
    created = client.job_create(operation, target)
    job_id = created.get("job_id") if isinstance(created, dict) else None
    if not job_id:
        raise OperationError(f"the API accepted the job but sent no job_id: {created!r}")
    deadline = time.monotonic() + timeout
    warn_if_no_live_worker(ctx, client, target, job_id, timeout)
    delays = poll_delays(interval)
    while True:
        job = client.job_get(job_id)
        status = job.get("status")
        remaining = deadline - time.monotonic()
        if status in FINAL or remaining <= 0:
            break
        time.sleep(min(next(delays), remaining))

    results = fmt.job_results(job)
    ctx.emit(job, lambda j: f"job {job_id}: {status}\n\n" + fmt.view_for(fmt.job_type(j))(results))
    hint = f"see `osapi client job get --job-id {job_id}`"
    if status not in FINAL:
        raise OperationError(f"job {job_id} did not finish within {timeout:g}s (status: {status})", hint)
    if status in ("failed", "partial_failure"):
        failed = fmt.failed_hosts(results)
        detail = ""
        if failed:
            detail = ": " + "; ".join(f"{item.get('hostname')}: {item.get('error')}" for item in failed)
        elif job.get("error"):
            detail = f": {job.get('error')}"
        raise OperationError(f"job {job_id} {status.replace('_', ' ')}{detail}", hint)
    check_failed(results)


def warn_if_no_live_worker(ctx: Context, client, target: str, job_id: str, timeout: float) -> None:
    """Say on stderr, at once, when the worker registry lists no live worker for ``target``.

    The job stays queued (a matching worker that registers later runs it) and the
    command keeps waiting as usual. The registry is only advice here: when it
    cannot be read, nothing is said.
    """
    from osapi.client import ApiError

    try:
        registry = client.workers()
    except ApiError:
        return
    if live_workers_for(registry, target):
        return
    ctx.env.stderr.write(
        f"osapi: warning: no live worker matches target {target}; job {job_id} stays queued until one "
        f"registers (waiting up to {timeout:g}s; see `osapi client job workers list`)\n")
    ctx.env.stderr.flush()


def live_workers_for(registry, target: str) -> list[str]:
    """The hostnames in a ``GET /jobs/workers`` body that receive ``target``'s jobs (the job system's rules)."""
    from osapi.job.subjects import parse_target

    parsed = parse_target(target)
    workers = registry.get("workers") if isinstance(registry, dict) else None
    return [w["hostname"] for w in workers or []
            if isinstance(w, dict) and isinstance(w.get("hostname"), str)
            and parsed.matches(w["hostname"], w.get("labels") if isinstance(w.get("labels"), dict) else None)]


def poll_delays(interval: float):
    """The waits between checks of a running job: 50 ms, doubling, then ``interval`` for good.

    A job of a few milliseconds is seldom done at the check right after submitting
    (the worker has not even picked it up), and it should not then cost a whole
    --poll-interval; a long job soon settles at one check per interval.
    """
    delay = min(FIRST_POLL_DELAY, interval)
    while True:
        yield delay
        delay = min(delay * 2, interval)


def status_cmd(ctx: Context) -> int:
    from osapi.cli import client_format as fmt
    from osapi.cli.output import dump_json

    interval = ctx.args.poll_interval_seconds
    client = api(ctx)
    if ctx.args.once or not ctx.env.stdout_isatty:
        ctx.emit(client.job_stats(), fmt.job_stats)
        return 0
    return live(ctx, client, interval, lambda body: dump_json(body) if ctx.json else fmt.job_stats(body))


def live(ctx: Context, client, interval: float, render) -> int:
    """Redraw the queue statistics every ``interval`` seconds until Ctrl-C (exit 0).

    A passing failure (API restarting, NATS away) is shown in the view and retried;
    a rejected token is not going to get better, so it ends the command.
    """
    from osapi.client import ApiError

    out = ctx.env.stdout
    try:
        while True:
            try:
                text = render(client.job_stats())
            except ApiError as exc:
                if exc.status in (401, 403):
                    raise
                text = f"error: {exc}"
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"osapi job status  {client.url}  {stamp}  (every {interval:g}s, Ctrl-C to quit)"
            out.write("\x1b[H\x1b[2J" + header + "\n\n" + text + "\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return 0


def workers_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    ctx.emit(api(ctx).workers(), fmt.workers)
