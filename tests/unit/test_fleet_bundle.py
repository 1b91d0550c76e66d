"""A fleet host's bundle (osapi/fleet/bundle.py): a complete osapi.yaml the host runs with as it is."""

from __future__ import annotations

from osapi import config
from osapi.fleet import bundle

ENTRY = {"hostname": "edge1", "labels": {"group": "web"}, "user": "osapi-host-0123456789abcdef",
         "password": "ab" * 24}


def test_the_bundle_carries_the_control_planes_consumer_settings(tmp_path):
    """The control plane creates the host's consumers with its job.consumer.*: the host's worker paces
    its progress acks by ack_wait and knows its last delivery by max_deliver, so it needs the same."""
    cfg = config.load(None, {"OSAPI_JOB_CONSUMER_ACK_WAIT": "7s", "OSAPI_JOB_CONSUMER_MAX_DELIVER": "3",
                             "OSAPI_JOB_CONSUMER_BACK_OFF": "500ms,4s",
                             "OSAPI_NATS_URL": "nats://10.0.0.1:4222,nats://10.0.0.2:4222"})
    path = tmp_path / "edge1.yaml"
    path.write_text(bundle.render(cfg, ENTRY))
    host = config.load(str(path), {})
    assert host.job.consumer.ack_wait == 7.0
    assert host.job.consumer.max_deliver == 3
    assert list(host.job.consumer.back_off) == [0.5, 4.0]
    assert config.nats_urls(host) == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert (host.nats.user, host.nats.password) == (ENTRY["user"], ENTRY["password"])
    assert host.job.worker.hostname == "edge1" and dict(host.job.worker.labels) == {"group": "web"}
    assert list(host.supervise.programs) == ["worker"]
    assert not host.nats.token
