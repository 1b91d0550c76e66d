"""Helpers for the Debian package tests (tests/packaging/): a clean environment, build_deb as a module."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
from testkit import REPO

PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# what the packaging tests run; scripts/test (scripts/install-test-tools) installs the Debian packages that bring them
REQUIRED_TOOLS = ("dpkg-deb", "dpkg", "lintian", "systemd-analyze", "debootstrap", "unshare", "chroot", "man")


def load_build_deb():
    """``packaging/build_deb.py`` as a module (it is a script, not part of the osapi package)."""
    spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging" / "build_deb.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_deb"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def plain_env(**extra: str) -> dict[str, str]:
    """Nothing of the test process (no OSAPI_*, no venv on PATH) but what is asked for."""
    env = {"PATH": PLAIN_PATH, "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def require_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the packaging tests need {', '.join(missing)}: "
            "apt-get install -y lintian debootstrap systemd man-db (scripts/test installs them as root or with sudo -n)"
        )
