"""Install the .deb with dpkg into a throwaway Debian root, run it, purge it: nothing left.

The root is a real minimal Debian of the host's release made by ``debootstrap``
(see conftest.py), not this machine: dpkg, the maintainer scripts and osapi run
there through ``chroot``, each command in its own private mount namespace
(``unshare --mount``) where ``/proc`` is mounted for it, so neither the mount
nor anything the package does reaches the host's files. The root shares the
host's network namespace: supervise listens on free loopback ports chosen here.

systemd does not run in the root (as in an image build or a container), so the
maintainer scripts must start nothing, and the service is run the way the unit
runs it: ``/usr/bin/osapi supervise`` with the unit's environment. The unit
itself is checked by ``systemd-analyze verify`` in test_deb_build.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from testkit import free_port, stop_process

import osapi

pytestmark = pytest.mark.slow

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_ENV = {"SHIV_ROOT": "/var/lib/osapi/cache"}  # what osapi.service sets
SNAPSHOT_SKIP = ("proc", "dev", "tmp", "run")  # API filesystems and scratch space, not state
SECRETS = ("signing_key", "admin.token", "nats.token")


# ---------------------------------------------------------------- running things in the root


def root_command(root: Path, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` run in ``root`` with /proc mounted in a private mount namespace, ``env`` only.

    Every step execs the next, so the pid of the returned command is the pid of
    ``argv`` itself.
    """
    environ = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root),
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv]


def in_root(root: Path, *argv: str, env: dict[str, str] | None = None, timeout: float = 180):
    return subprocess.run(root_command(root, list(argv), env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def processes_in(root: Path) -> list[int]:
    """Pids of the processes whose root directory is ``root``: only ours can be there."""
    target = os.path.realpath(root)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root") == target:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def kill_leftovers(root: Path) -> list[int]:
    left = processes_in(root)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def snapshot(root: Path) -> set[str]:
    """Every path in the root but /proc, /dev, /tmp and /run."""
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in SNAPSHOT_SKIP]
        for name in dirnames + filenames:
            paths.add(os.path.normpath(os.path.join("/", rel, name)))
    return paths


def dpkg_status(root: Path) -> str:
    result = in_root(root, "dpkg-query", "-W", "-f=${Status} ${Version}", "osapi")
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def http_get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:
        return 0, {"error": str(exc)}


def wait_until(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"supervise exited with {proc.returncode} while waiting for {what}:\n{log.read_text()[-4000:]}")
        ok, last = check()
        if ok:
            return last
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout}s (last: {last}):\n{log.read_text()[-4000:]}")


def install(root: Path, deb, *extra: str) -> subprocess.CompletedProcess:
    shutil.copy(deb.path, root / "tmp" / deb.path.name)
    return in_root(root, "dpkg", "-i", *extra, f"/tmp/{deb.path.name}")


def purge_if_installed(root: Path) -> None:
    if dpkg_status(root) != "unknown":
        in_root(root, "dpkg", "--purge", "osapi")


# ---------------------------------------------------------------- the life cycle


def test_install_run_reinstall_remove_purge(deb, debian_root, tmp_path):
    root = debian_root
    purge_if_installed(root)
    before = snapshot(root)
    assert not (root / "var/lib/osapi").exists() and dpkg_status(root) == "unknown"

    # --- install: files in place, state and secrets created, nothing started (no systemd here)
    result = install(root, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Setting up osapi" in result.stdout and result.stderr == "", result.stderr
    assert dpkg_status(root) == f"install ok installed {osapi.__version__}"
    binary = root / "usr/bin/osapi"
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755 and binary.read_bytes().startswith(b"#!/usr/bin/python3\n")
    assert (root / "etc/osapi/osapi.yaml").read_bytes() == (deb.tree / "etc/osapi/osapi.yaml").read_bytes()
    assert (root / "usr/lib/systemd/system/osapi.service").is_file()
    state = root / "var/lib/osapi"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == 0
    secrets = {}
    for name in SECRETS:
        path = state / "secrets" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        secrets[name] = path.read_bytes()
        assert len(secrets[name].strip()) >= 32, name
    # enabled for the next boot the way debhelper does it (deb-systemd-helper is essential in Debian)
    wants = root / "etc/systemd/system/multi-user.target.wants/osapi.service"
    assert os.readlink(wants) in ("/lib/systemd/system/osapi.service", "/usr/lib/systemd/system/osapi.service")
    assert processes_in(root) == [], "the postinst started something without systemd"
    # the admin token the postinst made is valid with the signing key it made
    result = in_root(root, "/usr/bin/osapi", "token", "validate", "-t", secrets["admin.token"].decode().strip(),
                     env=UNIT_ENV)
    assert result.returncode == 0 and "admin" in result.stdout, result.stdout + result.stderr

    # --- run the service's command from the installed files, query it with the installed client
    api_port, nats_port = free_port(), free_port()
    env = {**UNIT_ENV, "OSAPI_API_SERVER_PORT": str(api_port), "OSAPI_NATS_SERVER_PORT": str(nats_port)}
    log = tmp_path / "supervise.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(root_command(root, ["/usr/bin/osapi", "supervise"], env),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{api_port}"
        token = secrets["admin.token"].decode().strip()

        def ready():
            status, body = http_get(f"{base}/health/ready")
            return status == 200, (status, body)

        def worker_registered():
            status, body = http_get(f"{base}/api/v1/jobs/workers", token)
            return status == 200 and body.get("total", 0) >= 1, (status, body)

        wait_until("ready API", ready, proc, log)
        wait_until("registered worker", worker_registered, proc, log)
        client_env = {"OSAPI_API_CLIENT_URL": base}
        result = in_root(root, "/usr/bin/osapi", "-j", "client", "system", "hostname", env=client_env)
        assert result.returncode == 0, result.stdout + result.stderr
        answer = json.loads(result.stdout)
        assert [r["hostname"] for r in answer["results"]] == [socket.gethostname()]

        def all_running():
            # supervisord reports STARTING until startsecs has passed on its own clock,
            # which can lag on a loaded machine even when the programs already answer
            result = in_root(root, "/usr/bin/osapi", "supervise", "status", env=env)
            lines = result.stdout.splitlines()
            ok = result.returncode == 0 and all(
                any(program in line and "RUNNING" in line for line in lines)
                for program in ("nats", "api", "worker-1"))
            return ok, result.stdout + result.stderr

        wait_until("all programs RUNNING in supervise status", all_running, proc, log, timeout=60)
        assert {p.name for p in (state / "logs").iterdir()} >= {"nats.log", "api.log", "worker-1.log", "supervisord.log"}
        assert (state / "cache").is_dir(), "the pyz unpacked into the state dir (SHIV_ROOT of the unit)"
    finally:
        status = stop_process(proc, timeout=60)
        leftovers = kill_leftovers(root)
    assert status == 0, log.read_text()[-4000:]
    assert leftovers == [], "supervise left processes behind"
    assert {name: (state / "secrets" / name).read_bytes() for name in SECRETS} == secrets

    # --- reinstall over it (postinst configure with the old version): secrets kept, local conffile edit kept
    conffile = root / "etc/osapi/osapi.yaml"
    conffile.write_text(conffile.read_text() + "# a local change\n")
    result = install(root, deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert conffile.read_text().endswith("# a local change\n")
    assert {name: (state / "secrets" / name).read_bytes() for name in SECRETS} == secrets
    assert processes_in(root) == []

    # --- remove: the program goes, the state and the conffile stay
    result = in_root(root, "dpkg", "--remove", "osapi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert dpkg_status(root) == f"deinstall ok config-files {osapi.__version__}"
    assert not binary.exists() and not (root / "usr/lib/systemd/system/osapi.service").exists()
    assert {name: (state / "secrets" / name).read_bytes() for name in SECRETS} == secrets
    assert conffile.is_file()

    # --- purge: nothing of the package is left
    result = in_root(root, "dpkg", "--purge", "osapi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert dpkg_status(root) == "unknown"
    after = snapshot(root)
    # The one new thing allowed: root's own cache from running `osapi client` as root
    # (~/.cache/osapi, like any program's per-user cache; the service's lives in the state dir).
    user_cache = {p for p in after - before if p == "/root/.cache" or p.startswith("/root/.cache/osapi")}
    assert after - before - user_cache == set()
    assert before - after == set(), "the package removed something it did not create"
    assert not state.exists() and not (root / "etc/osapi").exists() and not wants.exists()


def test_a_broken_configuration_does_not_fail_the_install(deb, debian_root):
    """The postinst says why it made no secrets; supervise will make them once the file is fixed."""
    root = debian_root
    purge_if_installed(root)
    (root / "etc/osapi").mkdir(parents=True, exist_ok=True)
    try:
        (root / "etc/osapi/osapi.yaml").write_text("api:\n  server:\n    prot: 8080\n")
        result = install(root, deb, "--force-confold")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "unknown key api.server.prot" in result.stderr, result.stderr
        assert "the secrets were not created now" in result.stderr
        assert (root / "etc/osapi/osapi.yaml").read_text() == "api:\n  server:\n    prot: 8080\n"
        assert (root / "var/lib/osapi").is_dir() and not (root / "var/lib/osapi/secrets/signing_key").exists()
        assert dpkg_status(root) == f"install ok installed {osapi.__version__}"
    finally:
        result = in_root(root, "dpkg", "--purge", "osapi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (root / "var/lib/osapi").exists() and not (root / "etc/osapi").exists()
    assert processes_in(root) == []
