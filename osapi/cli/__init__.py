"""The ``osapi`` command line: the argparse tree and the one error funnel.

``main(argv, env)`` is the only place where a failure becomes a message and an
exit status (httpie's shape): commands raise ``osapi.errors.OsapiError`` (or let a
``ConfigError`` rise from configuration) and never call ``sys.exit``. An
``Environment`` carries stdin/stdout/stderr and the process environment so tests
can run the CLI in-process and read what it printed.

Each command group lives in its own module with ``register(subparsers)``; the
modules import their heavy dependencies inside the handlers so that
``osapi client …`` and ``--version`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Mapping, TextIO

from osapi import __version__
from osapi.errors import ExitStatus, OsapiError, UsageError

# One module per command group, in the order of `osapi --help`.
COMMAND_MODULES = (
    "osapi.cli.supervise",
    "osapi.cli.client_group",
    "osapi.cli.api",
    "osapi.cli.job",
    "osapi.cli.nats",
    "osapi.cli.tokens",
)

class Environment:
    """What a command may touch of the outside world (default: this process's)."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 environ: Mapping[str, str] | None = None):
        self.stdin = sys.stdin if stdin is None else stdin
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr
        self.environ = os.environ if environ is None else environ

    @property
    def stdin_isatty(self) -> bool:
        return bool(getattr(self.stdin, "isatty", lambda: False)())

    @property
    def stdout_isatty(self) -> bool:
        return bool(getattr(self.stdout, "isatty", lambda: False)())

    @property
    def stderr_isatty(self) -> bool:
        return bool(getattr(self.stderr, "isatty", lambda: False)())


class Context:
    """Handed to every command: parsed args, the environment, lazily loaded config."""

    def __init__(self, args: argparse.Namespace, env: Environment):
        self.args = args
        self.env = env
        self._config = None

    @property
    def config(self):
        if self._config is None:
            from osapi import config

            self._config = config.load(self.args.osapi_file, self.env.environ)
            if self._config.debug and not self.args.debug:
                from osapi import logs

                self.args.debug = True  # `debug: true` in the file means the same as -d
                logs.setup(debug=True, json_lines=self.json, stream=self.env.stderr)
            if self.args.debug:
                import logging

                logging.getLogger("osapi.cli").debug("configuration from %s", self._config.source)
        return self._config

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def print(self, text: str = "") -> None:
        self.env.stdout.write(text + "\n")

    def print_json(self, data: Any) -> None:
        from osapi.cli.output import dump_json

        self.env.stdout.write(dump_json(data) + "\n")

    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        """``--json``: the data exactly; otherwise ``human(data)``."""
        if self.json:
            self.print_json(data)
        else:
            self.print(human(data))


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of exiting, so main() owns exits.

    Its subcommands are ``SubParsers``: they may be deferred.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", SubParsers)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse's asks shutil for the width, and argparse makes one for every argument
        # it adds (to check its metavar): shutil's imports would cost each command's start
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, f"see `{self.prog} --help`")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` (``$COLUMNS``, else stdout's terminal, else 80), without shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class SubParsers(argparse._SubParsersAction):
    """argparse's subcommands, some of which are built only when the command line chooses them.

    ``defer(name, help, build)`` lists ``name`` with ``help`` (all a parent's ``--help``
    shows of it) and calls ``build(self)`` -- which adds ``name`` with ``add_parser``
    as usual -- when ``name`` is chosen. Building the whole tree (about 50 parsers)
    would cost ``osapi client system hostname`` more than its HTTP call; this way it
    builds the four on its path. ``build_all`` builds every deferred one (tests).
    The one place that relies on argparse's internals (``_SubParsersAction``,
    ``_name_parser_map``, ``_choices_actions``); tests/unit/test_cli.py compares every
    ``--help`` with that of the fully built tree.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deferred: dict[str, Callable[[SubParsers], object]] = {}

    def defer(self, name: str, help: str, build: Callable[[SubParsers], object]) -> None:
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        self._name_parser_map[name] = None  # a valid choice (for argparse's check); built in __call__
        self._deferred[name] = build

    def build(self, name: str) -> None:
        """Build ``name`` if it is deferred; its place in the listing and the choices is kept."""
        build = self._deferred.pop(name, None)
        if build is None:
            return
        names, listed = list(self._name_parser_map), len(self._choices_actions)
        del self._name_parser_map[name]
        build(self)
        if name not in self._name_parser_map:
            raise RuntimeError(f"building subcommand {name!r} did not add it")
        parsers = dict(self._name_parser_map)
        self._name_parser_map.clear()  # the same dict is argparse's ``choices``: keep the order
        self._name_parser_map.update((n, parsers.pop(n)) for n in names)
        self._name_parser_map.update(parsers)
        if len(self._choices_actions) > listed:  # the real listing replaces the deferred one
            real = self._choices_actions.pop()
            index = next(i for i, a in enumerate(self._choices_actions) if a.dest == name)
            self._choices_actions[index] = real

    def build_all(self) -> None:
        """Build every subcommand, and theirs, all the way down."""
        for name in list(self._deferred):
            self.build(name)
        for parser in self._name_parser_map.values():
            for action in parser._actions:
                if isinstance(action, SubParsers):
                    action.build_all()

    def __call__(self, parser, namespace, values, option_string=None):
        self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


class _Exit(Exception):
    def __init__(self, status: int):
        self.status = status


def _global_flags() -> argparse.ArgumentParser:
    """The flags every (sub)command takes, before or after its name.

    Defaults are SUPPRESS so a value given at one level is not overwritten by the
    default of another; ``_finish_globals`` fills in the real defaults.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument("-f", "--osapi-file", metavar="PATH", default=argparse.SUPPRESS,
                       help="configuration file; must exist (default: ./osapi.yaml, then "
                       "/etc/osapi/osapi.yaml, then built-in defaults; OSAPI_* variables override any of them)")
    group.add_argument("-d", "--debug", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging, and tracebacks on errors")
    group.add_argument("-j", "--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output: client commands print the API response body "
                       "exactly, other commands a JSON result; logs become JSON lines")
    group.add_argument("--version", action="store_true", default=argparse.SUPPRESS,
                       help="print the version and exit")
    return parent


GLOBAL_FLAGS = _global_flags()


def add_parser(subparsers, name: str, help: str, **kwargs) -> ArgumentParser:
    """A subcommand that also takes the global flags."""
    kwargs.setdefault("description", help)
    parser = subparsers.add_parser(name, help=help, parents=[GLOBAL_FLAGS], **kwargs)
    parser.set_defaults(_prog=parser.prog)  # the deepest subcommand chosen wins: for messages
    return parser


def add_group(subparsers, name: str, help: str) -> Any:
    """A command group: a subcommand with its own subcommands; bare use prints its help."""
    parser = add_parser(subparsers, name, help)
    parser.set_defaults(func=lambda ctx, p=parser: _group_help(ctx, p))
    return parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgumentParser)


def _group_help(ctx: Context, parser: argparse.ArgumentParser) -> int:
    ctx.env.stderr.write(parser.format_help())
    return ExitStatus.USAGE


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="osapi",
        description="A REST API for Linux hosts: every operation is a job on NATS JetStream, "
        "run by workers on the target hosts.",
        parents=[GLOBAL_FLAGS],
        epilog="Exit status: 0 success, 1 the operation failed, 2 usage or configuration error.",
    )
    parser.set_defaults(func=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgumentParser)
    for module_name in COMMAND_MODULES:  # each built only when chosen: see SubParsers
        module = importlib.import_module(module_name)
        subparsers.defer(module.NAME, module.HELP, module.register)
    return parser


def _finish_globals(args: argparse.Namespace) -> None:
    for name, default in (("osapi_file", None), ("debug", False), ("json", False), ("version", False)):
        if not hasattr(args, name):
            setattr(args, name, default)


def _wants_version(argv: list[str]) -> bool:
    """``--version`` anywhere before a ``--`` separator (and not after ``-h``)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--version" in head and not ({"-h", "--help"} & set(head))


def main(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Run one command; return the exit status. Never raises (but for SystemExit from below)."""
    env = env or Environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "-d" in argv or "--debug" in argv
    try:
        if _wants_version(argv):  # before or after any subcommand, whatever else is missing
            env.stdout.write(f"osapi {__version__}\n")
            return ExitStatus.SUCCESS
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                prog = getattr(args, "_prog", parser.prog)
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}", f"see `{prog} --help`")
        except _Exit as exc:  # --help
            return exc.status
        _finish_globals(args)
        debug = debug or args.debug
        if args.func is None:
            env.stderr.write(parser.format_help())
            return ExitStatus.USAGE
        ctx = Context(args, env)
        if args.debug or getattr(args, "_logs", True):  # client commands: only with -d
            from osapi import logs

            logs.setup(debug=args.debug, json_lines=args.json, stream=env.stderr)
        status = args.func(ctx)
        return ExitStatus.SUCCESS if status is None else int(status)
    except OsapiError as exc:
        if debug:
            import traceback

            traceback.print_exc(file=env.stderr)
        env.stderr.write(f"osapi: error: {exc}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        env.stderr.write("osapi: interrupted\n")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        return ExitStatus.ERROR
    except Exception as exc:  # a bug: one line, the traceback only with -d
        if debug:
            import traceback

            traceback.print_exc(file=env.stderr)
            env.stderr.write(f"osapi: internal error: {type(exc).__name__}: {exc}\n")
        else:
            env.stderr.write(
                f"osapi: internal error: {type(exc).__name__}: {exc} (run with -d for the traceback)\n"
            )
        return ExitStatus.ERROR


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
