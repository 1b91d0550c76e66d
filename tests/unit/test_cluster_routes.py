"""The route secret of a control-plane cluster (osapi/natsd.py, README "Run a fleet"): routes present it.

``supervise`` makes ``secrets/cluster.token`` for a node with ``nats.server.cluster.name``;
the rendered configuration requires it from every route (``cluster { authorization }``)
and writes it into the routes to the other members; nats-server accepts the file
(``-t``) whatever the secret holds, and a redacted route URL never shows it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from osapi import config, natsd, supervise

SECRET = "s3cret_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"


def test_route_urls_carry_the_secret_and_redact_drops_it():
    routes = ["nats://10.0.0.2:6222", "nats-route://h3.example:6222", "nats://own:pw@10.0.0.4:6222"]
    urls = natsd.route_urls(routes, SECRET)
    assert urls[:2] == [f"nats://osapi-route:{SECRET}@10.0.0.2:6222",
                        f"nats-route://osapi-route:{SECRET}@h3.example:6222"]
    assert urls[2] == routes[2]  # credentials of its own are kept
    assert [config.redact_url(u) for u in urls] == ["nats://10.0.0.2:6222", "nats-route://h3.example:6222",
                                                    "nats://10.0.0.4:6222"]
    assert natsd.route_urls(routes, None) == routes


@pytest.mark.parametrize("secret", [SECRET, 'a"b}\n include "/etc/passwd"', "p@ss:w/rd?#%"])
def test_a_cluster_config_requires_the_secret_and_nats_server_reads_it(tmp_path, secret):
    conf = tmp_path / "nats.conf"
    conf.write_text(natsd.render_config(
        host="127.0.0.1", port=4222, store_dir=tmp_path / "js", token="t" * 20, cluster_name="osapi",
        cluster_host="127.0.0.1", cluster_port=6222, routes=["nats://10.0.0.2:6222"], route_secret=secret))
    checked = subprocess.run([str(natsd.find_binary()), "-c", str(conf), "-t"], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
    text = conf.read_text()
    assert f'user: "{natsd.ROUTE_USER}"' in text and f"password: {json.dumps(secret)}" in text
    assert "/etc/passwd\"\n" not in text.replace(json.dumps(secret), "")  # only ever inside one JSON string
    assert text.count("authorization {") == 2  # the clients' and the routes'


def test_no_cluster_no_route_authorization(tmp_path):
    text = natsd.render_config(host="127.0.0.1", port=4222, store_dir=tmp_path / "js", token="t" * 20,
                               route_secret=SECRET)
    assert "cluster {" not in text and SECRET not in text


def test_supervise_makes_the_route_secret_for_a_cluster_node_only(tmp_path):
    plain = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "one")})
    supervise.bootstrap(plain, ["nats"])
    assert not (tmp_path / "one" / "secrets" / natsd.ROUTE_SECRET).exists()
    node = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(tmp_path / "node"),
                              "OSAPI_NATS_SERVER_CLUSTER_NAME": "osapi",
                              "OSAPI_NATS_SERVER_CLUSTER_ROUTES": "nats://10.0.0.2:6222"})
    supervise.bootstrap(node, ["nats"])
    secret = config.read_secret(node, natsd.ROUTE_SECRET)
    assert secret and len(secret) >= 32
    assert (tmp_path / "node" / "secrets" / natsd.ROUTE_SECRET).stat().st_mode & 0o777 == 0o600
    supervise.bootstrap(node, ["nats"])  # never made again over an existing one
    assert config.read_secret(node, natsd.ROUTE_SECRET) == secret
    path, _ = natsd.write_config(node, require_auth=True)
    text = path.read_text()
    assert f"nats://osapi-route:{secret}@10.0.0.2:6222" in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_existing_node_gets_no_route_secret_of_its_own(tmp_path):
    """A node that ran before (its nats.token exists: upgraded, or clustered later) makes none: one of its
    own would differ from the other nodes' and cut the cluster's routes. Its routes stay unauthorized
    (nats server start warns) until the operator puts one secret on every node."""
    state = tmp_path / "old"
    single = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(state)})
    supervise.bootstrap(single, ["nats"])
    node = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(state), "OSAPI_NATS_SERVER_CLUSTER_NAME": "osapi",
                              "OSAPI_NATS_SERVER_CLUSTER_ROUTES": "nats://10.0.0.2:6222"})
    supervise.bootstrap(node, ["nats"])
    assert not (state / "secrets" / natsd.ROUTE_SECRET).exists()
    path, _ = natsd.write_config(node, require_auth=True)
    text = path.read_text()
    assert '"nats://10.0.0.2:6222"' in text and "osapi-route" not in text
    # the operator's copy of node 1's secret: used from then on
    (state / "secrets" / natsd.ROUTE_SECRET).write_text(SECRET + "\n")
    (state / "secrets" / natsd.ROUTE_SECRET).chmod(0o600)
    path, _ = natsd.write_config(node, require_auth=True)
    assert f"nats://osapi-route:{SECRET}@10.0.0.2:6222" in path.read_text()
