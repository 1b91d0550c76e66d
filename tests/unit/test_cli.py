"""The CLI (README "Commands"): global flags anywhere, one error funnel, exit codes, logging to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from osapi import __version__

ENV = {"OSAPI_API_SERVER_SECURITY_SIGNING_KEY": "k" * 40}


def test_version(cli):
    r = cli("--version")
    assert r.status == 0
    assert r.stdout == f"osapi {__version__}\n"


def test_no_command_prints_help_and_exits_2(cli):
    r = cli()
    assert r.status == 2
    assert "usage: osapi" in r.stderr and "token" in r.stderr


def test_group_without_command_prints_its_help_and_exits_2(cli):
    r = cli("token")
    assert r.status == 2
    assert "generate" in r.stderr and "validate" in r.stderr


def test_help_exits_0(cli, capsys):
    r = cli("token", "generate", "--help")
    assert r.status == 0


@pytest.mark.parametrize("argv", [["bogus"], ["token", "bogus"], ["--no-such-flag"], ["token", "generate", "-r"]])
def test_usage_errors_exit_2_with_one_line(cli, argv):
    r = cli(*argv)
    assert r.status == 2
    assert r.stderr.startswith("osapi: error: ")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-j", "token", "generate", "-r", "read", "-u", "x"],
        ["token", "-j", "generate", "-r", "read", "-u", "x"],
        ["token", "generate", "-r", "read", "-u", "x", "-j"],
        ["token", "generate", "--json", "-r", "read", "-u", "x"],
    ],
)
def test_global_flags_before_or_after_the_subcommand(cli, argv):
    r = cli(*argv, env=ENV)
    assert r.status == 0, r.stderr
    assert json.loads(r.stdout)["subject"] == "x"


@pytest.mark.parametrize("position", ["before", "after"])
def test_osapi_file_flag_before_or_after(cli, tmp_path, position):
    conf = tmp_path / "c.yaml"
    conf.write_text("api:\n  server:\n    security:\n      signing_key: " + "f" * 40 + "\n")
    flag = ["-f", str(conf)]
    base = ["token", "generate", "-r", "read", "-u", "x"]
    r = cli(*(flag + base if position == "before" else base + flag))
    assert r.status == 0, r.stderr
    from osapi import authtoken

    assert authtoken.validate(r.stdout.strip(), "f" * 40).subject == "x"


def test_missing_config_file_exits_2(cli, tmp_path):
    r = cli("-f", str(tmp_path / "nope.yaml"), "token", "generate", "-r", "read", "-u", "x")
    assert r.status == 2
    assert "nope.yaml does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_file_exits_2_naming_key_and_file(cli, tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("api:\n  server:\n    port: lots\n")
    r = cli("-f", str(conf), "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert r.status == 2
    assert "api.server.port" in r.stderr and str(conf) in r.stderr
    assert r.stderr.count("\n") == 1


def test_debug_logs_to_stderr_and_json_lines_with_json(cli):
    r = cli("-d", "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert "DEBUG osapi.cli: configuration from built-in defaults" in r.stderr
    assert r.stdout.count(".") == 2  # only the token on stdout
    r = cli("-d", "--json", "token", "generate", "-r", "read", "-u", "x", env=ENV)
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    assert any(entry["message"] == "configuration from built-in defaults" and entry["level"] == "debug" for entry in lines)


def test_debug_true_in_the_file_turns_on_debug_logging(cli, tmp_path):
    conf = tmp_path / "d.yaml"
    conf.write_text("debug: true\n")
    r = cli("-f", str(conf), "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert r.status == 0
    assert f"DEBUG osapi.cli: configuration from {conf}" in r.stderr
    r = cli("token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert "DEBUG" not in r.stderr


def test_internal_errors_are_one_line_without_traceback(cli, monkeypatch):
    import osapi.cli.tokens as tokens

    def boom(ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(tokens, "generate", boom)
    # the parser binds the function at build time, so rebuild through main()
    r = cli("token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert r.status == 1
    assert "internal error: RuntimeError: kaboom" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("-d", "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert "Traceback" in r.stderr


def test_python_dash_m_and_exit_status_in_a_real_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    p = subprocess.run([sys.executable, "-m", "osapi", "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"osapi {__version__}"
    p = subprocess.run([sys.executable, "-m", "osapi", "token", "validate", "-t", "x"], capture_output=True,
                       text=True, env={**env, **ENV}, timeout=60)
    assert p.returncode == 1 and "token is not valid" in p.stderr


def test_version_does_not_import_heavy_modules():
    code = "import sys; from osapi.cli import main; main(['--version']); " \
           "print(sorted(m for m in ('nats','bottle','waitress','psutil','yaml','jwt') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().endswith("[]"), p.stdout


@pytest.mark.parametrize("argv", [["--version"], ["client", "--version"], ["client", "system", "load", "--version"],
                                  ["token", "generate", "--version"], ["-j", "supervise", "--version"]])
def test_version_before_or_after_any_subcommand(cli, argv):
    r = cli(*argv)
    assert (r.status, r.stdout) == (0, f"osapi {__version__}\n")


def test_unrecognized_flag_points_at_the_subcommands_help(cli):
    r = cli("token", "generate", "-r", "read", "-u", "x", "--expirse", "1d", env=ENV)
    assert r.status == 2
    assert "osapi: error: unrecognized arguments: --expirse 1d" in r.stderr
    assert "see `osapi token generate --help`" in r.stderr


def test_osapi_file_that_is_a_directory_or_dev_null(cli, tmp_path):
    r = cli("-f", str(tmp_path), "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert r.status == 2 and "is a directory" in r.stderr
    r = cli("-f", "/dev/null", "token", "generate", "-r", "read", "-u", "x", env=ENV)
    assert r.status == 0, r.stderr  # an empty file runs on the defaults


# ---------------------------------------------------------------- the parser tree is built along the command line


def _tree(parser, path=()):
    """(path, parser) of every parser built so far, depth first."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action._name_parser_map.items():
                if child is not None:
                    yield from _tree(child, path + (name,))


def test_a_command_builds_only_the_parsers_on_its_path():
    from osapi.cli import build_parser

    parser = build_parser()
    parser.parse_known_args(["client", "system", "hostname", "-T", "_all"])
    assert [path for path, _ in _tree(parser)] == [
        (), ("client",), ("client", "system"), ("client", "system", "hostname")]


def test_every_help_and_usage_error_is_that_of_the_fully_built_tree(cli, capsys):
    """Deferred subcommands list the same help and accept the same names as built ones, in the same order."""
    from osapi.cli import SubParsers, build_parser

    full = build_parser()
    for action in full._actions:
        if isinstance(action, SubParsers):
            action.build_all()
    tree = list(_tree(full))
    assert len(tree) > 40 and ("client", "network", "dns", "update") in dict(tree)
    for path, parser in tree:
        capsys.readouterr()
        r = cli(*path, "--help")  # argparse prints help on sys.stdout
        assert (r.status, capsys.readouterr().out) == (0, parser.format_help()), path
        names = [a for a in parser._actions if isinstance(a, SubParsers)]
        if names:
            r = cli(*path, "nosuchcommand")
            choices = ", ".join(repr(name) for name in names[0].choices)
            assert r.status == 2 and f"invalid choice: 'nosuchcommand' (choose from {choices})" in r.stderr, path


def _client_probe(tmp_path, *argv: str) -> tuple[list[str], str]:
    """Run ``osapi <argv>`` in a fresh interpreter: (exit status, then whether each of logging and ssl
    was imported), and its stderr."""
    code = ("import sys; from osapi.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'logging' in sys.modules, 'ssl' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"] = "tok"
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=60)
    return p.stdout.split(), p.stderr


def test_a_client_command_sets_up_no_logging_without_debug(tmp_path):
    """Logging (and its imports) is only for -d: a client command prints its answer or one error line."""
    argv = ["client", "system", "hostname", "--url", "http://127.0.0.1:9"]  # discard port: refused
    out, err = _client_probe(tmp_path, *argv)
    assert out[:2] == ["1", "False"], err
    assert err.startswith("osapi: error: cannot reach the osapi API at http://127.0.0.1:9: connection refused")
    out, err = _client_probe(tmp_path, "-d", *argv)
    assert out[:2] == ["1", "True"]
    assert "DEBUG osapi.cli: configuration from built-in defaults" in err


@pytest.mark.parametrize("where", ["--url", "osapi.yaml"])
def test_a_client_command_loads_ssl_only_for_an_https_url(tmp_path, where):
    for url, ssl in (("http://127.0.0.1:9", "False"), ("https://127.0.0.1:9", "True")):
        argv = ["client", "system", "hostname", "--url", url]
        if where != "--url":
            (tmp_path / "osapi.yaml").write_text(f"api:\n  client:\n    url: {url}\n")
            argv = argv[:-2]
        out, err = _client_probe(tmp_path, *argv)
        assert out == ["1", "False", ssl], err
        assert err.startswith(f"osapi: error: cannot reach the osapi API at {url}: connection refused"), err


def test_an_https_url_after_an_http_one_in_the_same_process(tmp_path):
    """http.client imported without ssl for an http:// URL is imported again, with it, for an https:// one."""
    code = ("import sys; from osapi.cli import main\n"
            "for url in sys.argv[1:]:\n"
            "    print(main(['client', 'system', 'hostname', '--url', url]))\n"
            "import http.client; print(hasattr(http.client, 'HTTPSConnection'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"] = "tok"
    p = subprocess.run([sys.executable, "-c", code, "http://127.0.0.1:9", "https://127.0.0.1:9"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=60)
    assert p.stdout.split() == ["1", "1", "True"], p.stderr
    assert p.stderr.count("connection refused") == 2 and "internal error" not in p.stderr


@pytest.mark.parametrize("columns", [None, "", "abc", "0", "-3", "7", "100", "250"])
def test_help_is_as_wide_as_shutil_says(monkeypatch, columns):
    """The parser measures the terminal without importing shutil, the same way."""
    import shutil

    from osapi.cli import terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns


def test_a_client_command_imports_only_what_it_needs(tmp_path):
    """What the client's start would pay for without using it (osapi.pyz: bench/startup.py)."""
    code = ("import sys; from osapi.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, *sorted(m for m in %r if m in sys.modules))"
            % (("logging", "dataclasses", "inspect", "shutil", "ssl", "zipfile", "tempfile"),))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"] = "tok"
    for argv in (["client", "system", "hostname"], ["client", "system", "load", "-T", "_all"],
                 ["client", "network", "dns", "get", "--interface-name", "eth0", "-T", "group:web"]):
        p = subprocess.run([sys.executable, "-c", code, *argv, "--url", "http://127.0.0.1:9"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=60)
        assert p.stdout.split() == ["1"], (argv, p.stdout, p.stderr)
