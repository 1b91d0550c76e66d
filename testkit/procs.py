"""Processes for tests and benchmarks: free ports, one env cleaner, one bounded poll, stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(*, pythonpath: bool = True, bytecode_flag: bool = True, **extra: str) -> dict[str, str]:
    """The current environment without the caller's ``OSAPI_*`` variables, plus ``extra``.

    ``pythonpath``: the checkout first on ``PYTHONPATH`` (a child ``python -m osapi``
    runs this source tree). ``bytecode_flag=False`` also drops ``PYTHONDONTWRITEBYTECODE``
    (the bench measures processes as a real host runs them: with the bytecode cache).
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OSAPI_") and (bytecode_flag or k != "PYTHONDONTWRITEBYTECODE")}
    if pythonpath:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class WaitTimeout(AssertionError, TimeoutError):
    """``wait_for`` gave up: a failed test (AssertionError) that waited too long (TimeoutError)."""


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.05,
             *, tries: int | None = None):
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Bounded in time (``timeout`` seconds) and in count (``tries`` calls; by default
    one per ``interval`` over ``timeout``, plus one). Raises ``WaitTimeout`` naming
    ``what`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    tries = tries if tries is not None else int(timeout / interval) + 2
    last = None
    for _ in range(max(1, tries)):
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise WaitTimeout(f"{what} not reached within {timeout}s (last: {last!r})")


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on ``host:port``; fails at once when ``proc`` exits first."""
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_for(listening, timeout, f"something listening on {host}:{port}", interval=0.02)
    except WaitTimeout:
        raise TimeoutError(f"nothing listened on {host}:{port} within {timeout}s") from None


def stop_process(proc: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop one process by pid: ``sig``, then KILL after ``timeout``. Returns its exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


@contextlib.contextmanager
def paused(proc):
    """``proc`` (a ``Popen``, or an object with one in ``proc``) stopped by pid with SIGSTOP for the
    block, as a hung host is; always continued (SIGCONT) after it."""
    pid = getattr(proc, "proc", proc).pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def stop_all(procs, timeout: float = 20.0) -> list[int | None]:
    """SIGTERM every process first, then wait for each (their grace periods overlap), KILL after ``timeout``.

    ``procs``: ``subprocess.Popen`` objects or objects with a ``proc`` attribute
    holding one (``None`` when never started). Returns the exit codes, in order.
    """
    popens = [getattr(p, "proc", p) for p in procs]
    for popen in popens:
        if popen is not None and popen.poll() is None:
            try:
                os.kill(popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    codes = []
    for popen in popens:
        try:
            codes.append(stop_process(popen, timeout=timeout) if popen is not None else None)
        except Exception:  # noqa: BLE001 - keep stopping the others
            codes.append(None)
    return codes
