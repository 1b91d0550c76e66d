"""The state directory, its secrets and the rendered supervisord.conf (no processes run)."""

from __future__ import annotations

import configparser
import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osapi import authtoken, config, supervise
from osapi.errors import ConfigError

import trust_support  # tests/, on sys.path through conftest

SECRETS = ("signing_key", "admin.token", "nats.token", "supervisor.password")


def load(**env) -> config.Config:
    environ = {"OSAPI_SUPERVISE_STATE_DIR": os.environ["OSAPI_SUPERVISE_STATE_DIR"]}
    environ.update({f"OSAPI_{k.upper()}": v for k, v in env.items()})
    return config.load(environ=environ)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(paths: supervise.Layout) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(paths.secrets.iterdir())}


def test_first_start_creates_private_dirs_and_secrets():
    cfg = load()
    paths = supervise.bootstrap(cfg, ["nats", "api", "worker"])
    assert paths.state_dir == config.state_dir(cfg)
    for directory in (paths.state_dir, paths.secrets, paths.logs):
        assert mode(directory) == 0o700
    assert sorted(p.name for p in paths.secrets.iterdir()) == sorted(SECRETS)
    for name in SECRETS:
        assert mode(paths.secret(name)) == 0o600
    key = paths.secret("signing_key").read_text().strip()
    assert len(key) >= 32 and config.signing_key(cfg) == key
    assert config.nats_server_token(cfg) == config.nats_token(cfg) == paths.secret("nats.token").read_text().strip()
    claims = authtoken.validate(paths.secret("admin.token").read_text().strip(), key)
    assert claims.roles == ("admin",) and "admin" in claims.scopes
    assert claims.expires_at - claims.issued_at == supervise.ADMIN_TOKEN_LIFETIME
    assert supervise.ADMIN_TOKEN_LIFETIME >= 9 * 365 * 86400


def test_second_start_keeps_every_byte_and_tightens_modes():
    cfg = load()
    paths = supervise.bootstrap(cfg, ["nats", "api", "worker"])
    before = snapshot(paths)
    os.chmod(paths.secret("nats.token"), 0o644)
    os.chmod(paths.secrets, 0o755)
    supervise.bootstrap(cfg, ["nats", "api", "worker"])
    assert snapshot(paths) == before
    assert mode(paths.secret("nats.token")) == 0o600
    assert mode(paths.secrets) == 0o700


def test_concurrent_first_starts_agree_on_one_value_per_secret():
    """Several processes bootstrap the same empty state dir at the same moment."""
    script = (
        "import sys, time; from osapi import config, supervise\n"
        "start = float(sys.argv[1])\n"
        "time.sleep(max(0.0, start - time.time()))\n"
        "paths = supervise.bootstrap(config.load(), ['nats', 'api', 'worker'])\n"
        "print(*(paths.secret(n).read_text().strip() for n in sys.argv[2:]))\n"
    )
    start = time.time() + 1.5
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(start), *SECRETS],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        outputs.append(out)
    assert len(set(outputs)) == 1 and outputs[0].strip()
    paths = supervise.layout(load())
    leftovers = [p.name for p in paths.secrets.iterdir() if p.name not in SECRETS]
    assert leftovers == []


def test_secrets_follow_the_programs_and_the_configuration():
    # a worker-only fleet host: no local NATS, no API
    paths = supervise.bootstrap(load(supervise_programs="worker"), ["worker"])
    assert sorted(p.name for p in paths.secrets.iterdir()) == ["supervisor.password"]
    # a configured signing key signs the admin token; no key file is made
    key = "k" * 40
    cfg = load(api_server_security_signing_key=key)
    supervise.bootstrap(cfg, ["api"])
    assert not paths.secret("signing_key").exists()
    authtoken.validate(paths.secret("admin.token").read_text().strip(), key)


def test_an_admin_token_from_another_key_is_kept_and_reported(caplog):
    paths = supervise.bootstrap(load(), ["api"])
    token = paths.secret("admin.token").read_bytes()
    supervise.bootstrap(load(api_server_security_signing_key="n" * 40), ["api"])
    assert paths.secret("admin.token").read_bytes() == token
    assert "not valid with the current signing key" in caplog.text


# ---------------------------------------------------------------- a state dir another user could have written


def plant_as_nobody(state: Path) -> Path:
    """The attack: a 0777 state dir (ours) in which ``nobody`` made secrets/ and a signing key."""
    state.mkdir(mode=0o700)
    os.chmod(state, 0o777)
    (state / "secrets").mkdir(mode=0o700)
    key = state / "secrets" / "signing_key"
    key.write_text("planted-by-nobody-" + "p" * 40 + "\n")
    os.chmod(key, 0o600)
    for path in (state / "secrets", key):
        os.chown(path, trust_support.NOBODY, trust_support.NOBODY)
    return key


def test_a_signing_key_planted_by_another_user_is_refused_and_nothing_changes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root (CI runs as root)")
    state = Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"])
    plant_as_nobody(state)
    before = trust_support.snapshot(state)
    with pytest.raises(ConfigError) as exc:
        supervise.bootstrap(load(), ["nats", "api", "worker"])
    assert exc.value.exit_status == 2
    secrets_dir = state / "secrets"
    assert exc.value.message.startswith(f"refusing to use {secrets_dir}: it is owned by "
                                        f"{trust_support.NOBODY_NAME} (uid {trust_support.NOBODY}), not by root")
    assert exc.value.hint == f"if it is yours: chown root: {secrets_dir} && chmod 700 {secrets_dir}"
    assert trust_support.snapshot(state) == before  # no admin.token signed with it, not even a chmod
    with pytest.raises(ConfigError, match="refusing to use"):
        supervise.preflight(load(), supervise.layout(load()), ["nats", "api", "worker"])


REFUSED_BY_SUPERVISE = {name: case for name, case in trust_support.HOSTILE.items()
                        if name not in ("state dir mode 0777", "secrets/ mode 0770")}  # ours: tightened


@pytest.mark.timeout(60)  # the FIFO case blocked for ever before the rule
@pytest.mark.parametrize("case", [p for p in trust_support.hostile_params()
                                  if p.values[0] in REFUSED_BY_SUPERVISE.values()],
                         ids=list(REFUSED_BY_SUPERVISE))
def test_bootstrap_refuses_every_secret_another_user_could_have_written(tmp_path, case):
    state = trust_support.good_state(Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"]))
    refused = case.spoil(state, "signing_key")
    before = trust_support.snapshot(tmp_path)
    with pytest.raises(ConfigError) as exc:
        supervise.bootstrap(load(), ["nats", "api", "worker"])
    assert f"refusing to use {refused}: " in exc.value.message and case.reason in exc.value.message
    assert trust_support.snapshot(tmp_path) == before


@pytest.mark.parametrize("entry", ["logs", "nats", "supervisord.pid"])
def test_bootstrap_refuses_a_state_dir_entry_another_user_made(entry):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root (CI runs as root)")
    state = Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"])
    state.mkdir(mode=0o700)
    if entry == "supervisord.pid":  # a link nobody made: supervisord as root would write through it
        (state / entry).symlink_to("/etc/does-not-matter")
        os.lchown(state / entry, trust_support.NOBODY, trust_support.NOBODY)
    else:
        (state / entry).mkdir(mode=0o777)
        os.chown(state / entry, trust_support.NOBODY, trust_support.NOBODY)
    with pytest.raises(ConfigError, match=f"refusing to use {state / entry}: .*owned by "):
        supervise.bootstrap(load(), ["nats", "api", "worker"])
    assert not (state / "secrets").exists()


def test_our_own_lax_state_dir_is_tightened_and_said_so(caplog):
    state = Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"])
    state.mkdir(mode=0o700)
    os.chmod(state, 0o777)
    (state / "secrets").mkdir(mode=0o700)
    os.chmod(state / "secrets", 0o775)
    with caplog.at_level("WARNING", logger="osapi.supervise"):
        paths = supervise.bootstrap(load(), ["nats", "api", "worker"])
    assert mode(paths.state_dir) == mode(paths.secrets) == 0o700
    assert f"{state} was mode 0777; set it to 0700" in caplog.text
    assert f"{state / 'secrets'} was mode 0775; set it to 0700" in caplog.text
    assert sorted(p.name for p in paths.secrets.iterdir()) == sorted(SECRETS)


def test_the_state_dir_is_made_0700_whatever_the_umask():
    state = Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"]) / "deeper"
    old = os.umask(0)
    try:
        paths = supervise.bootstrap(load(supervise_state_dir=str(state)), ["nats", "api", "worker"])
    finally:
        os.umask(old)
    for directory in (paths.state_dir, paths.secrets, paths.logs):
        assert mode(directory) == 0o700
    for name in SECRETS:
        assert mode(paths.secret(name)) == 0o600


def test_unusable_state_dir_is_a_configuration_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create"):
        supervise.bootstrap(load(supervise_state_dir=str(blocker / "state")), ["nats"])


def parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_rendered_configuration():
    paths = supervise.Layout(Path("/srv/osapi state"))
    base = ["/usr/bin/python3", "/opt/osapi.pyz"]
    flags = ["-f", "/etc/osapi/osapi.yaml", "-d"]
    conf = parse(supervise.render(paths, ["nats", "api", "worker"], 3, base, flags, "root", "pw"))
    sup = conf["supervisord"]
    assert sup["nodaemon"] == "true" and sup["user"] == "root"
    assert sup["logfile"] == "/srv/osapi state/logs/supervisord.log"
    assert conf["unix_http_server"]["file"] == "/srv/osapi state/supervisor.sock"
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["unix_http_server"]["password"] == "{SHA}" + hashlib.sha1(b"pw").hexdigest()

    nats, api, worker = conf["program:nats"], conf["program:api"], conf["program:worker"]
    assert nats["command"] == ("/usr/bin/python3 /opt/osapi.pyz nats server start --require-auth "
                               "--log-file '/srv/osapi state/logs/nats-server.log' -f /etc/osapi/osapi.yaml -d")
    assert api["command"].endswith("/opt/osapi.pyz api server start -f /etc/osapi/osapi.yaml -d")
    assert worker["command"].endswith("/opt/osapi.pyz job worker start -f /etc/osapi/osapi.yaml -d")
    # NATS starts first and stops last; workers stop first
    assert int(nats["priority"]) < int(api["priority"]) < int(worker["priority"])
    assert worker["numprocs"] == "3" and worker["process_name"] == "%(program_name)s-%(process_num)d"
    for program in (nats, api, worker):
        assert program["autorestart"] == "true"
        assert program["stopasgroup"] == program["killasgroup"] == "true"
        assert int(program["startretries"]) >= 1000
        assert program["redirect_stderr"] == "true"
        assert program["stdout_logfile_maxbytes"] == "10MB"
        assert program["environment"] == 'OSAPI_SUPERVISE_STATE_DIR="/srv/osapi state"' or \
            program["environment"].startswith('OSAPI_SUPERVISE_STATE_DIR="/srv/osapi state",PYTHONPATH=')
    assert nats["stdout_logfile"] == "/srv/osapi state/logs/nats.log"
    assert worker["stdout_logfile"] == "/srv/osapi state/logs/%(program_name)s-%(process_num)d.log"


def test_rendered_configuration_selects_programs_and_escapes():
    paths = supervise.Layout(Path("/srv/100%/osapi"))
    text = supervise.render(paths, ["worker"], 1, ["/py", "/a b/osapi.pyz"], [])
    conf = parse(text)
    assert [s for s in conf.sections() if s.startswith("program:")] == ["program:worker"]
    assert conf["program:worker"]["command"] == "/py '/a b/osapi.pyz' job worker start"
    assert "/srv/100%%/osapi/logs" in text  # supervisor expands %(name)s: a literal % is doubled
    with pytest.raises(ConfigError, match="double quote"):
        supervise.render(supervise.Layout(Path('/srv/"x"')), ["api"], 1, ["/py"], [])


def test_children_run_this_osapi():
    # from a source tree: the same python, -m osapi, with the source on PYTHONPATH
    assert supervise.self_command() == [sys.executable, "-m", "osapi"]
    text = supervise.render(supervise.Layout(Path("/s")), ["api"], 1, supervise.self_command(), [])
    source = str(Path(supervise.__file__).resolve().parent.parent)
    assert f'PYTHONPATH="{source}"' in text


def test_passthrough_flags(tmp_path):
    assert supervise.passthrough_flags(None, False, False) == []
    (tmp_path / "osapi.yaml").write_text("debug: false\n")  # ./osapi.yaml is found by lookup
    assert supervise.passthrough_flags(None, True, True) == ["-f", str(tmp_path / "osapi.yaml"), "-d", "-j"]


def test_status_without_a_supervisor_names_the_socket(cli):
    result = cli("supervise", "status")
    socket_path = Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"]) / "supervisor.sock"
    assert result.status == 1
    assert "not running" in result.stderr and str(socket_path) in result.stderr
    result = cli("supervise", "restart", "api")
    assert result.status == 1 and str(socket_path) in result.stderr
    for argv in (["stop"], ["--json", "stop"], ["stop", "api"]):
        result = cli("supervise", *argv)
        assert result.status == 1 and "not running" in result.stderr and str(socket_path) in result.stderr
        assert result.stdout == ""


def test_bad_arguments(cli):
    result = cli("supervise", "--workers", "0")
    assert result.status == 2 and "--workers must be from 1 to 64" in result.stderr
    result = cli("supervise", "restart")
    assert result.status == 2 and "NAME" in result.stderr
    result = cli("supervise", "stop", "api", "nats")
    assert result.status == 2 and "unrecognized arguments: nats" in result.stderr
    assert not Path(os.environ["OSAPI_SUPERVISE_STATE_DIR"]).exists()


def test_long_socket_path_is_refused_before_anything_runs(cli, tmp_path):
    state = tmp_path / ("x" * 120)
    result = cli("supervise", env={"OSAPI_SUPERVISE_STATE_DIR": str(state), "OSAPI_SUPERVISE_PROGRAMS": "worker"})
    assert result.status == 2 and "longer than 107 bytes" in result.stderr
    assert not (state / "supervisord.conf").exists()
