"""The first code that runs in ``osapi.pyz``: pick a safe cache, then hand over to shiv (or start osapi).

``build_pyz.py`` copies this file to the root of the archive as ``_osapi_boot.py``
and makes ``__main__.py`` call ``main()``. It runs before any dependency can be
imported, so it uses the standard library only (CPython >= 3.10) and imports
nothing from ``osapi``.

Why it exists: shiv's bootstrap unpacks the archive's ``site-packages`` (psutil's
extension, the ``nats-server`` binary, supervisor's data files, the Python code)
once into ``$SHIV_ROOT`` (default ``~/.shiv``) under a directory named after the
archive and its build id (a SHA-256 of the bundled files), under a file lock so
that two copies starting at the same moment unpack once. It does not cope with a
home directory that cannot be written (it dies with a traceback), and it would
happily use a directory in ``/tmp`` that another user planted. So before shiv
runs, ``main()`` chooses the cache root, the first usable of:

1. ``$SHIV_ROOT`` when set (the operator's explicit choice, used as given);
2. ``$XDG_CACHE_HOME/osapi`` when ``XDG_CACHE_HOME`` is set;
3. ``~/.cache/osapi``;
4. ``<tempdir>/osapi-<uid>`` (``$TMPDIR``, else ``/tmp``).

A candidate is usable when it is a real directory (not a symlink) owned by the
effective user, not writable by group or others, and either already holds this
archive's unpacked files or can be written. Directories this code creates are
mode 0700. When none is usable the program stops with exit status 2 and a message
listing each candidate and why it was refused.

A start that finds this build unpacked there does not load shiv's bootstrap
(its imports would cost about a tenth of a CLI command): it does what shiv
does on such a start -- put ``site-packages`` on ``sys.path``, call the entry
point -- unless a ``SHIV_*`` option is set or the build uses more of shiv
(``unpacked_entry``); then shiv's bootstrap runs as on a first start.

The choice is exported as ``SHIV_ROOT`` so the processes ``osapi supervise``
starts from the same archive reuse it without probing again. The start that
unpacks also compiles every module (``compile_pyc`` in ``environment.json``), in
its own process (``SHIV_COMPILE_WORKERS=1``: no process pool at a first start):
where Python writes no ``.pyc`` (``PYTHONDONTWRITEBYTECODE=1``) later starts
would otherwise compile every module they import again.

Old builds are removed, safely. Each new build unpacks about 22 MB next to the
previous ones; shiv never removes any. So every start:

* holds a *shared* ``flock`` on ``<root>/.<archive>_<build id>.inuse`` for as
  long as the process runs -- the descriptor is inheritable, so a program this
  process execs (``osapi nats server start`` becomes nats-server, which runs
  from the unpacked ``bin/``) holds it too -- and sets that file's mtime to now
  (the build's "last started");
* then removes each *other* build of the same archive name whose ``.inuse`` file
  is older than ``UNUSED_DAYS`` and whose *exclusive* lock it can take without
  waiting, i.e. no process of that build is running. Under that lock the
  directory is renamed away, deleted, and its lock files with it; a start of
  that build at the same moment waits for the lock, finds no directory and
  unpacks it again.

A directory without an ``.inuse`` file was unpacked by a build from before this
mechanism: nothing tells whether a process of it still runs (a running CLI
holds no file of it open: Python closes each module file after importing it),
so it is left alone -- delete such ``<archive>_<id>`` directories by hand once
no older osapi runs. Shiv's own ``.<archive>_<build id>_lock`` cannot tell
either: shiv holds it only while unpacking. Any error while cleaning up is
ignored: it never stops a start.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time

# The absolute path of the running archive; ``osapi.supervise`` runs children from it.
ARCHIVE: str | None = None

CACHE_DIR_NAME = "osapi"
UNUSED_DAYS = 7  # another build of this archive not started for this long, and not running, is removed
IN_USE_WAIT = 30.0  # seconds a start waits while another process removes this very build
IN_USE_FD: int | None = None  # the shared lock on this build's .inuse file, held until exit


def candidates(environ=None) -> list[str]:
    """Cache roots to try, in order (without ``$SHIV_ROOT``, which is never second-guessed)."""
    return list(_candidates(environ))


def _candidates(environ=None):
    """``candidates()`` one at a time: the temp dir (``tempfile``'s imports cost a start) only when reached."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        yield os.path.join(xdg, CACHE_DIR_NAME)
    home = environ.get("HOME", "")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.geteuid()).pw_dir
        except (ImportError, KeyError):
            home = ""
    if home and os.path.isabs(home):
        yield os.path.join(home, ".cache", CACHE_DIR_NAME)
    import tempfile

    yield os.path.join(tempfile.gettempdir(), f"{CACHE_DIR_NAME}-{os.geteuid()}")


def problem(root: str, unpacked_name: str | None = None) -> str | None:
    """Why ``root`` cannot serve as the cache (creating it, mode 0700, if missing), or None."""
    try:
        os.makedirs(os.path.dirname(root), exist_ok=True)
    except OSError as exc:
        return f"cannot create its parent: {exc.strerror or exc}"
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    try:
        info = os.lstat(root)
    except OSError as exc:
        return f"cannot inspect it: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by uid {os.geteuid()}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if unpacked_name and os.path.isdir(os.path.join(root, unpacked_name, "site-packages")):
        return None  # already unpacked here: nothing needs writing
    if not os.access(root, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


_ENVIRONMENTS: dict[str, dict | None] = {}


def environment(archive: str) -> dict | None:
    """The archive's ``environment.json`` (shiv's build settings), read once per process; None if unreadable."""
    if archive not in _ENVIRONMENTS:
        try:
            env = json.loads(_read_member(archive, "environment.json").decode())
        except (OSError, ImportError, ValueError):  # zipimport.ZipImportError is an ImportError
            env = None
        _ENVIRONMENTS[archive] = env if isinstance(env, dict) else None
    return _ENVIRONMENTS[archive]


def _read_member(archive: str, name: str) -> bytes:
    """One file of the archive, read with ``zipimport`` (not ``zipfile``: its imports cost a CLI start
    about a tenth), through the importer that loaded this module when that is the archive's: the
    archive's directory is read already."""
    import zipimport

    loader = globals().get("__loader__")
    if not (isinstance(loader, zipimport.zipimporter)
            and os.path.realpath(loader.archive) == os.path.realpath(archive)):
        loader = zipimport.zipimporter(archive)
    return loader.get_data(name)


def unpacked_name(archive: str) -> str | None:
    """The directory shiv unpacks this archive into: ``<archive name>_<build id>``."""
    build_id = (environment(archive) or {}).get("build_id")
    if not isinstance(build_id, str) or not build_id:
        return None
    return f"{os.path.basename(os.path.realpath(archive))}_{build_id}"


def choose_root(archive: str, environ=None) -> tuple[str | None, list[str]]:
    """The cache root to use and, when there is none, why each candidate was refused."""
    name = unpacked_name(archive)
    refused = []
    for root in _candidates(environ):
        why = problem(root, name)
        if why is None:
            return root, refused
        refused.append(f"{root}: {why}")
    return None, refused


def isolate_from_host_packages() -> None:
    """Drop the interpreter's site-packages from ``sys.path``.

    The archive carries every dependency at a pinned version; a host's own
    ``dist-packages`` (Debian's python3-cryptography, an older PyYAML …) would
    otherwise be importable alongside and change behaviour from host to host (and
    cost memory: pyjwt loads cryptography when it finds it). ``PYTHONPATH`` is an
    explicit choice and is kept.
    """
    import site

    host_dirs = set(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        host_dirs.add(user)
    host_dirs = {os.path.realpath(d) for d in host_dirs}
    sys.path[:] = [p for p in sys.path if not p or os.path.realpath(p) not in host_dirs]


def in_use_path(root: str, name: str) -> str:
    return os.path.join(root, f".{name}.inuse")


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a remover may have unlinked it)."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def mark_in_use(root: str, name: str, wait: float = IN_USE_WAIT) -> int | None:
    """Hold a shared lock on this build's ``.inuse`` file; touch it. The descriptor, or None.

    None when the file cannot be created (a read-only cache: then nobody can
    remove anything from it either) or when a remover held it for ``wait``.
    """
    import fcntl

    path = in_use_path(root, name)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # a remover holds it: it is deleting this build right now
            os.close(fd)
            time.sleep(0.05)
            continue
        if not _same_file(fd, path):  # removed while we waited: lock the new file instead
            os.close(fd)
            continue
        try:
            os.utime(fd)
        except OSError:
            pass
        os.set_inheritable(fd, True)  # exec'd programs (nats-server) keep the build in use
        return fd
    return None


def remove_unused_builds(root: str, name: str, now: float | None = None) -> list[str]:
    """Remove the other builds of this archive that are old and not running; the names removed."""
    import fcntl

    base, _, _ = name.rpartition("_")
    pattern = re.compile(re.escape(base) + r"_[0-9a-f]{64}")
    interrupted = re.compile(r"\." + re.escape(base) + r"_[0-9a-f]{64}\.removing-(\d+)")
    cutoff = (time.time() if now is None else now) - UNUSED_DAYS * 86400
    removed = []
    for entry in sorted(os.listdir(root)):
        half_done = interrupted.fullmatch(entry)
        if half_done and not _running(int(half_done.group(1))):  # a remover that died half-way
            import shutil  # here: a start that removes nothing does not pay for its imports

            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            continue
        if entry == name or not pattern.fullmatch(entry):
            continue
        directory = os.path.join(root, entry)
        marker = in_use_path(root, entry)
        try:
            info = os.lstat(directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            fd = os.open(marker, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # none: an older build, left alone
        except OSError:
            continue
        try:
            if os.fstat(fd).st_mtime >= cutoff:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a process of that build runs
            if not _same_file(fd, marker):
                continue
            doomed = os.path.join(root, f".{entry}.removing-{os.getpid()}")
            os.rename(directory, doomed)
            import shutil

            shutil.rmtree(doomed, ignore_errors=True)
            for leftover in (os.path.join(root, f".{entry}_lock"), marker):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            removed.append(entry)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def hold_and_clean(root: str) -> None:
    """Mark this build in use, then remove unused old builds; never fails a start."""
    global IN_USE_FD
    try:
        name = unpacked_name(ARCHIVE) if ARCHIVE else None
        if not name or not os.path.isdir(root):  # no cache yet: nothing to hold or clean
            return
        IN_USE_FD = mark_in_use(root, name)
        if IN_USE_FD is not None:
            remove_unused_builds(root, name)
    except Exception:  # noqa: BLE001 -- housekeeping must never stop osapi from starting
        pass


# shiv's run-time options (environment variables): with any of them set, shiv's bootstrap runs
SHIV_OPTIONS = ("SHIV_INTERPRETER", "SHIV_ENTRY_POINT", "SHIV_MODULE", "SHIV_CONSOLE_SCRIPT", "SHIV_FORCE_EXTRACT",
                "SHIV_EXTEND_PYTHONPATH", "SHIV_PREPEND_PYTHONPATH")
# build settings that only shiv's bootstrap applies
SHIV_EXTRAS = ("script", "preamble", "no_modify", "extend_pythonpath", "prepend_pythonpath", "always_write_cache")


def unpacked_entry(root: str) -> tuple[str, str] | None:
    """``(site-packages, entry point)`` when this start can skip shiv's bootstrap, else None.

    That is when this build is unpacked already (shiv moves a complete directory
    into place, so its presence means complete), no ``SHIV_*`` option asks for
    something else, and the build uses nothing of shiv's but the entry point.
    """
    env = environment(ARCHIVE) if ARCHIVE else None
    name = unpacked_name(ARCHIVE) if ARCHIVE else None
    if env is None or name is None or any(os.environ.get(k) for k in SHIV_OPTIONS):
        return None
    if any(env.get(k) for k in SHIV_EXTRAS) or not isinstance(env.get("entry_point"), str):
        return None
    site_packages = os.path.join(root, name, "site-packages")
    return (site_packages, env["entry_point"]) if os.path.isdir(site_packages) else None


def run_unpacked(site_packages: str, entry_point: str) -> None:
    """What shiv's bootstrap does on a start that finds the build unpacked: the path, then the entry point."""
    import importlib
    import site

    length = len(sys.path)
    index = next((i for i, p in enumerate(sys.path)
                  if os.path.splitext(os.path.basename(p))[0] in ("site-packages", "dist-packages")), length)
    site.addsitedir(site_packages)
    sys.path[:] = sys.path[:index] + sys.path[length:] + sys.path[index:length]  # ours before any other
    module, _, attribute = entry_point.partition(":")
    target = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        target = getattr(target, part)
    sys.exit(target())


def main() -> None:
    global ARCHIVE
    ARCHIVE = os.path.abspath(sys.argv[0])
    isolate_from_host_packages()
    if not os.environ.get("SHIV_ROOT"):
        root, refused = choose_root(ARCHIVE)
        if root is None:
            sys.stderr.write(
                "osapi: error: no usable directory to unpack osapi.pyz into ("
                + "; ".join(refused)
                + "); set SHIV_ROOT to a directory you own\n"
            )
            sys.exit(2)
        os.environ["SHIV_ROOT"] = root
    root = os.path.expanduser(os.environ["SHIV_ROOT"])
    hold_and_clean(root)
    unpacked = unpacked_entry(root)
    if unpacked is not None:  # the common start: shiv's bootstrap would only cost its imports
        run_unpacked(*unpacked)
    # the start that unpacks also compiles (environment.json: compile_pyc): in this process, not
    # in a pool of worker processes (no multiprocessing at a first start, e.g. in a chroot)
    os.environ.setdefault("SHIV_COMPILE_WORKERS", "1")
    import _bootstrap  # shiv's bootstrap, shipped at the root of the archive

    _bootstrap.bootstrap()
