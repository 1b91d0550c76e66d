"""This process and the files it writes: what ``supervise``, ``natsd`` and the
commands they start share (kept here so that neither imports the other).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

from osapi.errors import ConfigError

log = logging.getLogger("osapi.supervise")  # the state dir's messages, under supervise's name

SECRET_MODE = 0o600
DIR_MODE = 0o700


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, SECRET_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def exit_with_supervisor(sig: int = 15) -> None:
    """Under supervise, ask Linux to send ``sig`` to this process when supervisord dies.

    supervisord stops its children itself on SIGTERM/SIGINT; this covers the case
    where it is killed outright (SIGKILL, the OOM killer) and cannot: the child
    then does not live on as an orphan holding its port (or, for nats-server, the
    JetStream store). The setting survives ``exec``. A no-op outside supervise
    (no ``SUPERVISOR_ENABLED`` in the environment) and where prctl is unavailable.
    """
    if not os.environ.get("SUPERVISOR_ENABLED"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        parent = os.getppid()
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    except (OSError, AttributeError, ImportError):
        pass


def make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror or exc}",
            "set supervise.state_dir (OSAPI_SUPERVISE_STATE_DIR) to a directory you can write",
        ) from None
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory", "set supervise.state_dir to a directory")


def create_secret(path: Path, make: Callable[[], str]) -> bool:
    """Create ``path`` (mode 0600) holding ``make()`` unless it exists. True if this call created it.

    Atomic and race-free: the value goes to a temporary file that is then
    published with ``link()``, which fails with EEXIST when another process got
    there first; its value is kept. An existing file is never rewritten, only
    its mode is tightened to 0600 if it was laxer.
    """
    if os.path.lexists(path):
        tighten(path)
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(make() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, SECRET_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # a filesystem without hard links: O_EXCL still refuses to overwrite
            with open(tmp, "rb") as src:
                data = src.read()
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as dst:
                dst.write(data)
        log.info("created %s", path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def tighten(path: Path) -> None:
    try:
        mode = path.lstat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, SECRET_MODE)
            log.warning("%s was mode %04o; set it to 0600", path, mode)
    except OSError as exc:
        log.warning("cannot check the mode of %s: %s", path, exc.strerror or exc)


def tighten_dir(path: Path) -> None:
    """Our own directory with any group/other permission: chmod 0700, and say so."""
    try:
        st = path.stat()
        mode = st.st_mode & 0o777
        if st.st_uid == os.geteuid() and mode & 0o077:
            os.chmod(path, DIR_MODE)
            log.warning("%s was mode %04o; set it to 0700", path, mode)
    except OSError as exc:
        log.warning("cannot check the mode of %s: %s", path, exc.strerror or exc)
