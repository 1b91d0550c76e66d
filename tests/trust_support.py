"""State directories another user could have written to, for the tests of the secret-trust rule.

``good_state(path)`` makes a state dir as ``osapi supervise`` leaves it (0700
directories, 0600 secrets, owned by this user); each entry of ``HOSTILE`` then
spoils it one way -- owned by ``nobody``, writable by group or others, a symbolic
link -- and names the path that must be refused and a phrase of the reason. The
ownership cases need root (``os.chown``), as the tests run in CI.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

NOBODY = 65534
try:
    NOBODY_NAME = pwd.getpwuid(NOBODY).pw_name
except KeyError:
    NOBODY_NAME = str(NOBODY)
ME = pwd.getpwuid(os.geteuid()).pw_name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")

SECRET_VALUES = {
    "signing_key": "k" * 64,
    "admin.token": "planted-admin-token",
    "nats.token": "planted-nats-token",
    "supervisor.password": "planted-password",
}


def good_state(state: Path) -> Path:
    (state / "secrets").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    for name, value in SECRET_VALUES.items():
        path = state / "secrets" / name
        path.write_text(value + "\n")
        os.chmod(path, 0o600)
    return state


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (itself included): its owner, mode, link target and content."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            extra = path.read_bytes()
        else:
            extra = None
        out[str(path.relative_to(root.parent))] = (st.st_uid, st.st_mode, extra)
    return out


class Hostile(NamedTuple):
    spoil: Callable[[Path, str], Path]  # (state dir, secret name) -> the path that must be refused
    reason: str  # a phrase of the error message
    root: bool = True  # needs root to build


def _chown_state(state: Path, name: str) -> Path:
    os.chown(state, NOBODY, NOBODY)
    return state


def _chmod_state(state: Path, name: str) -> Path:
    os.chmod(state, 0o777)
    return state


def _chown_secrets(state: Path, name: str) -> Path:
    os.chown(state / "secrets", NOBODY, NOBODY)
    return state / "secrets"


def _chmod_secrets(state: Path, name: str) -> Path:
    os.chmod(state / "secrets", 0o770)
    return state / "secrets"


def _chown_file(state: Path, name: str) -> Path:
    os.chown(state / "secrets" / name, NOBODY, NOBODY)
    return state / "secrets" / name


def _chmod_file(state: Path, name: str) -> Path:
    os.chmod(state / "secrets" / name, 0o666)
    return state / "secrets" / name


def _symlink_file(state: Path, name: str) -> Path:
    """The secret is a link (ours) to a file elsewhere, even a good-looking one."""
    elsewhere = state.parent / f"elsewhere-{name}"
    elsewhere.write_text(SECRET_VALUES[name] + "\n")
    os.chmod(elsewhere, 0o600)
    path = state / "secrets" / name
    path.unlink()
    path.symlink_to(elsewhere)
    return path


def _symlink_secrets(state: Path, name: str) -> Path:
    """secrets/ is a link owned by nobody to a directory that looks right."""
    real = state.parent / "real-secrets"
    (state / "secrets").rename(real)
    (state / "secrets").symlink_to(real)
    os.lchown(state / "secrets", NOBODY, NOBODY)
    return state / "secrets"


def _symlink_state(state: Path, name: str) -> Path:
    real = state.parent / "real-state"
    state.rename(real)
    state.symlink_to(real)
    os.lchown(state, NOBODY, NOBODY)
    return state


def _fifo_file(state: Path, name: str) -> Path:
    """A FIFO in the secret's place: reading it would block for ever."""
    path = state / "secrets" / name
    path.unlink()
    os.mkfifo(path, 0o600)
    return path


HOSTILE = {
    "state dir owned by nobody": Hostile(_chown_state, f"owned by {NOBODY_NAME} (uid {NOBODY})"),
    "state dir mode 0777": Hostile(_chmod_state, "writable by group or others (mode 0777)", root=False),
    "secrets/ owned by nobody": Hostile(_chown_secrets, f"owned by {NOBODY_NAME} (uid {NOBODY})"),
    "secrets/ mode 0770": Hostile(_chmod_secrets, "writable by group or others (mode 0770)", root=False),
    "secret owned by nobody": Hostile(_chown_file, f"owned by {NOBODY_NAME} (uid {NOBODY})"),
    "secret mode 0666": Hostile(_chmod_file, "writable by group or others (mode 0666)", root=False),
    "secret is a symlink": Hostile(_symlink_file, "is a symbolic link", root=False),
    "secrets/ is nobody's symlink": Hostile(_symlink_secrets, f"symbolic link owned by {NOBODY_NAME}"),
    "state dir is nobody's symlink": Hostile(_symlink_state, f"symbolic link owned by {NOBODY_NAME}"),
    "secret is a FIFO": Hostile(_fifo_file, "not a regular file", root=False),
}


def hostile_params():
    """``HOSTILE`` as pytest params, the root-only ones marked."""
    return [pytest.param(case, id=name, marks=[needs_root] if case.root else [])
            for name, case in HOSTILE.items()]
