"""What every benchmark is handed: counts, where to work, how to start an appliance."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import appliance
from bench.appliance import Appliance, NotAvailable


@dataclass
class Context:
    workdir: Path
    quick: bool
    mode: str                 # "pyz" or "source"
    python3: str              # the bare interpreter that runs osapi.pyz
    pyz: Path | None = None
    commands: set[str] = field(default_factory=set)

    def count(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def require(self, *commands: str) -> None:
        """NotAvailable unless ``osapi <command>`` exists for each command."""
        missing = [c for c in commands if c not in self.commands]
        if missing:
            raise NotAvailable(
                "not landed yet: " + ", ".join(f"`osapi {c} …`" for c in missing)
            )

    def appliance(self, name: str, **kwargs) -> Appliance:
        self.require("api", "job")
        mode = kwargs.pop("mode", self.mode)
        if mode == "pyz":
            kwargs.setdefault("pyz", self.pyz)
            kwargs.setdefault("python3", self.python3)
        return Appliance(self.workdir / name, mode=mode, **kwargs)

    def osapi_argv(self, *args: str) -> list[str]:
        if self.mode == "pyz":
            return [self.python3, str(self.pyz), *args]
        return [sys.executable, "-m", "osapi", *args]

    def prime(self) -> str:
        """Start and stop the appliance once, untimed: the first start of a fresh install
        unpacks the pyz and writes Python's module cache (.pyc), as on any real host."""
        try:
            with self.appliance("prime") as app:
                app.request("GET", "/api/v1/system/hostname")
            subprocess.run(self.osapi_argv("--version"), capture_output=True, timeout=60,
                           env=appliance.base_env(), cwd=self.workdir)
            return "one untimed start of the appliance first (unpacks the pyz, writes the .pyc cache)"
        except Exception as exc:  # noqa: BLE001 - the benchmarks will say what is missing
            return f"priming start failed: {exc}"

    @property
    def interpreter(self) -> str:
        """The interpreter that runs osapi in this mode (for the `-c pass` reference)."""
        return self.python3 if self.mode == "pyz" else sys.executable


def detect(workdir: Path, quick: bool, force_source: bool, python3: str) -> tuple[Context, list[str]]:
    """Pick pyz when build_pyz.py and supervise exist, else source; say why."""
    notes = []
    commands = appliance.osapi_commands()
    ctx = Context(workdir=workdir, quick=quick, mode="source", python3=python3, commands=commands)
    if force_source:
        notes.append("`--source` given: components started from the source tree")
        return ctx, notes
    if not (appliance.REPO / "build_pyz.py").is_file() or "supervise" not in commands:
        notes.append("build_pyz.py or `osapi supervise` not landed: components started from the source tree")
        return ctx, notes
    try:
        ctx.pyz = appliance.build_pyz(workdir / "pyz", python3)
        ctx.mode = "pyz"
    except NotAvailable as exc:
        notes.append(f"{exc}; components started from the source tree")
    return ctx, notes


def run_cmd(argv: list[str], env: dict | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
