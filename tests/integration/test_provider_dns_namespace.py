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
    from osapi.job import operations
    from osapi.job.operations import HostContext
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
