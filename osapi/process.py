"""This process and the files it writes: what ``supervise``, ``natsd`` and the
commands they start share (kept here so that neither imports the other).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600


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
