"""The archive itself: it runs on a bare Python, unpacks once to a safe cache, bundles nats-server."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from testkit import REPO, free_port, stop_process, wait_for_port

from osapi import __version__


def test_version_and_help_on_a_bare_python(runner):
    result = runner.run("--version")
    assert result.status == 0 and result.stdout == f"osapi {__version__}\n", result.stderr
    result = runner.run("--help")
    assert result.status == 0
    for command in ("supervise", "nats", "api", "client", "token"):
        assert command in result.stdout
    result = runner.run("supervise", "--help")
    assert result.status == 0 and "--workers" in result.stdout
    # a configuration error is still exit 2 with the funnel's message
    result = runner.run("--version", env=runner.env(OSAPI_NO_SUCH_KEY="1"))
    assert result.status == 0  # --version loads no configuration
    result = runner.run("supervise", "status", env=runner.env(OSAPI_NO_SUCH_KEY="1"))
    assert result.status == 2 and "OSAPI_NO_SUCH_KEY" in result.stderr


def test_every_dependency_loads_from_the_archive(runner):
    code = (
        "import json, os, psutil, yaml, nats, bottle, waitress, jwt, icmplib, supervisor.supervisord\n"
        "from osapi import natsd\n"
        "b = natsd.bundled_binary()\n"
        "print(json.dumps({'psutil': psutil.__file__, 'cpus': psutil.cpu_count(), 'binary': str(b),\n"
        "                  'x': os.access(b, os.X_OK)}))\n"
    )
    result = runner.run("-c", code, env=runner.env(SHIV_INTERPRETER="1"))
    assert result.status == 0, result.stderr
    data = json.loads(result.stdout)
    cache = runner.home / ".cache" / "osapi"
    assert data["psutil"].startswith(str(cache)) and data["cpus"] >= 1
    assert data["binary"].startswith(str(cache)) and data["binary"].endswith("/bin/nats-server") and data["x"]
    version = subprocess.run([data["binary"], "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "nats-server" in version.stdout


def test_host_site_packages_are_not_imported(runner, tmp_path):
    """A Python whose own site-packages hold other (here: broken) copies of our dependencies."""
    venv = tmp_path / "host-venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    for module in ("yaml", "jwt", "cryptography"):
        (site_dir / f"{module}.py").write_text(f"raise ImportError('host copy of {module} was imported')\n")
    host_python = venv / "bin" / "python"
    probe = subprocess.run([str(host_python), "-c", "import yaml"], capture_output=True, text=True, timeout=60)
    assert "host copy of yaml" in probe.stderr  # the trap is armed
    code = "import json, yaml, jwt; print(json.dumps([yaml.__file__, jwt.__file__]))"
    result = subprocess.run([str(host_python), str(runner.pyz), "-c", code], capture_output=True, text=True,
                            env=runner.env(SHIV_INTERPRETER="1"), timeout=120)
    assert result.returncode == 0, result.stderr
    cache = str(runner.home / ".cache" / "osapi")
    assert all(path.startswith(cache) for path in json.loads(result.stdout))
    token = subprocess.run([str(host_python), str(runner.pyz), "token", "generate", "-r", "read", "-u", "x"],
                           capture_output=True, text=True, timeout=120,
                           env=runner.env(OSAPI_API_SERVER_SECURITY_SIGNING_KEY="k" * 40))
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr


def test_unpacked_once_into_a_private_cache_keyed_by_content(runner, pyz):
    runner.run("--version")
    cache = runner.home / ".cache" / "osapi"
    assert (cache.stat().st_mode & 0o777) == 0o700
    with zipfile.ZipFile(pyz) as zf:
        build_id = json.loads(zf.read("environment.json"))["build_id"]
    unpacked = [p.name for p in cache.iterdir() if p.is_dir()]
    assert unpacked == [f"osapi.pyz_{build_id}"]
    marker = cache / unpacked[0] / "site-packages" / "osapi" / "__init__.py"
    before = marker.stat().st_mtime_ns
    assert runner.run("--version").status == 0
    assert marker.stat().st_mtime_ns == before  # reused, not unpacked again


def test_modules_are_compiled_when_unpacked(runner, tmp_path):
    """Where Python writes no .pyc (PYTHONDONTWRITEBYTECODE=1, set on many machines and containers) a start
    would compile every module it imports again: the start that unpacks compiles them once."""
    home = tmp_path / "home"
    home.mkdir()
    quiet = runner.env(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    assert runner.run("--version", env=quiet).status == 0
    (unpacked,) = (home / ".cache" / "osapi").glob("osapi.pyz_*")
    site = unpacked / "site-packages"

    def compiled() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in site.rglob("*.pyc")}

    first = compiled()
    for module in ("osapi/cli/__init__", "osapi/client", "osapi/worker/worker", "nats/aio/client",
                   "waitress/server", "supervisor/supervisord", "yaml/__init__", "bottle"):
        path = site / module
        assert list((path.parent / "__pycache__").glob(f"{path.name}.*.pyc")), f"{module} not compiled"
    # a start that imports every part and may write .pyc finds nothing to write: all compiled and current
    code = ("import psutil, yaml, nats, bottle, waitress, jwt, icmplib, supervisor.supervisord\n"
            "import osapi.api.app, osapi.worker.worker, osapi.cli, osapi.client, osapi.supervise\n")
    result = runner.run("-c", code, env=runner.env(HOME=str(home), SHIV_INTERPRETER="1"))
    assert result.status == 0, result.stderr
    assert runner.run("--version", env=quiet).status == 0
    assert compiled() == first


def test_a_start_that_finds_the_build_unpacked_skips_shivs_bootstrap(runner, tmp_path):
    """Only the start that unpacks needs shiv's bootstrap; the others go straight to osapi (its imports cost
    about a tenth of a CLI command). A SHIV_* option still goes through it."""
    home = tmp_path / "home"
    home.mkdir()

    imported: set[str] = set()

    def start(*args: str, **env: str) -> tuple[str, str]:
        result = subprocess.run([str(runner.python), "-X", "importtime", str(runner.pyz), *args],
                                env=runner.env(HOME=str(home), **env), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        imported.clear()
        imported.update(line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line)
        return result.stdout, "_bootstrap" in imported

    assert start("--version") == (f"osapi {__version__}\n", True)  # unpacks
    assert start("--version") == (f"osapi {__version__}\n", False)
    # nor what only unpacking or removing old builds needs
    assert not {"zipfile", "tempfile", "shutil", "logging", "dataclasses"} & imported
    assert start("token", "--help")[1] is False
    out, shiv = start("-c", "import osapi.cli; print('interpreter')", SHIV_INTERPRETER="1")
    assert (out, shiv) == ("interpreter\n", True)


def other_build(pyz: Path, directory: Path) -> tuple[Path, str]:
    """A copy of the archive under the same name with another build id (a later environment.json wins)."""
    directory.mkdir(parents=True)
    copy = directory / pyz.name
    shutil.copy2(pyz, copy)
    with zipfile.ZipFile(copy) as zf:
        env = json.loads(zf.read("environment.json"))
    env["build_id"] = hashlib.sha256(b"another build").hexdigest()
    with warnings.catch_warnings(), zipfile.ZipFile(copy, "a") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": intended
        zf.writestr("environment.json", json.dumps(env))
    return copy, f"{pyz.name}_{env['build_id']}"


def test_unused_old_builds_are_removed_running_ones_kept(runner, pyz, tmp_path):
    """Each build holds a shared lock on <cache>/.<name>.inuse while it runs (and what it execs does too);
    a start removes other builds of the same name not started for 7 days and not running."""
    home = tmp_path / "home"
    home.mkdir()
    env = runner.env(HOME=str(home), OSAPI_SUPERVISE_STATE_DIR=str(tmp_path / "state"))
    cache = home / ".cache" / "osapi"
    old_pyz, old_name = other_build(pyz, tmp_path / "old")
    eight_days_ago = time.time() - 8 * 86400

    def age(name: str) -> None:
        os.utime(cache / f".{name}.inuse", (eight_days_ago, eight_days_ago))

    # the old build runs nats-server (`nats server start` execs it from the unpacked bin/)
    port = free_port()
    server = subprocess.Popen([str(runner.python), str(old_pyz), "nats", "server", "start"],
                              env={**env, "OSAPI_NATS_SERVER_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 30, server)
        assert Path(f"/proc/{server.pid}/exe").resolve().name == "nats-server"
        assert (cache / old_name / "site-packages").is_dir()
        # fakes: one from before this mechanism (no .inuse), one recent, one of another archive
        legacy = cache / f"{pyz.name}_{'1' * 64}"
        recent = cache / f"{pyz.name}_{'2' * 64}"
        foreign = cache / f"other.pyz_{'3' * 64}"
        for directory in (legacy, recent, foreign):
            (directory / "site-packages").mkdir(parents=True)
        for directory in (recent, foreign):
            (cache / f".{directory.name}.inuse").touch()
        os.utime(legacy, (eight_days_ago, eight_days_ago))
        age(foreign.name)
        age(old_name)

        assert runner.run("--version", env=env).status == 0
        assert (cache / old_name / "site-packages").is_dir()  # in use by the running nats-server: kept
        assert legacy.is_dir() and recent.is_dir() and foreign.is_dir()
    finally:
        stop_process(server)

    age(old_name)
    assert runner.run("--version", env=env).status == 0
    assert not (cache / old_name).exists()  # stopped and 8 days unused: gone, with its lock files
    assert not (cache / f".{old_name}.inuse").exists() and not (cache / f".{old_name}_lock").exists()
    assert legacy.is_dir() and recent.is_dir() and foreign.is_dir()
    with zipfile.ZipFile(pyz) as zf:
        current = f"{pyz.name}_{json.loads(zf.read('environment.json'))['build_id']}"
    assert (cache / current / "site-packages").is_dir()
    assert time.time() - (cache / f".{current}.inuse").stat().st_mtime < 3600  # touched at each start
    # the removed build unpacks again when it is started again
    result = subprocess.run([str(runner.python), str(old_pyz), "--version"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and (cache / old_name / "site-packages").is_dir(), result.stderr


def test_two_first_starts_at_the_same_moment(runner, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = runner.env(HOME=str(home))
    procs = [subprocess.Popen(runner.command() + ["--version"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        try:
            results.append((*proc.communicate(timeout=120), proc.returncode))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for out, err, status in results:
        assert status == 0 and out == f"osapi {__version__}\n", err
    cache = home / ".cache" / "osapi"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one unpacked copy, no .tmp left


def test_unwritable_home_falls_back_to_a_private_temp_dir(runner, tmp_path):
    home_file = tmp_path / "not-a-dir"
    home_file.write_text("")  # HOME cannot hold .cache, not even for root
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = runner.env(HOME=str(home_file), TMPDIR=str(tmpdir))
    result = runner.run("--version", env=env)
    assert result.status == 0, result.stderr
    fallback = tmpdir / f"osapi-{os.geteuid()}"
    assert fallback.is_dir() and (fallback.stat().st_mode & 0o777) == 0o700
    assert any(p.name.startswith("osapi.pyz_") for p in fallback.iterdir())

    # XDG_CACHE_HOME comes first when set
    xdg = tmp_path / "xdg"
    result = runner.run("--version", env=runner.env(HOME=str(home_file), TMPDIR=str(tmpdir), XDG_CACHE_HOME=str(xdg)))
    assert result.status == 0 and (xdg / "osapi").is_dir()


def test_a_cache_dir_someone_else_owns_is_refused(runner, tmp_path):
    home_file = tmp_path / "not-a-dir"
    home_file.write_text("")
    tmpdir = tmp_path / "tmp"
    planted = tmpdir / f"osapi-{os.geteuid()}"
    planted.mkdir(parents=True)
    os.chmod(planted, 0o777)  # writable by anyone: could hold planted code
    result = runner.run("--version", env=runner.env(HOME=str(home_file), TMPDIR=str(tmpdir)))
    assert result.status == 2
    assert "no usable directory to unpack osapi.pyz into" in result.stderr
    assert str(planted) in result.stderr and "writable by group or others" in result.stderr
    assert "SHIV_ROOT" in result.stderr
    assert list(planted.iterdir()) == []
    if os.geteuid() == 0:
        os.chmod(planted, 0o700)
        os.chown(planted, 65534, 65534)
        result = runner.run("--version", env=runner.env(HOME=str(home_file), TMPDIR=str(tmpdir)))
        assert result.status == 2 and "owned by uid 65534" in result.stderr
    # an explicit SHIV_ROOT is used as given
    root = tmp_path / "explicit"
    result = runner.run("--version", env=runner.env(HOME=str(home_file), SHIV_ROOT=str(root)))
    assert result.status == 0 and any(root.iterdir())


def other_pythons() -> list[Path]:
    """The oldest and newest real CPython >= 3.10 installed here, other than this one's minor version."""
    found: dict[tuple[int, int], Path] = {}
    candidates = list(Path("/usr/bin").glob("python3.[0-9]*")) + \
        list((Path.home() / ".pyenv" / "versions").glob("3.*/bin/python3"))
    for path in candidates:
        match = re.search(r"(?:python|versions/)3\.(\d+)", str(path))
        if not match or not path.is_file() or not os.access(path, os.X_OK) or path.name.endswith("-config"):
            continue
        version = (3, int(match.group(1)))
        if version >= (3, 10) and version != sys.version_info[:2]:
            found.setdefault(version, path)
    if not found:
        return []
    return sorted({found[min(found)], found[max(found)]})


@pytest.mark.parametrize("python", other_pythons() or [None], ids=str)
def test_other_cpython_versions(runner, python, tmp_path):
    """psutil's extension is abi3 and PyYAML falls back to pure Python: any CPython >= 3.10 works."""
    if python is None:
        pytest.skip("no other CPython >= 3.10 on this machine")
    env = runner.env(HOME=str(tmp_path))
    code = ("import psutil, yaml; print(psutil.virtual_memory().total > 0, yaml.safe_load('a: 1'), "
            f"psutil.__file__.startswith({str(tmp_path)!r}))")
    result = subprocess.run([str(python), "-I", str(runner.pyz), "-c", code], env={**env, "SHIV_INTERPRETER": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True {'a': 1} True", result.stderr


def test_the_boot_module_is_shipped_with_its_bytecode(pyz):
    """zipimport would compile _osapi_boot.py at every start: its .pyc, checked against the source by hash
    (PEP 552), is in the archive for the CPython version that built it."""
    import importlib.util

    with zipfile.ZipFile(pyz) as zf:
        source, pyc = zf.read("_osapi_boot.py"), zf.read("_osapi_boot.pyc")
    assert source == (REPO / "osapi" / "pyzboot.py").read_bytes()
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # hash-based, checked against the source
    assert pyc[8:16] == importlib.util.source_hash(source)


def test_build_is_reproducible(pyz, source_snapshot, tmp_path):
    again = tmp_path / "again.pyz"
    result = subprocess.run([sys.executable, str(source_snapshot / "build_pyz.py"), "-o", str(again)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (pyz, again)]
    assert digest[0] == digest[1]
    assert pyz.stat().st_size < 12_000_000
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
        stamps = {info.date_time for info in zf.infolist()}
    assert stamps == {(1980, 1, 1, 0, 0, 0)}
    assert "site-packages/bin/nats-server" in names
    assert not [n for n in names if (n.endswith(".pyc") and n != "_osapi_boot.pyc") or "/tests/" in n
                or n.endswith("/RECORD")]
    assert not [n for n in names if n.endswith(".so") and ".abi3." not in n]
    bad = subprocess.run([sys.executable, str(REPO / "build_pyz.py"), "--source", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a private mount")
def test_a_read_only_home_falls_back(runner, tmp_path):
    """A HOME on a read-only mount (inside a private mount namespace this test creates)."""
    home, tmpdir = tmp_path / "ro-home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    script = (
        f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
        f"! touch {home}/probe 2>/dev/null && exec \"$@\""
    )
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *runner.command(), "--version"]
    result = subprocess.run(command, env=runner.env(HOME=str(home), TMPDIR=str(tmpdir)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == f"osapi {__version__}\n", result.stderr
    assert list(home.iterdir()) == []
    assert any((tmpdir / f"osapi-{os.geteuid()}").iterdir())
