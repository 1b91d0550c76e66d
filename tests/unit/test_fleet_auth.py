"""The fleet users file: nothing enrolled (or the token) can break out of nats-server's configuration, and it
holds bcrypt hashes, never a password."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from osapi import config, natsd
from osapi.fleet import auth, bcrypt, hosts
from osapi.job.setup import Names

NAMES = Names.from_config(config.load(None, {}))
HOSTILE = ["web\n1", "web\x001", "*", ">", "a..b", "a/b", "a b", "_x", "", "a" * 300, 'w"}', "a.>",
           "include x", "}", "web1\r"]
HASH = auth.hash_password("0f" * 24)  # one hash for entries whose password is not tried


def entry_of(hostname: str, password_hash: str = HASH) -> dict:
    return {"user": auth.new_credentials()[0], "password_hash": password_hash, "hostname": hostname}


@pytest.mark.parametrize("value", HOSTILE + [None, 5, ["a"]])
def test_hostile_hostnames_are_refused(value):
    with pytest.raises(auth.InvalidHost):
        auth.check_hostname(value)


def test_hostnames_are_kept_in_lower_case():
    assert auth.check_hostname("Web1.Example.com") == "web1.example.com"


@pytest.mark.parametrize("field, value", [
    ("user", 'osapi-host-0123456789abcdef"}'), ("user", "osapi"), ("user", "osapi-host-0123456789abcdef\n"),
    ("password_hash", 'x" }\ninclude "/etc/shadow'), ("password_hash", HASH[:-1] + '"'),
    ("password_hash", HASH + "\n"), ("password_hash", HASH.replace("$04$", "$03$")), ("password_hash", None),
    ("password_hash", "0f" * 24),  # a plain password is never rendered
    ("hostname", "Web1"), ("hostname", "a b"),
])
def test_an_entry_with_a_hostile_field_is_refused(field, value):
    entry = {**entry_of("web1"), field: value}
    with pytest.raises(auth.InvalidHost):
        auth.render_users(HASH, [entry], NAMES)
    with pytest.raises(auth.InvalidHost):
        auth.check_entry({k: v for k, v in entry.items() if k != "password_hash"} | {"password": "0f" * 24})


@pytest.mark.parametrize("password", ["", "0f" * 23, "0F" * 24, "0f" * 24 + "\n", None])
def test_only_a_generated_password_is_hashed(password):
    with pytest.raises(auth.InvalidHost):
        auth.hash_password(password)


@pytest.mark.parametrize("labels", [{"a b": "x"}, {"g": "x\ny"}, {"g": "*"}, {"g": "a..b"}, {"g": 1}, ["g"],
                                    {"}": "x"}])
def test_hostile_labels_are_refused(labels):
    with pytest.raises(auth.InvalidHost):
        hosts.check_labels(labels)


def test_a_hostile_token_and_hosts_render_a_file_nats_server_reads_as_exactly_those_users(tmp_path):
    token = 'tok"}\n include "/etc/passwd"\n users: [{user: "evil", password: "x"}] #'
    entries = [entry_of("a"), entry_of("a.b")]
    assert auth.write_users(tmp_path, token, entries, NAMES) is True
    assert auth.write_users(tmp_path, token, entries, NAMES) is False  # same text: not written again
    conf, sidecar = auth.users_paths(tmp_path)
    assert oct(conf.stat().st_mode & 0o777) == "0o600" and oct(sidecar.stat().st_mode & 0o777) == "0o600"
    assert auth.load_hosts(sidecar) == sorted(entries, key=lambda e: e["hostname"])
    main = tmp_path / "nats.conf"
    main.write_text(natsd.render_config(host="127.0.0.1", port=4222, store_dir=tmp_path / "js", token=token,
                                        users_file=auth.USERS_CONF))
    checked = subprocess.run([str(natsd.find_binary()), "-c", str(main), "-t"], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
    text = conf.read_text()
    # one line per user; the control plane's password is the bcrypt hash of the token, which appears nowhere
    lines = [line for line in text.splitlines() if line.strip().startswith("{user:")]
    assert len(lines) == 3 and text.count("\n") == 6
    control = json.loads(lines[0].split("password: ", 1)[1].rstrip("}"))
    assert bcrypt.is_hash(control) and bcrypt.checkpw(token, control)
    assert '"evil"' not in text and "/etc/passwd" not in text and "tok\"" not in text


def test_the_users_file_and_its_sidecar_hold_no_password(tmp_path):
    token = secrets.token_urlsafe(48)
    passwords = [auth.new_credentials()[1] for _ in range(2)]
    entries = [entry_of(f"web{i}", auth.hash_password(p)) for i, p in enumerate(passwords)]
    auth.write_users(tmp_path, token, entries, NAMES)
    written = "".join(path.read_text() for path in auth.users_paths(tmp_path))
    for secret in [token, *passwords]:
        assert secret not in written
    lines = [line for line in written.splitlines() if line.strip().startswith("{user:")]
    for line, password in zip(lines[1:], passwords):
        assert bcrypt.checkpw(password, json.loads(line.split("password: ", 1)[1].split(", permissions")[0]))


def test_the_token_is_hashed_once_and_its_hash_kept_across_processes(tmp_path):
    token = secrets.token_urlsafe(48)
    assert auth.write_users(tmp_path, token, [], NAMES) is True
    first = auth.users_paths(tmp_path)[0].read_text()
    auth._control_hash = None  # another process (osapi nats server start, then an API process's renderer)
    assert auth.write_users(tmp_path, token, [], NAMES) is False
    assert auth.write_users(tmp_path, token, [entry_of("web1")], NAMES) is True
    assert auth.users_paths(tmp_path)[0].read_text().splitlines()[2] == first.splitlines()[2]
    # a new token: a new hash, the old one no longer kept
    assert auth.write_users(tmp_path, "another-" + token[8:], [], NAMES) is True
    control = auth.users_paths(tmp_path)[0].read_text().splitlines()[2]
    assert control != first.splitlines()[2] and bcrypt.checkpw("another-" + token[8:], control.split('"')[3])


def test_a_token_longer_than_bcrypt_reads_is_kept_whole():
    token = "t" * 73
    assert auth.control_password(token) == token
    assert bcrypt.checkpw("t" * 72, auth.control_password("t" * 72))


def test_a_host_never_matches_another_with_a_longer_name():
    perms_a = auth.permissions(NAMES, "a", "osapi-host-0000000000000000")
    allowed = perms_a["publish"]["allow"]
    assert "$KV.job-queue.status.*.*.a.*" in allowed and "$KV.job-responses.*.a" in allowed
    assert not any(">" in s and "a" in s.split(".") for s in allowed)  # no open tail after the hostname
    assert perms_a["subscribe"]["allow"][0] == "_INBOX.osapi-host-0000000000000000.>"
