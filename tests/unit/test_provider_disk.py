"""Disk usage checked against statvfs(2) and the live mount table."""

from __future__ import annotations

import os
from collections import namedtuple

import psutil
import pytest
from provider_support import check_result, needs_root, run_as_nobody, run_in_mount_namespace, unshare_reason

from osapi.domain import operations
from osapi.domain.operations import HostContext
from osapi.provider import disk

Part = namedtuple("Part", "device mountpoint fstype opts")
HOST = HostContext(hostname="", labels={})


def test_root_disk_matches_statvfs():
    result = check_result("system.disk.get", operations.get("system.disk.get").run({}, HOST))
    st = os.statvfs("/")
    roots = [d for d in result["disks"] if d["name"] == "/"]
    assert len(roots) == 1
    root = roots[0]
    assert root["total"] == st.f_blocks * st.f_frsize
    # used/free move while other tests write files: allow 1% of the disk
    slack = root["total"] // 100
    assert abs(root["free"] - st.f_bavail * st.f_frsize) <= slack
    assert abs(root["used"] - (st.f_blocks - st.f_bfree) * st.f_frsize) <= slack
    assert root["used"] + root["free"] <= root["total"]
    psutil_root = [p for p in psutil.disk_partitions(all=True) if p.mountpoint == "/"][-1]
    assert (root["device"], root["fstype"]) == (psutil_root.device, psutil_root.fstype)


def test_only_real_filesystems_each_once():
    disks = disk.list_disks()
    names = [d["name"] for d in disks]
    assert len(names) == len(set(names))
    for d in disks:
        assert d["name"] == "/" or d["fstype"] not in disk.PSEUDO_FSTYPES, d
        assert d["total"] > 0 and 0 <= d["used"] and 0 <= d["free"] and d["used"] + d["free"] <= d["total"]
    mounted = {p.mountpoint for p in psutil.disk_partitions(all=True) if p.fstype in ("proc", "sysfs", "tmpfs")}
    assert not mounted & set(names) - {"/"}


def test_pseudo_filesystems_are_skipped_but_root_always_counts(tmp_path):
    table = [
        Part("proc", "/proc", "proc", "rw"),
        Part("sysfs", "/sys", "sysfs", "rw"),
        Part("cgroup2", "/sys/fs/cgroup", "cgroup2", "rw"),
        Part("tmpfs", "/dev/shm", "tmpfs", "rw"),
        Part("devtmpfs", "/dev", "devtmpfs", "rw"),
        Part("/dev/loop3", str(tmp_path), "squashfs", "ro"),
        Part("overlay", "/", "overlay", "rw"),  # a container's root: still the disk
    ]
    result = disk.list_disks(table)
    assert [(d["name"], d["device"], d["fstype"]) for d in result] == [("/", "overlay", "overlay")]


def test_unreadable_or_vanished_mounts_are_skipped(tmp_path):
    table = [Part("/dev/sdz1", str(tmp_path / "gone"), "ext4", "rw"), Part("/dev/vda", "/", "ext4", "rw")]
    assert [d["name"] for d in disk.list_disks(table)] == ["/"]


@needs_root()
def test_permission_denied_mount_is_skipped_not_an_error(tmp_path):
    """As an unprivileged user, a mount point inside a directory it may not enter
    (tmp_path is 0700 root) is skipped and the rest is still answered."""
    hidden = tmp_path / "private" / "mnt"
    hidden.mkdir(parents=True)
    os.chmod(tmp_path / "private", 0o700)
    code = f"""
    from collections import namedtuple
    P = namedtuple("P", "device mountpoint fstype opts")
    try:
        os.statvfs({str(hidden)!r}); can = True
    except PermissionError:
        can = False
    table = [P("/dev/sdz1", {str(hidden)!r}, "ext4", "rw"), P("/dev/vda", "/", "ext4", "rw")]
    disks = osapi.provider.disk.list_disks(table)
    print(json.dumps({{"can": can, "names": [d["name"] for d in disks]}}))
    """
    status, out, err = run_as_nobody(code, ["osapi.provider.disk"])
    assert status == 0, err
    assert out == {"can": False, "names": ["/"]}


def test_same_filesystem_mounted_twice_is_reported_once_under_the_shorter_name(tmp_path):
    sub = tmp_path / "bound"
    sub.mkdir()
    same_fs_as_root = os.stat(sub).st_dev == os.stat("/").st_dev
    if not same_fs_as_root:
        pytest.skip("tmp_path is not on the root filesystem")
    table = [Part("/dev/vda", str(sub), "ext4", "rw"), Part("/dev/vda", "/", "ext4", "rw")]
    assert [d["name"] for d in disk.list_disks(table)] == ["/"]


@pytest.mark.skipif(unshare_reason() is not None, reason=str(unshare_reason()))
def test_real_bind_mount_is_not_a_second_disk(tmp_path):
    """A real bind mount (inside a private mount namespace, invisible to the host)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    code = f"""
    from osapi.provider import disk
    mounted = any(p.mountpoint == {str(dst)!r} for p in __import__("psutil").disk_partitions(all=True))
    print(json.dumps({{"mounted": mounted, "names": [d["name"] for d in disk.list_disks()]}}))
    """
    status, out, err = run_in_mount_namespace(code, binds=[(str(src), str(dst))])
    assert status == 0, err
    assert out["mounted"] is True  # the bind mount is really in that namespace's table
    assert str(dst) not in out["names"]
    assert set(out["names"]) == {d["name"] for d in disk.list_disks()}


def test_bounded_probe_answers_like_the_direct_one():
    assert disk._usage_bounded("/", 5.0)["total"] == disk.usage("/")["total"]
    assert disk._usage_bounded("/no/such/mount", 5.0) is None
