"""The first code that runs in ``osapi.pyz``: pick a safe cache, then hand over to shiv.

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

The choice is exported as ``SHIV_ROOT`` so the processes ``osapi supervise``
starts from the same archive reuse it without probing again.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import zipfile

# The absolute path of the running archive; ``osapi.supervise`` runs children from it.
ARCHIVE: str | None = None

CACHE_DIR_NAME = "osapi"


def candidates(environ=None) -> list[str]:
    """Cache roots to try, in order (without ``$SHIV_ROOT``, which is never second-guessed)."""
    environ = os.environ if environ is None else environ
    out = []
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        out.append(os.path.join(xdg, CACHE_DIR_NAME))
    home = environ.get("HOME", "")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.geteuid()).pw_dir
        except (ImportError, KeyError):
            home = ""
    if home and os.path.isabs(home):
        out.append(os.path.join(home, ".cache", CACHE_DIR_NAME))
    out.append(os.path.join(tempfile.gettempdir(), f"{CACHE_DIR_NAME}-{os.geteuid()}"))
    return out


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


def unpacked_name(archive: str) -> str | None:
    """The directory shiv unpacks this archive into: ``<archive name>_<build id>``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            build_id = json.loads(zf.read("environment.json").decode())["build_id"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return f"{os.path.basename(os.path.realpath(archive))}_{build_id}"


def choose_root(archive: str, environ=None) -> tuple[str | None, list[str]]:
    """The cache root to use and, when there is none, why each candidate was refused."""
    name = unpacked_name(archive)
    refused = []
    for root in candidates(environ):
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
    import _bootstrap  # shiv's bootstrap, shipped at the root of the archive

    _bootstrap.bootstrap()
