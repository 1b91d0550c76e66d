"""``scripts/test`` (the README's test command) sets up everything itself; ``.ci/run`` is just that.

Each case copies the scripts into a throwaway repository whose ``.venv/bin/python``,
``apt-get`` and ``sudo`` are stand-ins that write what they were asked into a log,
and runs them with a PATH holding only those and the few commands the scripts
use, so that the tools the tests need are "missing". Nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
BASICS = ("bash", "env", "id", "dirname", "true", "cat")  # what the scripts themselves run
TOOLS = {"ip": "iproute2", "unshare": "util-linux", "openssl": "openssl", "lintian": "lintian", "debootstrap": "debootstrap",
         "systemd-analyze": "systemd", "man": "man-db"}

FAKE = """#!/bin/bash
echo "{name} uid=$(id -u) $*" >> "{log}"
{body}
"""


@pytest.fixture
def fake_repo():
    """A copy of scripts/ and .ci/ with stand-ins; world-readable so that ``nobody`` can run it."""
    root = Path(tempfile.mkdtemp(prefix="osapi-scripts-"))
    try:
        os.chmod(root, 0o755)
        shutil.copytree(REPO / "scripts", root / "repo" / "scripts")
        shutil.copytree(REPO / ".ci", root / "repo" / ".ci")
        log = root / "log"
        (root / "bin").mkdir()
        for name in BASICS:
            (root / "bin" / name).symlink_to(shutil.which(name))
        write(root / "repo" / ".venv" / "bin" / "python", FAKE.format(name="python", log=log, body="exit 0"))
        for path in root.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o755)
            elif path.is_file() and not path.is_symlink():
                os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        log.touch()
        os.chmod(log, 0o666)  # the stand-ins write to it as nobody too
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def fake(root: Path, name: str, body: str) -> None:
    write(root / "bin" / name, FAKE.format(name=name, log=root / "log", body=body))


def have(root: Path, *tools: str) -> None:
    for tool in tools:
        fake(root, tool, "exit 0")


def run(root: Path, script: str, *args: str, as_nobody: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    argv = [str(root / "bin" / "bash"), str(root / "repo" / script), *args]
    if as_nobody:
        if os.geteuid() != 0:
            pytest.skip("running as another user needs root (CI runs as root)")
        argv = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    proc = subprocess.run(argv, env={"PATH": str(root / "bin"), "HOME": str(root)}, cwd=root,
                          capture_output=True, text=True, timeout=60)
    return proc, (root / "log").read_text().splitlines()


def test_as_root_scripts_test_installs_what_is_missing_then_sets_up_and_runs_pytest(fake_repo):
    if os.geteuid() != 0:
        pytest.skip("the root branch needs root")
    fake(fake_repo, "apt-get", "exit 0")
    have(fake_repo, "ip", "unshare", "openssl", "debootstrap", "systemd-analyze")
    proc, log = run(fake_repo, "scripts/test", "tests/unit/test_config.py", "-q")
    assert proc.returncode == 0, proc.stderr
    assert log[:2] == ["apt-get uid=0 update -qq", "apt-get uid=0 install -y -qq lintian man-db"]
    assert [line for line in log[2:] if "-m pytest" in line] == \
        ["python uid=0 -m pytest tests/unit/test_config.py -q"]
    assert "scripts/test: installing lintian man-db with apt-get" in proc.stderr


def test_not_root_uses_sudo_when_it_needs_no_password(fake_repo):
    fake(fake_repo, "apt-get", "exit 0")
    fake(fake_repo, "sudo", '[ "$1" = -n ] && shift\nexec "$@"')
    proc, log = run(fake_repo, "scripts/test", "-x", as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    packages = " ".join(TOOLS.values())
    assert log[:4] == [f"sudo uid={NOBODY} -n true", f"sudo uid={NOBODY} -n env DEBIAN_FRONTEND=noninteractive "
                       "apt-get update -qq", f"apt-get uid={NOBODY} update -qq",
                       f"sudo uid={NOBODY} -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages}"]
    assert log[-1] == f"python uid={NOBODY} -m pytest -x"


@pytest.mark.parametrize("sudo", [None, "echo 'sudo: a password is required' >&2; exit 1"],
                         ids=["no sudo", "sudo wants a password"])
def test_not_root_without_sudo_names_the_packages_in_one_line_and_goes_on(fake_repo, sudo):
    fake(fake_repo, "apt-get", "exit 0")
    if sudo:
        fake(fake_repo, "sudo", sudo)
    have(fake_repo, "ip", "unshare", "openssl", "systemd-analyze", "man")
    proc, log = run(fake_repo, "scripts/test", "tests/unit", as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("scripts/test:")] == [
        "scripts/test: missing lintian debootstrap, and not root (no sudo without a password): "
        "install them as root (apt-get install -y lintian debootstrap) or the tests that use them fail"]
    assert not [line for line in log if line.startswith("apt-get")]
    assert log[-1] == f"python uid={NOBODY} -m pytest tests/unit"


def test_a_failing_apt_get_is_one_line_and_the_tests_still_run(fake_repo):
    if os.geteuid() != 0:
        pytest.skip("the root branch needs root")
    fake(fake_repo, "apt-get", 'echo "E: Unable to locate package" >&2; exit 100')
    have(fake_repo, *[t for t in TOOLS if t != "man"])
    proc, log = run(fake_repo, "scripts/test")
    assert proc.returncode == 0, proc.stderr
    assert "scripts/test: apt-get could not install man-db (see its message above): " \
           "install them as root (apt-get install -y man-db) or the tests that use them fail" in proc.stderr
    assert log[-1] == "python uid=0 -m pytest"


def test_nothing_missing_nothing_installed_and_pytests_status_is_the_result(fake_repo):
    fake(fake_repo, "apt-get", "exit 0")
    have(fake_repo, *TOOLS)
    write(fake_repo / "repo" / ".venv" / "bin" / "python",
          FAKE.format(name="python", log=fake_repo / "log", body='[ "$2" = pytest ] && exit 3; exit 0'))
    proc, log = run(fake_repo, "scripts/test")
    assert proc.returncode == 3
    assert not [line for line in log if line.startswith("apt-get")] and "scripts/test:" not in proc.stderr


def test_ci_runs_exactly_the_readme_test_command(fake_repo):
    fake(fake_repo, "apt-get", "exit 0")  # tools missing: only scripts/test may install them
    write(fake_repo / "repo" / "scripts" / "test", f'#!/bin/bash\necho "scripts/test $*" >> "{fake_repo / "log"}"\n')
    proc, log = run(fake_repo, ".ci/run")
    assert proc.returncode == 0, proc.stderr
    assert log == ["scripts/test "]
    assert "scripts/test" in (REPO / "README.md").read_text().split("```sh", 1)[1].split("```", 1)[0]


def test_the_scripts_are_executable():
    for script in ("scripts/test", "scripts/install-test-tools", ".ci/run"):
        assert os.stat(REPO / script).st_mode & stat.S_IXUSR, script
