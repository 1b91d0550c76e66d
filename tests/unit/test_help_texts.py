"""What ``--help`` promises: each command's exit statuses, stated once and only where they apply."""

from __future__ import annotations

import pytest


def help_text(cli, capsys, *argv: str) -> str:
    result = cli(*argv, "--help")
    assert result.status == 0
    return " ".join(capsys.readouterr().out.split())  # argparse prints help on stdout; unwrap it


PLAIN = ("Exit status: 0 success; 1 the operation failed (API unreachable or an API error, token rejected); "
         "2 usage or configuration error.")
HOSTS = "or any targeted host failed -- the table is still printed, failed hosts with their error"


@pytest.mark.parametrize("argv", [
    ["client", "job"], ["client", "job", "add"], ["client", "job", "get"], ["client", "job", "list"],
    ["client", "job", "delete"], ["client", "job", "status"], ["client", "job", "workers"],
    ["client", "job", "workers", "list"],
])
def test_job_commands_have_the_plain_exit_status(cli, capsys, argv):
    text = help_text(cli, capsys, *argv)
    assert text.count("Exit status") == 1 and PLAIN in text and HOSTS not in text


@pytest.mark.parametrize("argv", [
    ["client", "system"], ["client", "system", "hostname"], ["client", "system", "disk"],
    ["client", "network"], ["client", "network", "dns"], ["client", "network", "dns", "get"],
    ["client", "network", "dns", "update"], ["client", "network", "ping"],
])
def test_domain_commands_say_a_failed_host_exits_1(cli, capsys, argv):
    text = help_text(cli, capsys, *argv)
    assert text.count("Exit status") == 1 and HOSTS in text


def test_job_run_has_its_own_exit_status_paragraph_only(cli, capsys):
    text = help_text(cli, capsys, "client", "job", "run")
    assert text.count("Exit status") == 1 and PLAIN not in text and HOSTS not in text
    assert "Exit status: 0 the job completed (every host ok); 1 a host failed, the job did not finish within" in text
    assert "3 no host failed but some did not answer" in text


@pytest.mark.parametrize("argv", [
    ["client", "system", "hostname"], ["client", "network", "dns", "update"], ["client", "network", "ping"],
])
def test_domain_commands_say_silent_hosts_exit_3(cli, capsys, argv):
    assert "3 no host failed but some did not answer" in help_text(cli, capsys, *argv)


def test_job_id_and_poll_interval_are_explained(cli, capsys):
    for command in ("get", "delete"):
        assert "--job-id ID the job's id (from job add, job list or an error message)" in \
            help_text(cli, capsys, "client", "job", command)
    assert "refresh interval of the live view, e.g. 30s or 1m (default: 30s)" in \
        help_text(cli, capsys, "client", "job", "status")


@pytest.mark.parametrize("argv, exit_text", [
    (["api", "server", "start"],
     "Exit status: 0 after SIGTERM/SIGINT; 2 when the port is taken or the configuration is invalid."),
    (["job", "worker", "start"],
     "Exit status: 0 after SIGTERM/SIGINT; 1 when NATS closed the connection for good (the supervisor "
     "restarts it); 2 usage or configuration error."),
    (["job", "setup"],
     "Exit status: 0 nothing differs, or --apply changed everything; 1 differences found (without --apply), "
     "an update failed, or NATS could not be reached; 2 usage or configuration error, or --apply refused "
     "without a terminal and without --yes."),
    (["supervise", "start"], "Exit status: 0 done; 1 supervise is not running"),
    (["supervise", "stop"], "Exit status: 0 done; 1 supervise is not running"),
    (["supervise", "restart"], "Exit status: 0 done; 1 supervise is not running"),
])
def test_server_side_commands_state_their_exit_status(cli, capsys, argv, exit_text):
    text = help_text(cli, capsys, *argv)
    assert text.count("Exit status") == 1 and exit_text in text


def test_supervise_help_names_every_secret_and_both_worker_name_forms(cli, capsys):
    assert "nats.token, supervisor.password: mode 0600" in help_text(cli, capsys, "supervise")
    assert "worker-N (or worker:worker-N) for one worker" in help_text(cli, capsys, "supervise", "restart")


@pytest.mark.parametrize("argv", [
    ["client", "job", "add"], ["client", "job", "run"], ["client", "network", "dns", "update"],
])
def test_rollout_flags_and_their_rules_are_explained(cli, capsys, argv):
    text = help_text(cli, capsys, *argv)
    for flag in ("--batch N|N%", "--max-failures N|N%", "--pause DURATION", "--dry-run"):
        assert flag in text
    assert "Rollout (a multi-host target only: _all or key:value)" in text
    assert "no further batch starts and the remaining hosts are skipped" in text


def test_query_commands_have_no_rollout_flags(cli, capsys):
    assert "--batch" not in help_text(cli, capsys, "client", "system", "hostname")
