"""README "TLS": the nats.tls.ca and nats.server.tls.* keys, and the tls blocks of nats-server's configuration."""

from __future__ import annotations

import pytest

from osapi import config, natsd
from osapi.errors import ConfigError
from osapi.tls import ServerFiles

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def write(tmp_path, text):
    path = tmp_path / "osapi.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_tls_off():
    cfg = config.load(None, {})
    assert cfg.nats.tls.ca == ""
    assert cfg.nats.server.tls.as_dict() == {"enabled": False, "cert_file": "", "key_file": "", "ca_file": ""}


def test_environment_overrides_like_the_other_keys():
    cfg = config.load(None, {"OSAPI_NATS_SERVER_TLS_ENABLED": "true", "OSAPI_NATS_TLS_CA": "/etc/osapi/ca.pem",
                             "OSAPI_NATS_SERVER_TLS_CERT_FILE": "/c.pem", "OSAPI_NATS_SERVER_TLS_KEY_FILE": "/k.pem",
                             "OSAPI_NATS_SERVER_TLS_CA_FILE": "/ca.pem"})
    assert cfg.nats.server.tls.enabled is True
    assert cfg.nats.tls.ca == "/etc/osapi/ca.pem"
    assert (cfg.nats.server.tls.cert_file, cfg.nats.server.tls.key_file, cfg.nats.server.tls.ca_file) == \
        ("/c.pem", "/k.pem", "/ca.pem")


def test_ca_as_pem_text_in_the_file(tmp_path):
    path = write(tmp_path, "nats:\n  tls:\n    ca: |\n" + "".join(f"      {line}\n" for line in PEM.splitlines()))
    assert config.load(path, {}).nats.tls.ca.strip() == PEM


@pytest.mark.parametrize("key, value, words", [
    ("OSAPI_NATS_SERVER_TLS_ENABLED", "maybe", "nats.server.tls.enabled: must be true or false"),
    ("OSAPI_NATS_SERVER_TLS_CERT_FILE", "/tmp/c.pem\nlisten: 0.0.0.0:1", "nats.server.tls.cert_file: must be a file path"),
    ("OSAPI_NATS_SERVER_TLS_KEY_FILE", "/tmp/k\x00.pem", "nats.server.tls.key_file: must be a file path"),
    ("OSAPI_NATS_SERVER_TLS_CA_FILE", "/tmp/\x1b[31mca", "nats.server.tls.ca_file: must be a file path"),
    ("OSAPI_NATS_TLS_CA", "ca.pem\nmore", "nats.tls.ca: must be the PEM text of CA certificates or a file path"),
    ("OSAPI_NATS_TLS_CA", "-----BEGIN CERTIFICATE-----\nMIIB", "nats.tls.ca: must be the PEM text"),
    ("OSAPI_NATS_TLS_CA", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----", "nats.tls.ca: must be the PEM"),
    ("OSAPI_NATS_TLS_CA", PEM + "\n-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n" + PEM,
     "nats.tls.ca: must be the PEM"),
])
def test_bad_values_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as caught:
        config.load(None, {key: value})
    assert words in str(caught.value) and key in str(caught.value)


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, 'nats:\n  server:\n    tls:\n      cert_file: "/a\\nb"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert str(tmp_path / "osapi.yaml") in str(caught.value) and "nats.server.tls.cert_file" in str(caught.value)


FILES = ServerFiles("/s/server.pem", "/s/server.key", "/s/ca.pem")


def test_render_config_without_tls_has_no_tls_block():
    text = natsd.render_config(host="127.0.0.1", port=4222, store_dir="/js", token="t", cluster_name="c",
                               routes=["nats-route://127.0.0.1:6223"])
    assert "tls" not in text


def test_render_config_requires_tls_from_clients_and_routes():
    text = natsd.render_config(host="127.0.0.1", port=4222, store_dir="/js", token="t", cluster_name="c",
                               routes=["nats-route://127.0.0.1:6223"], tls=FILES)
    top, cluster = text[:text.index("cluster {")], text[text.index("cluster {"):]
    client_block = top[top.index("tls {"):top.index("}", top.index("tls {")) + 1]
    assert client_block.splitlines() == ["tls {", '  cert_file: "/s/server.pem"', '  key_file: "/s/server.key"',
                                         '  ca_file: "/s/ca.pem"', "  verify: false",
                                         f"  timeout: {natsd.TLS_TIMEOUT}", "}"]
    assert '  tls {\n    cert_file: "/s/server.pem"\n    key_file: "/s/server.key"\n    ca_file: "/s/ca.pem"\n' \
           "    verify: true\n" in cluster
    assert "allow_non_tls" not in text


def test_render_config_quotes_hostile_paths():
    hostile = ServerFiles('/s/a"\n}\nlisten: 0.0.0.0:1 #', "/s/k", "")
    text = natsd.render_config(host="127.0.0.1", port=4222, store_dir="/js", token=None, tls=hostile)
    assert "\nlisten" not in text and "ca_file" not in text
