"""End to end: DNS update against the real /etc/resolv.conf path — but inside a
private mount namespace (``unshare --mount --propagation private``) where a temp
file is bind-mounted over /etc/resolv.conf. The host's own file is never touched:
the test checks that it is byte-for-byte and inode-for-inode the same afterwards.
"""

from __future__ import annotations

import os

import pytest
from provider_support import run_in_mount_namespace, unshare_reason

REASON = unshare_reason() or (None if os.path.isfile("/etc/resolv.conf") else
                              "/etc/resolv.conf does not exist here, nothing to bind-mount over")
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

ORIGINAL = "# test copy\noptions edns0\nnameserver 192.0.2.1\nsearch before.example\n"


def host_file_state():
    st = os.stat("/etc/resolv.conf")
    with open("/etc/resolv.conf", "rb") as f:
        return f.read(), st.st_ino, st.st_mtime_ns, st.st_mode


def test_operation_rewrites_the_bind_mounted_etc_resolv_conf_only(tmp_path):
    fake = tmp_path / "resolv.conf"
    fake.write_text(ORIGINAL)
    os.chmod(fake, 0o644)
    before = host_file_state()
    code = """
    from osapi.config import load
    from osapi.domain import operations
    from osapi.domain.operations import HostContext
    config = load(environ={"OSAPI_JOB_WORKER_DNS_PROVIDER": "resolv_conf",
                           "OSAPI_JOB_WORKER_DNS_RESOLV_CONF": "/etc/resolv.conf"})
    host = HostContext(hostname="ns", labels={}, config=config)
    op = operations.get("network.dns.update")
    first = op.run(op.check({"interface_name": "lo", "servers": ["198.51.100.53", "2001:db8::53"],
                             "search_domains": ["after.example"]}), host)
    again = op.run(op.check({"interface_name": "lo", "servers": ["198.51.100.53", "2001:db8::53"]}), host)
    read = operations.get("network.dns.get").run({"interface_name": "lo"}, host)
    print(json.dumps({"first": first, "again": again, "read": read}))
    """
    status, out, err = run_in_mount_namespace(code, binds=[(str(fake), "/etc/resolv.conf")])
    assert status == 0, err
    assert out == {
        "first": {"changed": True},
        "again": {"changed": False},
        "read": {"servers": ["198.51.100.53", "2001:db8::53"], "search_domains": ["after.example"]},
    }
    assert fake.read_text() == "# test copy\noptions edns0\nnameserver 198.51.100.53\nnameserver 2001:db8::53\n" \
                               "search after.example\n"
    assert host_file_state() == before


# ---------------------------------------------------------------- through a real worker


def _start_worker_in_namespace(fake, nats_server, hostname, log_path):
    """``osapi job worker start`` inside a private mount namespace in which ``fake``
    is bind-mounted over /etc/resolv.conf (``exec`` keeps one pid to stop)."""
    import shlex
    import shutil
    import subprocess
    import sys

    from provider_support import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env.update({
        "PYTHONPATH": str(REPO),
        "OSAPI_SUPERVISE_STATE_DIR": os.environ["OSAPI_SUPERVISE_STATE_DIR"],
        "OSAPI_NATS_URL": nats_server.url,
        "OSAPI_NATS_TOKEN": nats_server.token,
        "OSAPI_JOB_WORKER_HOSTNAME": hostname,
        "OSAPI_JOB_WORKER_DNS_PROVIDER": "resolv_conf",
        "OSAPI_JOB_WORKER_DNS_RESOLV_CONF": "/etc/resolv.conf",
    })
    script = (f"mount --bind {shlex.quote(str(fake))} /etc/resolv.conf && "
              f"exec {shlex.quote(sys.executable)} -m osapi job worker start --heartbeat 1s --grace 5s")
    with open(log_path, "ab") as log:
        return subprocess.Popen([shutil.which("unshare"), "--mount", "--propagation", "private", "sh", "-c", script],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def _drive_worker(nats_server, hostname, proc, log_path):
    import asyncio
    import time

    from osapi.config import load
    from osapi.job.client import JobClient
    from osapi.job.connection import connect

    cfg = load(environ={"OSAPI_NATS_URL": nats_server.url, "OSAPI_NATS_TOKEN": nats_server.token})
    nc = await connect(cfg, "provider-dns-e2e")
    try:
        client = JobClient(nc, cfg)
        await client.setup()
        deadline = time.monotonic() + 30
        while True:  # the worker's host consumer exists once it shows in the registry
            listed = await client.workers()
            if any(w["hostname"] == hostname for w in listed["workers"]):
                break
            assert proc.poll() is None, f"worker exited with {proc.returncode}: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"worker never registered: {log_path.read_text()}"
            await asyncio.sleep(0.1)

        async def run(op_type, data):
            answer = await client.run(JobClient.prepare({"type": op_type, "data": data}, hostname), timeout=30,
                                      quiet_period=3)
            assert len(answer["results"]) == 1, answer
            return answer["results"][0]

        return {
            "update": await run("network.dns.update", {"interface_name": "lo", "servers": ["198.51.100.9"],
                                                       "search_domains": ["worker.example"]}),
            "get": await run("network.dns.get", {"interface_name": "lo"}),
            "bad": await run("network.dns.update", {"interface_name": "osapi-nope0", "servers": ["192.0.2.66"]}),
        }
    finally:
        await nc.drain()


def test_real_worker_updates_the_namespaced_etc_resolv_conf(tmp_path, nats_server):
    import asyncio
    import secrets

    from testkit import stop_process

    fake = tmp_path / "resolv.conf"
    fake.write_text(ORIGINAL)
    before = host_file_state()
    hostname = f"dns-e2e-{secrets.token_hex(3)}"
    log_path = tmp_path / "worker.log"
    proc = _start_worker_in_namespace(fake, nats_server, hostname, log_path)
    try:
        answers = asyncio.run(asyncio.wait_for(_drive_worker(nats_server, hostname, proc, log_path), 90))
        assert stop_process(proc, timeout=20) == 0, log_path.read_text()
    finally:
        stop_process(proc, timeout=20)
    assert answers["update"] == {"hostname": hostname, "changed": True}
    assert answers["get"] == {"hostname": hostname, "servers": ["198.51.100.9"], "search_domains": ["worker.example"]}
    assert answers["bad"]["status"] == "failed" and "'osapi-nope0' does not exist" in answers["bad"]["error"]
    assert fake.read_text() == "# test copy\noptions edns0\nnameserver 198.51.100.9\nsearch worker.example\n"
    assert host_file_state() == before
