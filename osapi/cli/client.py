"""``osapi client …``: every REST API operation from the command line (README "Commands").

The commands of the operations (``client system …``, ``client network …``) are
generated from the operations table by ``client_ops``; ``client job …`` lives in
``client_job``. This module registers them and holds what they share: the
``--url`` and ``-T/--target`` options, building an ``osapi.client.ApiClient``
from the configuration, and printing per-host results with the exit status an
operator scripting this expects.

Start-up stays light: only the standard library, ``osapi.config`` and the
``osapi.client`` HTTP client are imported -- never nats, bottle, waitress or
psutil.
"""

from __future__ import annotations

import argparse
from typing import Any

from osapi.cli import Context, add_parser
from osapi.errors import ExitStatus, NoResponseError, OperationError, UsageError

TARGET_HELP = (
    "which workers run it: _any (one worker, the default), _all (every worker), "
    "a hostname, or key:value (workers whose label key equals value or starts with value.)"
)
EXIT_HELP = """\
Exit status: 0 success; 1 the operation failed (API unreachable or an API
error, token rejected); 2 usage or configuration error."""
# domain commands (system, network) answer per host: a failed host is an exit 1 of its own
HOSTS_EXIT_HELP = """\
Exit status: 0 every host ok; 1 the operation failed (API unreachable or an
API error, token rejected, or any targeted host failed -- the table is still
printed, failed hosts with their error); 2 usage or configuration error; 3 no
host failed but some did not answer (no_response: listed by the worker
registry, silent for api.server.job_timeout)."""


NAME = "client"
HELP = "talk to the osapi REST API: query and change hosts, manage jobs"


def register(subparsers) -> None:
    """``client`` and its command groups, each built only when the command line chooses it."""
    from osapi.cli import client_audit, client_fleet, client_job, client_ops

    client = group(subparsers, NAME, HELP)
    client_ops.register(client)
    for module in (client_job, client_audit, client_fleet):
        client.defer(module.NAME, module.HELP, module.register)


# ---------------------------------------------------------------- parser helpers


def add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", metavar="URL", default=argparse.SUPPRESS,
                        help="the API's base URL (default: api.client.url from osapi.yaml or OSAPI_API_CLIENT_URL)")


def group(subparsers, name: str, help: str, epilog: str = EXIT_HELP) -> Any:
    """A command group under ``client``: takes ``--url`` too; bare use prints its help."""
    parser = add_parser(subparsers, name, help, epilog=epilog)
    add_url(parser)
    parser.set_defaults(func=lambda ctx, p=parser: _group_help(ctx, p))
    return parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=type(parser))


def _group_help(ctx: Context, parser: argparse.ArgumentParser) -> int:
    ctx.env.stderr.write(parser.format_help())
    return ExitStatus.USAGE


def command(subparsers, name: str, help: str, func, epilog: str = EXIT_HELP, **kwargs) -> argparse.ArgumentParser:
    """A leaf command that takes the global flags and ``--url``."""
    parser = add_parser(subparsers, name, help, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_url(parser)
    # _logs=False: a client command prints its answer and logs nothing, so without -d (or
    # debug: true) main() does not set logging up (importing logging costs its start)
    parser.set_defaults(func=lambda ctx: _json_errors(ctx, func), _logs=False)
    return parser


def _json_errors(ctx: Context, func) -> Any:
    """Run ``func``; with ``--json`` an API error's body goes to stdout before the error rises.

    README "Commands": with --json, exactly the API response body on stdout -- that holds
    for the ``{error, details, code}`` envelope of a 4xx/5xx too. The one-line error
    still goes to stderr (the funnel in ``osapi.cli.main``) with the same exit
    status. No answer (connection refused, not HTTP): nothing on stdout.
    """
    try:
        return func(ctx)
    except OperationError as exc:  # osapi.client is imported by ``api()``, not before (see _http_only)
        from osapi.client import ApiError

        if isinstance(exc, ApiError) and ctx.json and exc.status is not None and exc.body is not None:
            ctx.print_json(exc.body)
        raise


def add_target(parser: argparse.ArgumentParser, default: str | None = "_any") -> None:
    parser.add_argument("-T", "--target", "--target-hostname", dest="target", metavar="TARGET",
                        type=target_arg, default=default, help=TARGET_HELP)


ROLLOUT_HELP = """\
Rollout (a multi-host target only: _all or key:value): --batch sends the job
to N hosts (or N% of them, rounded up) at a time, in hostname order, among
the hosts the worker registry lists at submission; the next batch starts when
every host of the previous one has finished (a host silent for
api.server.job_timeout is no_response) and --pause has passed. When more than
--max-failures hosts (N or N% of the targeted hosts; default 0) failed or did
not answer, no further batch starts and the remaining hosts are skipped.
"""


def add_rollout(parser: argparse.ArgumentParser) -> None:
    """``--batch``, ``--max-failures`` and ``--pause`` (``rollout_of`` makes the request's ``rollout``)."""
    parser.add_argument("--batch", type=rollout_arg("batch"), metavar="N|N%",
                        help="roll out in batches of N hosts or N%% of them (see Rollout below)")
    parser.add_argument("--max-failures", type=rollout_arg("max_failures"), metavar="N|N%",
                        help="with --batch: failed or silent hosts tolerated before the rollout stops (default: 0)")
    parser.add_argument("--pause", type=rollout_arg("pause"), metavar="DURATION",
                        help="with --batch: wait this long between batches, e.g. 30s or 5m (default: 0s)")


def rollout_arg(field: str):
    """An argparse type for one rollout field, checked as the API checks it (``osapi.job.rollout``)."""

    def parse(value: str):
        from osapi.job.errors import InvalidJob
        from osapi.job.rollout import check

        text = value.strip()
        candidate: Any = int(text) if field != "pause" and text.isdigit() else text
        try:
            check({"batch": 1, field: candidate})
        except InvalidJob as exc:
            raise argparse.ArgumentTypeError(str(exc).split(" must ", 1)[-1].join(("must ", ""))) from None
        return candidate

    return parse


def rollout_of(args) -> dict | None:
    """The ``rollout`` of a request from ``--batch``/``--max-failures``/``--pause``; None without ``--batch``."""
    if getattr(args, "batch", None) is None:
        if getattr(args, "max_failures", None) is not None or getattr(args, "pause", None) is not None:
            raise UsageError("--max-failures and --pause need --batch")
        return None
    rollout: dict[str, Any] = {"batch": args.batch}
    if args.max_failures is not None:
        rollout["max_failures"] = args.max_failures
    if args.pause is not None:
        rollout["pause"] = args.pause
    return rollout


# ---------------------------------------------------------------- argument types (bad values: exit 2, nothing sent)


def check_target(value: str) -> str:
    """``value`` unchanged if it is a target (docs/jobs.md, Targets and subjects), else ``ValueError`` saying why.

    ``osapi.job.subjects`` is the one definition of the target syntax; it imports only
    ``osapi.config`` and ``osapi.job.operations`` (no nats), so the client start stays light.
    """
    if value == "_any":  # the default of every -T (argparse checks it too): valid, no need to load the grammar
        return value
    from osapi.job.errors import InvalidJob
    from osapi.job.subjects import parse_target

    try:
        parse_target(value)
    except InvalidJob as exc:
        raise ValueError(str(exc).removeprefix("target_hostname ")) from None
    return value


def target_arg(value: str) -> str:
    try:
        return check_target(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def int_range(lo: int, hi: int | None = None):
    """An argparse type: an integer from ``lo`` to ``hi`` (no upper bound when None)."""

    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None
        if number < lo or (hi is not None and number > hi):
            what = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {number}")
        return number

    return parse


def duration_arg(value: str) -> float:
    """An argparse type: a duration like every other in osapi (``30s``, ``5m``, ``1h30m``,
    ``500ms``) or a plain number of seconds (``60``, ``0.5``); greater than zero."""
    from osapi.config import parse_duration

    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a duration such as 30s, 5m or 1h, or a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than zero, got {value!r}")
    return seconds


# ---------------------------------------------------------------- the API client


def api(ctx: Context):
    """An ``ApiClient`` for ``--url`` (else ``api.client.url``) with the resolved token."""
    cfg = ctx.config
    url = getattr(ctx.args, "url", None)
    _http_only(cfg.api.client.url if url is None else url)
    from osapi.client import ApiClient, check_url, resolve_token

    if url is not None:
        try:
            check_url(url)
        except ValueError as exc:
            raise UsageError(f"--url: {exc}") from None
    else:
        url = cfg.api.client.url
    token, source = resolve_token(cfg, ctx.env.environ)
    return ApiClient(url, token, token_source=source)


def _http_only(url: str) -> None:
    """For a plain http:// API, import ``http.client`` (used by ``osapi.client``) without ``ssl``.

    http.client imports ssl -- which loads libssl: about a tenth of the start of a
    client command -- only to define HTTPSConnection, and goes without it when ssl
    cannot be imported. So for an http:// URL it is imported here with ssl hidden
    (a None entry in ``sys.modules`` makes ``import ssl`` fail), then ssl is
    importable again. A process that imported either already keeps what it has;
    an https:// URL imports both as usual (and, in a process that imported
    http.client here before, imports it again: tests run many commands in one).
    """
    import sys

    module = sys.modules.get("http.client")
    if url.strip().lower().startswith("https:"):
        if module is not None and not hasattr(module, "HTTPSConnection"):
            import importlib

            importlib.reload(module)
        return
    if module is not None or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import http.client  # noqa: F401
    finally:
        del sys.modules["ssl"]


# ---------------------------------------------------------------- output


def show_results(ctx: Context, body: Any, op_type: str) -> None:
    """Print a synchronous domain answer; exit 1 (after printing) when any host failed."""
    from osapi.cli import client_format as fmt

    ctx.emit(body, lambda b: fmt.domain_answer(b, op_type))
    check_failed(fmt.domain_results(body), body.get("job_id") if isinstance(body, dict) else None)


def check_failed(results: list[dict], job_id: Any = None) -> None:
    """Exit 1 when any host failed, else 3 when some did not answer (README: exit statuses)."""
    failed = [item for item in results if item.get("status") == "failed"]
    silent = [item for item in results if item.get("status") == "no_response"]
    if failed:
        names = ", ".join(sorted(str(item.get("hostname")) for item in failed))
        also = f"; {len(silent)} did not answer" if silent else ""
        raise OperationError(f"{len(failed)} of {len(results)} hosts failed: {names}{also}")
    if silent:
        names = ", ".join(sorted(str(item.get("hostname")) for item in silent))
        raise NoResponseError(f"{len(silent)} of {len(results)} hosts did not answer: {names}",
                              f"retry them with `osapi client job retry --job-id {job_id or 'ID'}`")
