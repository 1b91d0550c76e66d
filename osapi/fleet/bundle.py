"""A fleet host's bundle: its complete ``osapi.yaml`` (README.md, "Fleet hosts").

``nats.url`` (every URL the control plane itself uses), the host's own NATS user
and password, ``nats.tls.ca`` when TLS is on (``osapi.tls.ca_pem``), the job names of
the control plane and its consumer settings (``job.consumer.ack_wait``, ``max_deliver``,
``back_off``: the control plane creates the host's consumers with them, and a worker
paces its progress acks and knows its last delivery by them), the enrolled hostname
and labels, and ``supervise.programs: [worker]``. Never the NATS token. On the host:
``osapi -f HOSTNAME.yaml supervise``.
"""

from __future__ import annotations


def render(cfg, entry: dict) -> str:
    """The bundle's YAML text for an enrolled host's entry (with its credentials)."""
    import yaml

    from osapi import config, tls

    job = cfg.job
    consumer = job.consumer
    nats: dict = {"url": config.nats_urls(cfg), "user": entry["user"], "password": entry["password"]}
    ca = tls.ca_pem(cfg)
    if ca:
        nats["tls"] = {"ca": ca}
    doc = {
        "nats": nats,
        "job": {
            "stream_name": job.stream_name,
            "stream_subjects": job.stream_subjects,
            "kv_bucket": job.kv_bucket,
            "kv_response_bucket": job.kv_response_bucket,
            "consumer_name": job.consumer_name,
            "consumer": {"ack_wait": config.format_duration(consumer.ack_wait), "max_deliver": consumer.max_deliver,
                         "back_off": [config.format_duration(b) for b in consumer.back_off]},
            "worker": {"hostname": entry["hostname"], "labels": dict(entry.get("labels") or {})},
        },
        "supervise": {"programs": ["worker"]},
    }
    header = (f"# osapi bundle of fleet host {entry['hostname']} (osapi client fleet host add): holds its NATS "
              "password, keep it private.\n# On the host: python3 osapi.pyz -f THIS_FILE supervise\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
