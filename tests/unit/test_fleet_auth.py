"""The fleet users file: nothing enrolled (or the token) can break out of nats-server's configuration."""

from __future__ import annotations

import json
import subprocess

import pytest

from osapi import config, natsd
from osapi.fleet import auth, hosts
from osapi.job.setup import Names

NAMES = Names.from_config(config.load(None, {}))
HOSTILE = ["web\n1", "web\x001", "*", ">", "a..b", "a/b", "a b", "_x", "", "a" * 300, 'w"}', "a.>",
           "include x", "}", "web1\r"]


@pytest.mark.parametrize("value", HOSTILE + [None, 5, ["a"]])
def test_hostile_hostnames_are_refused(value):
    with pytest.raises(auth.InvalidHost):
        auth.check_hostname(value)


def test_hostnames_are_kept_in_lower_case():
    assert auth.check_hostname("Web1.Example.com") == "web1.example.com"


@pytest.mark.parametrize("field, value", [
    ("user", 'osapi-host-0123456789abcdef"}'), ("user", "osapi"), ("user", "osapi-host-0123456789abcdef\n"),
    ("password", 'x" }\ninclude "/etc/shadow'), ("password", "0" * 47), ("hostname", "Web1"), ("hostname", "a b"),
])
def test_an_entry_with_a_hostile_field_is_refused(field, value):
    user, password = auth.new_credentials()
    entry = {"user": user, "password": password, "hostname": "web1", field: value}
    with pytest.raises(auth.InvalidHost):
        auth.render_users("token", [entry], NAMES)


@pytest.mark.parametrize("labels", [{"a b": "x"}, {"g": "x\ny"}, {"g": "*"}, {"g": "a..b"}, {"g": 1}, ["g"],
                                    {"}": "x"}])
def test_hostile_labels_are_refused(labels):
    with pytest.raises(auth.InvalidHost):
        hosts.check_labels(labels)


def test_a_hostile_token_and_hosts_render_a_file_nats_server_reads_as_exactly_those_users(tmp_path):
    token = 'tok"}\n include "/etc/passwd"\n users: [{user: "evil", password: "x"}] #'
    a, b = auth.new_credentials(), auth.new_credentials()
    entries = [{"user": a[0], "password": a[1], "hostname": "a"}, {"user": b[0], "password": b[1], "hostname": "a.b"}]
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
    # one line per user; the token is one JSON string on the control plane's line
    lines = [line for line in text.splitlines() if line.strip().startswith("{user:")]
    assert len(lines) == 3 and json.dumps(token) in lines[0]
    assert "evil" not in "".join(lines[1:]) and text.count("\n") == 6


def test_a_host_never_matches_another_with_a_longer_name():
    perms_a = auth.permissions(NAMES, "a", "osapi-host-0000000000000000")
    allowed = perms_a["publish"]["allow"]
    assert "$KV.job-queue.status.*.*.a.*" in allowed and "$KV.job-responses.*.a" in allowed
    assert not any(">" in s and "a" in s.split(".") for s in allowed)  # no open tail after the hostname
    assert perms_a["subscribe"]["allow"][0] == "_INBOX.osapi-host-0000000000000000.>"
