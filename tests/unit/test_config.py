"""README "Configuration": defaults, file lookup, environment overrides, durations, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from osapi import config
from osapi.errors import ConfigError

import trust_support  # tests/, on sys.path through conftest

REPO = Path(__file__).resolve().parents[2]


def load(env=None, file=None):
    return config.load(file, env or {})


def write(tmp_path, text, name="osapi.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- defaults


def test_repository_osapi_yaml_equals_the_built_in_defaults():
    data = yaml.safe_load((REPO / "osapi.yaml").read_text())
    assert data == config.defaults_tree()


def test_repository_osapi_yaml_comments_every_key():
    lines = [line for line in (REPO / "osapi.yaml").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    leaves = [line for line in lines if not line.rstrip().endswith(":")]
    assert len(leaves) == len(config.SPEC)
    assert all("#" in line for line in leaves), [line for line in leaves if "#" not in line]


def test_contract_defaults():
    cfg = load()
    assert cfg.source == "built-in defaults"
    assert cfg.debug is False
    assert cfg.api.client.url == "http://127.0.0.1:8080"
    assert cfg.api.server.host == "127.0.0.1"
    assert cfg.api.server.port == 8080
    assert cfg.api.server.job_timeout == 30.0
    assert cfg.api.server.broadcast_quiet_period == 3.0
    assert cfg.api.server.security.cors.allow_origins == []
    assert cfg.nats.server.port == 4222
    assert cfg.job.stream_name == "JOBS"
    assert cfg.job.stream_subjects == "jobs.>"
    assert cfg.job.kv_bucket == "job-queue"
    assert cfg.job.kv_response_bucket == "job-responses"
    assert cfg.job.consumer_name == "jobs-worker"
    assert cfg.job.stream.max_age == 86400.0
    assert cfg.job.consumer.back_off == [30.0, 120.0, 300.0, 900.0, 1800.0]
    assert cfg.job.dlq.max_age == 7 * 86400.0
    assert cfg.job.worker.labels == {}
    assert cfg.job.worker.dns.provider == "auto"
    assert cfg.supervise.programs == ["nats", "api", "worker"]
    assert cfg.supervise.workers == 1


def test_empty_file_runs_on_defaults(tmp_path):
    path = write(tmp_path, "")
    cfg = load(file=str(path))
    assert cfg.api.server.port == 8080
    assert cfg.source == str(path)


def test_empty_section_is_allowed(tmp_path):
    cfg = load(file=str(write(tmp_path, "api:\njob:\n  worker:\n")))
    assert cfg.api.server.port == 8080


# ---------------------------------------------------------------- lookup


def test_explicit_file_is_read(tmp_path):
    path = write(tmp_path, "api:\n  server:\n    port: 9090\n", "custom.yaml")
    assert load(file=str(path)).api.server.port == 9090


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml does not exist"):
        load(file=str(tmp_path / "does-not-exist.yaml"))


def test_cwd_osapi_yaml_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "api:\n  server:\n    port: 7070\n")
    cfg = load()
    assert cfg.api.server.port == 7070
    assert cfg.source == "osapi.yaml"


def test_etc_osapi_yaml_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    etc = write(tmp_path, "api:\n  server:\n    port: 6060\n", "etc.yaml")
    monkeypatch.setattr(config, "DEFAULT_PATHS", (Path("osapi.yaml"), etc))
    assert load().api.server.port == 6060
    write(tmp_path, "api:\n  server:\n    port: 7070\n")
    assert load().api.server.port == 7070  # ./osapi.yaml wins over /etc


# ---------------------------------------------------------------- environment


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "api:\n  server:\n    port: 9090\n")
    cfg = load({"OSAPI_API_SERVER_PORT": "9191"}, str(path))
    assert cfg.api.server.port == 9191


@pytest.mark.parametrize(
    "name, value, path, expected",
    [
        ("OSAPI_API_SERVER_PORT", "9090", "api.server.port", 9090),
        ("OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN", "abc", "api.client.security.bearer_token", "abc"),
        ("OSAPI_JOB_WORKER_HOSTNAME", "w1", "job.worker.hostname", "w1"),
        ("OSAPI_DEBUG", "true", "debug", True),
        ("OSAPI_DEBUG", "0", "debug", False),
        ("OSAPI_API_SERVER_JOB_TIMEOUT", "2m", "api.server.job_timeout", 120.0),
        ("OSAPI_API_SERVER_SECURITY_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example",
         "api.server.security.cors.allow_origins", ["https://a.example", "https://b.example"]),
        ("OSAPI_JOB_CONSUMER_BACK_OFF", "1s,2s", "job.consumer.back_off", [1.0, 2.0]),
        ("OSAPI_SUPERVISE_PROGRAMS", "worker", "supervise.programs", ["worker"]),
        ("OSAPI_JOB_WORKER_LABELS", "group=web.dev,zone=a", "job.worker.labels", {"group": "web.dev", "zone": "a"}),
        ("OSAPI_NATS_URL", "nats://127.0.0.1:4222", "nats.url", "nats://127.0.0.1:4222"),
        ("OSAPI_NATS_URL", "nats://a:4222,nats://b:4222", "nats.url", ["nats://a:4222", "nats://b:4222"]),
    ],
)
def test_environment_values(name, value, path, expected):
    assert load({name: value}).get(path) == expected


def test_unrelated_environment_is_ignored():
    assert load({"PATH": "/bin", "OSAPIX": "1"}).api.server.port == 8080


def test_unknown_osapi_variable_is_an_error():
    with pytest.raises(ConfigError, match="OSAPI_API_SERVER_PROT: no such configuration key.*OSAPI_API_SERVER_PORT"):
        load({"OSAPI_API_SERVER_PROT": "1"})


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("OSAPI_API_SERVER_PORT", "abc", "api.server.port: must be an integer"),
        ("OSAPI_API_SERVER_PORT", "70000", "api.server.port: must be an integer from 1 to 65535"),
        ("OSAPI_DEBUG", "maybe", "debug: must be true or false"),
        ("OSAPI_JOB_WORKER_LABELS", "group", "must be key=value pairs"),
        ("OSAPI_JOB_WORKER_LABELS", "group=web..dev", "label 'group'"),
        ("OSAPI_API_SERVER_JOB_TIMEOUT", "30", "must be a duration"),
        ("OSAPI_SUPERVISE_PROGRAMS", "nats,web", "supervise.programs: item 2: must be one of nats, api, worker"),
    ],
)
def test_bad_environment_values_name_the_variable_and_key(name, value, message):
    with pytest.raises(ConfigError) as exc:
        load({name: value})
    assert f"environment variable {name}" in str(exc.value)
    assert message in str(exc.value)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("2m", 120), ("24h", 86400), ("7d", 604800), ("500ms", 0.5), ("1h30m", 5400), ("1.5s", 1.5)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "30x", "-1s", "0s", "1 h", "30s garbage", "h30"])
def test_bad_durations(text):
    with pytest.raises(config.Invalid):
        config.parse_duration(text)


def test_duration_must_be_a_string():
    with pytest.raises(config.Invalid, match="must be a duration"):
        config.parse_duration(30)


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, message",
    [
        ("api: [unclosed\n", "is not valid YAML at line"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("bogus: 1\n", "unknown key bogus"),
        ("api:\n  server:\n    prot: 8080\n", "unknown key api.server.prot (did you mean api.server.port?)"),
        ("api: 5\n", "api: must be a section"),
        ("api:\n  server:\n    port: '8080'\n", "api.server.port: must be an integer, got '8080'"),
        ("api:\n  server:\n    port: 0\n", "api.server.port: must be an integer from 1 to 65535, got 0"),
        ("api:\n  server:\n    port: true\n", "api.server.port: must be an integer"),
        ("api:\n  server:\n    job_timeout: 30\n", "api.server.job_timeout: must be a duration"),
        ("api:\n  server:\n    job_timeout: 5 minutes\n", "api.server.job_timeout: must be a duration"),
        ("api:\n  client:\n    url: localhost:8080\n", "api.client.url: must be an http:// or https:// URL"),
        ("api:\n  server:\n    security:\n      signing_key: short\n", "signing_key: must be at least 32 characters"),
        ("api:\n  server:\n    security:\n      cors:\n        allow_origins: '*'\n", "allow_origins: must be a list"),
        ("debug: yes please\n", "debug: must be true or false"),
        ("nats:\n  url: 127.0.0.1:4222\n", "nats.url: must be a nats:// URL"),
        ("job:\n  stream:\n    storage: disk\n", "job.stream.storage: must be one of file, memory"),
        ("job:\n  stream:\n    replicas: 9\n", "job.stream.replicas: must be an integer from 1 to 5"),
        ("job:\n  stream:\n    discard: oldest\n", "job.stream.discard: must be one of old, new"),
        ("job:\n  consumer:\n    max_deliver: 0\n", "job.consumer.max_deliver: must be an integer from 1"),
        ("job:\n  consumer:\n    back_off: [30s, soon]\n", "job.consumer.back_off: item 2: must be a duration"),
        ("job:\n  kv_bucket: 'job queue'\n", "job.kv_bucket: must match [A-Za-z0-9_-]+"),
        ("job:\n  worker:\n    hostname: 'bad host'\n", "job.worker.hostname: must be a valid hostname"),
        ("job:\n  worker:\n    labels: [web]\n", "job.worker.labels: must be a map"),
        ("job:\n  worker:\n    labels: {'bad key': x}\n", "label key must match"),
        ("job:\n  worker:\n    labels: {group: 'web.'}\n", "label 'group': value must be dot-separated"),
        ("job:\n  worker:\n    labels: {group: 5}\n", "label 'group': value must be"),
        ("job:\n  worker:\n    max_jobs: -1\n", "job.worker.max_jobs: must be an integer from 1 to 1000"),
        ("job:\n  worker:\n    dns:\n      provider: netplan\n", "job.worker.dns.provider: must be one of auto, resolv_conf, resolved"),
        ("supervise:\n  programs: []\n", "supervise.programs: must not be empty"),
        ("supervise:\n  programs: [api, api]\n", "supervise.programs: must not repeat"),
        ("supervise:\n  workers: 0\n", "supervise.workers: must be an integer from 1 to 64"),
    ],
)
def test_bad_file_values_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(file=str(path))
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_hierarchical_labels_and_hostnames_with_dots(tmp_path):
    path = write(tmp_path, "job:\n  worker:\n    hostname: web-01.example.com\n    labels: {group: web.dev.us-east, zone: a}\n")
    cfg = load(file=str(path))
    assert cfg.job.worker.hostname == "web-01.example.com"
    assert cfg.job.worker.labels == {"group": "web.dev.us-east", "zone": "a"}


def test_config_is_read_only():
    cfg = load()
    with pytest.raises(AttributeError):
        cfg.api.server.port = 1
    with pytest.raises(AttributeError, match="no configuration key api.nope"):
        cfg.api.nope


# ---------------------------------------------------------------- derived values


def test_state_dir_and_secrets(tmp_path):
    cfg = load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "st")})
    assert config.state_dir(cfg) == tmp_path / "st"
    assert config.read_secret(cfg, "nats.token") is None
    (tmp_path / "st" / "secrets").mkdir(parents=True)
    (tmp_path / "st" / "secrets" / "nats.token").write_text("tok\n")
    assert config.read_secret(cfg, "nats.token") == "tok"
    assert config.nats_token(cfg) == "tok"
    assert config.nats_server_token(cfg) == "tok"
    assert config.nats_token(load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "st"), "OSAPI_NATS_TOKEN": "x"})) == "x"


def test_signing_key_resolution(tmp_path):
    cfg = load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="no signing key"):
        config.signing_key(cfg)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "signing_key").write_text("k" * 40)
    assert config.signing_key(cfg) == "k" * 40
    (tmp_path / "secrets" / "signing_key").write_text("short")
    with pytest.raises(ConfigError, match="shorter than 32"):
        config.signing_key(cfg)
    configured = load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path), "OSAPI_API_SERVER_SECURITY_SIGNING_KEY": "s" * 32})
    assert config.signing_key(configured) == "s" * 32


# ---------------------------------------------------------------- secrets another user could have written


@pytest.mark.timeout(60)  # the FIFO case blocked for ever before the rule
@pytest.mark.parametrize("name", ["signing_key", "admin.token", "nats.token"])
@pytest.mark.parametrize("case", trust_support.hostile_params())
def test_a_secret_another_user_could_have_written_is_refused_and_nothing_changes(tmp_path, case, name):
    state = trust_support.good_state(tmp_path / "st")
    cfg = load({"OSAPI_SUPERVISE_STATE_DIR": str(state)})
    assert config.read_secret(cfg, name) == trust_support.SECRET_VALUES[name]
    refused = case.spoil(state, name)
    before = trust_support.snapshot(tmp_path)
    readers = {"signing_key": config.signing_key, "nats.token": config.nats_token,
               "admin.token": lambda c: config.read_secret(c, "admin.token")}
    for read in (lambda c: config.read_secret(c, name), readers[name]):
        with pytest.raises(ConfigError) as exc:
            read(cfg)
        assert exc.value.exit_status == 2
        assert f"refusing to use {refused}: " in exc.value.message and case.reason in exc.value.message
        assert str(refused) in exc.value.hint and ("chown" in exc.value.hint or "rm " in exc.value.hint)
    assert trust_support.snapshot(tmp_path) == before


def test_the_hint_is_the_command_that_fixes_it(tmp_path):
    state = trust_support.good_state(tmp_path / "st")
    os.chmod(state, 0o777)
    os.chmod(state / "secrets" / "signing_key", 0o622)
    with pytest.raises(ConfigError) as exc:
        config.read_secret_file(state, "signing_key")
    assert exc.value.hint == f"if it is yours: chown {trust_support.ME}: {state} && chmod 700 {state}"
    os.chmod(state, 0o700)
    with pytest.raises(ConfigError) as exc:
        config.read_secret_file(state, "signing_key")
    secret = state / "secrets" / "signing_key"
    assert exc.value.hint.startswith(f"if you wrote it: chown {trust_support.ME}: {secret} && chmod 600 {secret}; ")


def test_what_the_default_umask_makes_and_our_own_links_are_trusted(tmp_path):
    # 0755 directories and 0644 files (umask 022, as test helpers and people make them):
    # nobody else can write them
    (tmp_path / "st" / "secrets").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "st", 0o755)
    (tmp_path / "st" / "secrets" / "signing_key").write_text("a" * 40 + "\n")
    os.chmod(tmp_path / "st" / "secrets" / "signing_key", 0o644)
    assert config.read_secret_file(tmp_path / "st", "signing_key") == "a" * 40
    # a state dir and a secrets/ that are our own links to our own directories
    (tmp_path / "linked").symlink_to(tmp_path / "st")
    assert config.read_secret_file(tmp_path / "linked", "signing_key") == "a" * 40
    (tmp_path / "st2").mkdir(mode=0o700)
    (tmp_path / "st2" / "secrets").symlink_to(tmp_path / "st" / "secrets")
    assert config.read_secret_file(tmp_path / "st2", "signing_key") == "a" * 40
    # missing pieces are "no secret", not an error
    assert config.read_secret_file(tmp_path / "st", "nats.token") is None
    assert config.read_secret_file(tmp_path / "nowhere", "nats.token") is None
    (tmp_path / "file").write_text("")
    assert config.read_secret_file(tmp_path / "file" / "st", "nats.token") is None


def test_a_huge_secret_is_refused_without_reading_it_all(tmp_path):
    state = trust_support.good_state(tmp_path / "st")
    with open(state / "secrets" / "nats.token", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB of NULs
    with pytest.raises(ConfigError, match="larger than 65536 bytes"):
        config.read_secret_file(state, "nats.token")


@pytest.mark.parametrize(
    "env, urls",
    [
        ({}, ["nats://127.0.0.1:4222"]),
        ({"OSAPI_NATS_SERVER_HOST": "0.0.0.0", "OSAPI_NATS_SERVER_PORT": "4333"}, ["nats://127.0.0.1:4333"]),
        ({"OSAPI_NATS_SERVER_HOST": "::"}, ["nats://[::1]:4222"]),
        ({"OSAPI_NATS_URL": "nats://10.0.0.1:4222"}, ["nats://10.0.0.1:4222"]),
        ({"OSAPI_NATS_URL": "nats://a:1,nats://b:2"}, ["nats://a:1", "nats://b:2"]),
    ],
)
def test_nats_urls(env, urls):
    assert config.nats_urls(load(env)) == urls


def test_nats_client_token_falls_back_to_the_servers_own_token(tmp_path):
    # one host running nats-server with a configured token: the API and workers there
    # must not need the same secret configured twice
    cfg = load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path), "OSAPI_NATS_SERVER_AUTH_TOKEN": "srv"})
    assert config.nats_token(cfg) == "srv"
    cfg = load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path), "OSAPI_NATS_SERVER_AUTH_TOKEN": "srv",
                "OSAPI_NATS_TOKEN": "client"})
    assert config.nats_token(cfg) == "client"
    assert config.nats_token(load({"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path)})) is None


def test_a_bad_file_value_is_an_error_even_when_the_environment_overrides_it(tmp_path):
    path = write(tmp_path, "api:\n  server:\n    port: 99999\n")
    with pytest.raises(ConfigError, match=r"configuration file .*: api.server.port: must be an integer from 1 to 65535"):
        load({"OSAPI_API_SERVER_PORT": "18080"}, str(path))
