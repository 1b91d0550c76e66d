"""The Debian package, built once per session, and a throwaway Debian root to install it in.

``deb`` runs ``packaging/build_deb.py`` the way a packager does (it builds the real
``osapi.pyz`` with ``build_pyz.py`` itself) and unpacks the result with
``dpkg-deb -R``. ``pyz`` is a separate ``build_pyz.py`` run with the same
``SOURCE_DATE_EPOCH``, made just before, for the tests that compare the two (in a
work tree that others edit at the same moment, the two builds can see different
sources; CI's clone does not change).

``debian_root`` is a minimal Debian made by ``debootstrap --variant=minbase
--include=python3`` for the host's own release and architecture: a real
``dpkg -i``/``--purge`` target that is not the machine itself. A debootstrap takes
about 35 s here (about 13 s of it downloading ~40 MB from Debian's mirror), so the
finished tree is kept as a tarball under ``/var/tmp/osapi-tests/`` (temp space,
keyed by release, architecture and the debootstrap options, renewed after 30
days) and every session unpacks a fresh copy from it in about a second. The
first session on a machine pays the debootstrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from deb_support import load_build_deb, plain_env, require_tools
from testkit import REPO

CACHE_DIR = Path("/var/tmp/osapi-tests")
CACHE_MAX_AGE = 30 * 86400
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_OPTIONS = ["--variant=minbase", "--include=python3"]


@dataclass
class Deb:
    path: Path  # the .deb
    tree: Path  # dpkg-deb -R: the files plus DEBIAN/
    epoch: int  # SOURCE_DATE_EPOCH the build used
    version: str
    arch: str


@pytest.fixture(scope="session")
def build_deb():
    return load_build_deb()


@pytest.fixture(scope="session")
def pyz(tmp_path_factory, build_deb) -> Path:
    """A separate build of osapi.pyz with the epoch the package build uses (the changelog's date)."""
    require_tools()
    _version, epoch = build_deb.changelog_top(REPO / "packaging" / "debian" / "changelog")
    out = tmp_path_factory.mktemp("pyz") / "osapi.pyz"
    result = subprocess.run(
        [sys.executable, str(REPO / "build_pyz.py"), "-o", str(out)],
        capture_output=True, text=True, timeout=300, env=plain_env(SOURCE_DATE_EPOCH=str(epoch)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="session")
def deb(tmp_path_factory, build_deb, pyz) -> Deb:
    """``build_deb.py`` building its own pyz, right after ``pyz`` so both see the same sources."""
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_deb.py"), "-o", str(out)],
        capture_output=True, text=True, timeout=600, env=plain_env(HOME=str(out)), cwd=out,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    debs = list(out.glob("*.deb"))
    assert len(debs) == 1, debs
    tree = tmp_path_factory.mktemp("deb-tree") / "root"
    subprocess.run(["dpkg-deb", "-R", str(debs[0]), str(tree)], check=True, timeout=120)
    version, epoch = build_deb.changelog_top(REPO / "packaging" / "debian" / "changelog")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    return Deb(debs[0], tree, epoch, version, arch)


# ---------------------------------------------------------------- the Debian root


def _release() -> str:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    if fields.get("ID") != "debian" or not fields.get("VERSION_CODENAME"):
        pytest.fail(f"the install test debootstraps the host's Debian release; this host is {fields.get('PRETTY_NAME')}")
    return fields["VERSION_CODENAME"]


def _cached_tarball(arch: str) -> Path:
    release = _release()
    name = f"debootstrap-{release}-{arch}-{'-'.join(o.strip('-').replace('=', '_') for o in DEBOOTSTRAP_OPTIONS)}.tar"
    tarball = CACHE_DIR / name
    if tarball.is_file() and time.time() - tarball.stat().st_mtime < CACHE_MAX_AGE:
        return tarball
    CACHE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(os.path.realpath(CACHE_DIR)) / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        # in a private mount namespace: the /proc and /sys debootstrap mounts in the
        # target vanish with it, even if it fails halfway
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private",
             "debootstrap", *DEBOOTSTRAP_OPTIONS, release, str(work / "root"), MIRROR],
            capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, f"debootstrap {release} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        partial = work / "root.tar"
        # numeric owners, device nodes and modes as they are; the apt cache is not needed
        subprocess.run(
            ["tar", "-C", str(work / "root"), "--numeric-owner", "--exclude=./var/cache/apt/archives/*.deb",
             "-cf", str(partial), "."],
            check=True, timeout=300,
        )
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


@pytest.fixture(scope="session")
def debian_root(tmp_path_factory, deb) -> Path:
    if os.geteuid() != 0:
        pytest.skip("installing a .deb into a debootstrap root needs root (CI runs as root)")
    tarball = _cached_tarball(deb.arch)
    root = tmp_path_factory.mktemp("debian") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True, timeout=300)
    assert (root / "usr" / "bin" / "python3").exists() and (root / "usr" / "bin" / "dpkg").exists()
    yield root
    shutil.rmtree(root, ignore_errors=True)

