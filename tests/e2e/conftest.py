"""The built ``osapi.pyz``, run by a bare Python: built once per session, reused by every test.

``pyz`` builds it with ``build_pyz.py`` into a temp dir. ``bare_python`` is a venv
made with ``--without-pip`` and without system site packages, so only the
standard library is importable (checked). ``PyzRunner`` runs the archive with an
environment holding nothing but PATH (without this venv), an empty HOME and what
the test adds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit import REPO

PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="session")
def source_snapshot(tmp_path_factory) -> Path:
    """A frozen copy of what build_pyz.py reads, so a second build sees the very same source."""
    snapshot = tmp_path_factory.mktemp("source")
    for name in ("build_pyz.py", "pyproject.toml"):
        shutil.copy2(REPO / name, snapshot / name)
    shutil.copytree(REPO / "osapi", snapshot / "osapi", ignore=shutil.ignore_patterns("__pycache__"))
    return snapshot


@pytest.fixture(scope="session")
def pyz(tmp_path_factory, source_snapshot) -> Path:
    out = tmp_path_factory.mktemp("pyz") / "osapi.pyz"
    result = subprocess.run([sys.executable, str(source_snapshot / "build_pyz.py"), "-o", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.is_file() and os.access(out, os.X_OK)
    return out


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> Path:
    """A Python with the standard library only (no pip, no site packages, no osapi)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    for module in ("yaml", "psutil", "nats", "supervisor", "osapi", "pip"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                               env={"PATH": PLAIN_PATH}, cwd=venv, timeout=60)
        assert probe.returncode != 0, f"{module} is importable in the bare python"
    return python


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass
class PyzRunner:
    python: Path
    pyz: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": PLAIN_PATH, "HOME": str(self.home), "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def command(self) -> list[str]:
        return [str(self.python), str(self.pyz)]

    def run(self, *args: str, env: dict | None = None, timeout: float = 60, cwd: Path | None = None,
            stdin: str = "") -> Result:
        result = subprocess.run(self.command() + list(args), env=env or self.env(), capture_output=True,
                                text=True, timeout=timeout, cwd=cwd or self.home, input=stdin)
        return Result(result.returncode, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def pyz_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def runner(bare_python, pyz, pyz_home) -> PyzRunner:
    return PyzRunner(bare_python, pyz, pyz_home)
