"""Helpers for tests of ``osapi supervise``: one supervise process, its children, /proc scans.

``Supervise`` runs a supervise command (from the source tree or from the pyz)
with an explicit environment, polls its status over the real supervisor socket
and stops it by pid (TERM, then KILL of the whole tree it left). Every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from testkit import stop_process, wait_for

from osapi import supervise


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes with ``text`` in their command line or environment (the state dir)."""
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as handle:
                    if needle in handle.read() and alive(int(entry)):
                        found.append(int(entry))
                        break
            except OSError:
                continue
    return found


class Supervise:
    """One running ``osapi supervise``."""

    def __init__(self, command: list[str], env: dict[str, str], state_dir: Path, workdir: Path,
                 status_command: list[str] | None = None):
        self.command = command
        self.env = env
        self.state_dir = Path(state_dir)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_command = status_command
        self.proc: subprocess.Popen | None = None
        self.out = self.workdir / "supervise.out"
        self.err = self.workdir / "supervise.err"

    @property
    def paths(self) -> supervise.Layout:
        return supervise.Layout(self.state_dir)

    def start(self) -> "Supervise":
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=err,
                                         cwd=self.workdir, start_new_session=True)
        return self

    def log(self) -> str:
        text = self.err.read_text(errors="replace") if self.err.exists() else ""
        logs = self.state_dir / "logs"
        if logs.is_dir():
            for path in sorted(logs.glob("*.log")):
                text += f"\n--- {path.name}\n" + path.read_text(errors="replace")[-4000:]
        return text

    def status(self) -> dict | None:
        """The supervisor's status, or None when it does not answer (yet)."""
        if self.status_command:
            result = subprocess.run(self.status_command + ["supervise", "status", "--json"], env=self.env,
                                    capture_output=True, text=True, timeout=60, cwd=self.workdir)
            return json.loads(result.stdout) if result.returncode == 0 else None
        try:
            return supervise.status(self.paths)
        except Exception:  # noqa: BLE001 -- not up yet
            return None

    def processes(self) -> dict[str, dict]:
        data = self.status() or {"processes": []}
        return {p["name"]: p for p in data["processes"]}

    def wait_running(self, names: list[str], timeout: float = 60.0) -> dict[str, dict]:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervise exited with {self.proc.returncode}:\n{self.log()}")
            procs = self.processes()
            if all(procs.get(n, {}).get("state") == "RUNNING" for n in names):
                return procs
            return None

        try:
            return wait_for(ready, timeout, f"{names} RUNNING", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.processes()}\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        """Stop supervise by pid; if anything it started is left, kill it and say so."""
        if self.proc is None:
            return None
        left = children_of(self.proc.pid)
        status = stop_process(self.proc, timeout=timeout, sig=sig)
        for pid in left:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return status
