"""Disk usage of the real mounted filesystems.

What counts as a disk: every mount from ``/proc/self/mounts`` (through psutil)
except the kernel's pseudo filesystems (proc, sysfs, cgroup, tmpfs, devtmpfs,
overlay, squashfs, …); ``/`` is always reported whatever its type, since a
container's root on overlay is still the disk its programs fill.

Sizes come from statvfs(2) exactly as ``df`` computes them, in bytes:
``total`` = blocks × fragment size, ``free`` = blocks available to unprivileged
users, ``used`` = blocks − all free blocks. The blocks reserved for root are in
neither ``used`` nor ``free``, so ``used + free <= total``.

Least privilege: a mount point the worker may not stat (permission denied, a
stale network mount, …) is skipped, never an error. Bind mounts and
filesystems mounted more than once are reported once, under their shortest
mount point.
"""

from __future__ import annotations

import os
import queue
import threading

# Never a disk, unless mounted at "/".
PSEUDO_FSTYPES = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
        "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs",
        "overlay", "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs",
        "squashfs", "sysfs", "tmpfs", "tracefs", "nfsd", "aufs", "fuse.lxcfs",
        "fuse.gvfsd-fuse", "fuse.portal", "fuse.snapfuse", "binder", "zonefs",
    }
)

# statvfs on these may block for a long time when the server is gone: probe them
# in a helper thread and give up after NETWORK_TIMEOUT seconds.
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.sshfs", "fuse.glusterfs", "9p", "afs"}
)
NETWORK_TIMEOUT = 2.0


def is_real(device: str, mountpoint: str, fstype: str) -> bool:
    """Whether a mount is a filesystem an operator calls a disk."""
    if mountpoint == "/":
        return True
    return fstype not in PSEUDO_FSTYPES


def usage(mountpoint: str) -> dict | None:
    """``{total, used, free}`` in bytes for one mount point, or None if unreadable."""
    try:
        st = os.statvfs(mountpoint)
    except OSError:  # PermissionError included: least privilege means skip it
        return None
    size = st.f_frsize or st.f_bsize
    return {
        "total": st.f_blocks * size,
        "used": (st.f_blocks - st.f_bfree) * size,
        "free": st.f_bavail * size,
    }


def _usage_bounded(mountpoint: str, timeout: float) -> dict | None:
    """``usage`` in a daemon thread; None if it does not answer within ``timeout``."""
    box: queue.Queue = queue.Queue(maxsize=1)
    thread = threading.Thread(target=lambda: box.put(usage(mountpoint)), daemon=True,
                              name=f"statvfs {mountpoint}")
    thread.start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        return None


def _identity(device: str, mountpoint: str) -> tuple:
    """What makes two mounts the same filesystem: the st_dev of the mount point
    (bind mounts share it) and the source device."""
    try:
        dev = os.stat(mountpoint).st_dev
    except OSError:
        dev = None
    return (dev, device)


def list_disks(partitions=None) -> list[dict]:
    """The disks in mount-table order, each ``{name, device, fstype, total, used, free}``.

    ``partitions`` (psutil ``sdiskpart``-like objects) is for tests; by default
    the live mount table.
    """
    if partitions is None:
        import psutil

        partitions = psutil.disk_partitions(all=True)
    found: list[dict] = []
    seen: dict[tuple, int] = {}  # filesystem identity -> index in found
    for part in partitions:
        device, mountpoint, fstype = part.device, part.mountpoint, part.fstype
        if not is_real(device, mountpoint, fstype):
            continue
        if fstype in NETWORK_FSTYPES:
            sizes = _usage_bounded(mountpoint, NETWORK_TIMEOUT)
        else:
            sizes = usage(mountpoint)
        if sizes is None or sizes["total"] <= 0:
            continue  # unreadable, or an empty pseudo filesystem we do not know by name
        entry = {"name": mountpoint, "device": device, "fstype": fstype, **sizes}
        key = _identity(device, mountpoint)
        if key not in seen:
            seen[key] = len(found)
            found.append(entry)
        elif len(mountpoint) < len(found[seen[key]]["name"]):
            found[seen[key]] = entry  # same place in the table, the shorter name
    return found


def disks(data: dict, host) -> dict:
    return {"disks": list_disks()}
