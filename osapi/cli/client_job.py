"""``osapi client job …``: submit, inspect, list, delete and run jobs; queue status; workers."""

from __future__ import annotations

import json
import time
from typing import Any

from osapi.cli import Context
from osapi.cli.client import (
    EXIT_HELP, ROLLOUT_HELP, add_rollout, add_target, api, check_failed, check_target, command, duration_arg,
    group, int_range, rollout_of,
)
from osapi.errors import NoResponseError, OperationError, UsageError

FINAL = ("completed", "failed", "partial_failure")
STATUSES = ("submitted", "processing", "completed", "failed", "partial_failure")
MAX_LIST_LIMIT = 1000  # GET /jobs: limit 1-1000 (README "REST API")
FIRST_POLL_DELAY = 0.05  # job run: the second check, 50 ms after the first
JOB_ID_HELP = "the job's id (from job add, job list or an error message)"

JOB_FILE_HELP = """\
The JSON file holds an operation, e.g.
  {"type": "system.hostname.get", "data": {}}
  {"type": "network.ping.do", "data": {"address": "127.0.0.1", "count": 1}}
or a whole job body {"operation": {...}, "target_hostname": "_all"}. A
--target-hostname that differs from the file's target is refused (exit 2), as
the REST API refuses a conflicting target. "-" reads standard input.
--dry-run (or "dry_run": true in a whole job body) asks a modify operation
(network.dns.update) to compute its change on each host and apply nothing;
a query with a dry run is refused by the API (exit 1).
"""
DRY_RUN_HELP = "compute the change on each host and apply nothing (modify operations only)"

RUN_HELP = """\
Submits the job and checks GET /jobs/{id} at once, then after 50 ms, doubling
the wait up to --poll-interval, until the job is completed, failed or
partial_failure, and prints each host's result. When stderr is a terminal
(and without --json) it follows the job's event stream (GET /jobs/{id}/events)
instead and shows each host's progress on stderr as it happens, one line per
event; if the stream fails it checks GET /jobs/{id} as above. Durations take a unit (500ms,
30s, 5m, 1h) or are a plain number of seconds.
When no live worker matches the target (GET /jobs/workers: a hostname, or a
label such as group:web that matches group=web, web.dev, ...), it says so at
once on stderr and keeps waiting: the job stays queued for a worker that
registers later.
With --json it prints the job as the last GET /jobs/{id} returned it.
A broadcast waits for every host the worker registry listed for the target;
one silent for api.server.job_timeout after submission is no_response.

Exit status: 0 the job completed (every host ok); 1 a host failed, the job
did not finish within --timeout (the message says which; the job keeps
running on the workers), or the API was unreachable, answered an error or
rejected the token; 2 usage or configuration error; 3 no host failed but some
did not answer (retry them with `osapi client job retry --job-id ID`).
"""

RETRY_HELP = """\
Submits a new job with the same operation and data, sent to exactly the hosts
of the job whose state (see `job get`) is one of --only: failed, no_response
(listed by the worker registry but silent for api.server.job_timeout) or
skipped. Prints the new job's id and its hosts; follow it with
`osapi client job get --job-id NEW`. When no host is in those states the API
answers 409 and nothing is submitted. A no_response host still has the
original job queued: if it comes back it runs both (a change twice).
"""
RETRYABLE = ("failed", "no_response", "skipped")

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
                  epilog=JOB_FILE_HELP + "\n" + ROLLOUT_HELP + "\n" + EXIT_HELP)
    add.add_argument("--json-file", required=True, metavar="F", help="the operation as JSON ('-': stdin)")
    add_target(add, default=None)
    add.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    add_rollout(add)
    add.add_argument("--idempotency-key", metavar="KEY", type=idempotency_key,
                     help="send this Idempotency-Key: running the same command again with the same key and "
                          "file answers the first job instead of submitting another (1-200 printable ASCII)")

    get = command(job, "get", "show a job: status, hosts, results, timeline", get_cmd)
    get.add_argument("--job-id", required=True, metavar="ID", help=JOB_ID_HELP)

    lst = command(job, "list", "list jobs, newest first", list_cmd)
    lst.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    lst.add_argument("--limit", type=int_range(1, MAX_LIST_LIMIT), default=10, metavar="N",
                     help=f"jobs per page, 1-{MAX_LIST_LIMIT} (default: 10)")
    lst.add_argument("--offset", type=int_range(0), default=0, metavar="N", help="jobs to skip (default: 0)")

    retry = command(job, "retry", "run a job again on its failed, silent or skipped hosts only", retry_cmd,
                    epilog=RETRY_HELP + "\n" + EXIT_HELP)
    retry.add_argument("--job-id", required=True, metavar="ID", help=JOB_ID_HELP)
    retry.add_argument("--only", type=retry_states, metavar="STATES",
                       help=f"comma-separated host states to retry: {', '.join(RETRYABLE)} (default: all three)")

    delete = command(job, "delete", "delete a job, its events and its results", delete_cmd,
                     epilog="The API answers 204 with no body, so with --json nothing is printed.\n\n" + EXIT_HELP)
    delete.add_argument("--job-id", required=True, metavar="ID", help=JOB_ID_HELP)

    run = command(job, "run", "submit a job, wait for it and print each host's result", run_cmd,
                  epilog=JOB_FILE_HELP + "\n" + ROLLOUT_HELP + "\n" + RUN_HELP)
    run.add_argument("--json-file", required=True, metavar="F", help="the operation as JSON ('-': stdin)")
    add_target(run, default=None)
    run.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    add_rollout(run)
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


def idempotency_key(text: str) -> str:
    """``--idempotency-key``: checked as the API checks the header (a usage error, nothing sent)."""
    import argparse

    from osapi.job.idempotency import check_key

    try:
        return check_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        if data.get("dry_run") not in (None, True, False):
            raise UsageError(f"--json-file: dry_run in {name} must be true or false, got {data['dry_run']!r}")
        if data.get("dry_run"):
            ctx.args.dry_run = True
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
    from osapi.domain.subjects import parse_target

    return parse_target(a).token == parse_target(b).token


# ---------------------------------------------------------------- commands


def add_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    operation, target = read_job_file(ctx)
    rollout = rollout_of(ctx.args)
    ctx.emit(api(ctx).job_create(operation, target, ctx.args.dry_run, ctx.args.idempotency_key, rollout),
             fmt.job_created)


def get_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    ctx.emit(api(ctx).job_get(ctx.args.job_id), fmt.job_detail)


def list_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    args = ctx.args
    body = api(ctx).job_list(args.status, args.limit, args.offset)
    ctx.emit(body, lambda b: fmt.job_list(b, args.offset))


def retry_states(value: str) -> list[str]:
    """An argparse type: ``failed,no_response`` → ``["failed", "no_response"]`` (each a retryable state)."""
    import argparse

    states = [part.strip() for part in value.split(",") if part.strip()]
    bad = [s for s in states if s not in RETRYABLE]
    if not states or bad:
        shown = bad[0] if bad else value
        raise argparse.ArgumentTypeError(f"{shown!r} is not a host state to retry; use {', '.join(RETRYABLE)}")
    return list(dict.fromkeys(states))


def retry_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    ctx.emit(api(ctx).job_retry(ctx.args.job_id, ctx.args.only), fmt.job_retried)


def delete_cmd(ctx: Context) -> None:
    api(ctx).job_delete(ctx.args.job_id)  # 204: no body, so --json prints nothing
    if not ctx.json:
        ctx.print(f"job {ctx.args.job_id} deleted")


def run_cmd(ctx: Context) -> None:
    from osapi.cli import client_format as fmt

    args = ctx.args
    operation, target = read_job_file(ctx)
    rollout = rollout_of(args)
    client = api(ctx)
    created = client.job_create(operation, target, args.dry_run, rollout=rollout)
    wait_job(ctx, client, created, target, args.timeout, args.poll_interval)


def wait_job(ctx: Context, client, created: Any, target: str, timeout: float, interval: float) -> None:
    """Follow a job ``POST /jobs`` answered (``created``) to its end; print each host's result; exit status
    as ``job run`` documents it."""
    from osapi.cli import client_format as fmt

    job_id = created.get("job_id") if isinstance(created, dict) else None
    if not job_id:
        raise OperationError(f"the API accepted the job but sent no job_id: {created!r}")
    deadline = time.monotonic() + timeout
    warn_if_no_live_worker(ctx, client, target, job_id, timeout)
    job = None
    if ctx.env.stderr_isatty and not ctx.json:
        job = follow_events(ctx, client, job_id, deadline)
    delays = poll_delays(interval)
    while job is None or job.get("status") not in FINAL:
        job = client.job_get(job_id)
        remaining = deadline - time.monotonic()
        if job.get("status") in FINAL or remaining <= 0:
            break
        time.sleep(min(next(delays), remaining))
    status = job.get("status")

    results = fmt.job_results(job)
    ctx.emit(job, lambda j: f"job {job_id}: {status}\n\n" + fmt.results_view(fmt.job_type(j), results))
    hint = f"see `osapi client job get --job-id {job_id}`"
    if status not in FINAL:
        raise OperationError(f"job {job_id} did not finish within {timeout:g}s (status: {status})", hint)
    if status in ("failed", "partial_failure"):
        raise_if_only_silent(job)
        failed = fmt.failed_hosts(results)
        detail = ""
        if failed:
            detail = ": " + "; ".join(f"{item.get('hostname')}: {item.get('error')}" for item in failed)
        elif job.get("error"):
            detail = f": {job.get('error')}"
        raise OperationError(f"job {job_id} {status.replace('_', ' ')}{detail}", hint)
    check_failed(results, job_id)


def raise_if_only_silent(job: dict) -> None:
    """Exit 3 (``NoResponseError``) when no host of a finished job failed but some did not answer."""
    summary = job.get("summary") if isinstance(job.get("summary"), dict) else {}
    if summary.get("failed") != 0 or not summary.get("no_response"):
        return
    hosts = job.get("hosts") if isinstance(job.get("hosts"), dict) else {}
    silent = sorted(h for h, s in hosts.items() if isinstance(s, dict) and s.get("state") == "no_response")
    raise NoResponseError(
        f"job {job.get('id')}: {len(silent)} of {summary.get('targeted')} hosts did not answer: {', '.join(silent)}",
        f"retry them with `osapi client job retry --job-id {job.get('id')}`")


def follow_events(ctx: Context, client, job_id: str, deadline: float) -> dict | None:
    """Show each host's progress on stderr from the job's event stream; the job at its end.

    None when the stream fails or the deadline passes first: the caller then polls.
    """
    from osapi.cli import client_format as fmt
    from osapi.client import ApiError

    err = ctx.env.stderr
    try:
        for event, data in client.job_events(job_id):  # (None, None): an idle comment, a look at the clock
            if event == "end":
                return data if isinstance(data, dict) and data.get("status") in FINAL else None
            if event is not None and isinstance(data, dict):
                err.write(fmt.progress_line(event, data) + "\n")
                err.flush()
            if time.monotonic() >= deadline:
                return None
    except (ApiError, ValueError):
        return None
    return None


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
    from osapi.domain.subjects import parse_target

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
