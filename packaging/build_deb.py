#!/usr/bin/env python3
"""Build the osapi Debian package: ``dist/osapi_<version>_<arch>.deb`` (docs/appliance.md, The .deb).

Usage: ``python3 packaging/build_deb.py [--pyz PATH] [-o DIR]``

Plain ``dpkg-deb --build --root-owner-group`` on a staged tree; no debhelper, no
source package. What goes in:

* ``/usr/bin/osapi``: ``osapi.pyz`` (built with ``build_pyz.py`` into a temp dir,
  or the one given with ``--pyz``) with its shebang replaced by
  ``#!/usr/bin/python3``, mode 0755;
* ``/etc/osapi/osapi.yaml``: the repository's ``osapi.yaml`` (every key at its
  default, the API on 127.0.0.1), a conffile;
* ``/usr/lib/systemd/system/osapi.service``: ``packaging/osapi.service``;
* ``/usr/share/doc/osapi/``: ``copyright`` (machine-readable, every bundled
  component) and ``changelog.gz`` (``gzip -9n``; the name Debian policy gives a
  native package's changelog: osapi is its own upstream, the version has no
  Debian revision);
* ``/usr/share/man/man1/osapi.1.gz`` and ``/usr/share/lintian/overrides/osapi``;
* ``DEBIAN/``: control, conffiles, md5sums, postinst, prerm, postrm.

The version is ``osapi.__version__`` and must equal the top entry of
``packaging/debian/changelog`` (the build refuses otherwise). The architecture is
``dpkg --print-architecture``; the build refuses a pyz whose bundled
``nats-server`` is for another machine, since that binary is what makes the
package architecture-specific.

The data member is gzip-compressed: the pyz inside is already deflated, so xz
would take seconds to save nothing.

Reproducible: every mtime is ``SOURCE_DATE_EPOCH`` (default: the date of the top
changelog entry, as ``dpkg-buildpackage`` does), modes are normalized, the
members are owned by root (``--root-owner-group``) and dpkg-deb writes them in
sorted order. The same pyz and sources give the same bytes.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEBIAN = HERE / "debian"
PACKAGE = "osapi"
SHEBANG = b"#!/usr/bin/python3\n"
MAINTAINER = "osapi maintainers <maintainers@osapi.invalid>"
PYTHON_DEPENDS = "python3 (>= 3.10)"
RECOMMENDS = "openssl"  # generates the CA of NATS TLS (nats.server.tls.enabled without cert_file)
NATS_SERVER_MEMBER = "site-packages/bin/nats-server"

# ELF e_machine (and class, for the 32/64-bit twins) -> Debian architecture
ELF_MACHINES = {
    (62, 2): "amd64",
    (183, 2): "arm64",
    (3, 1): "i386",
    (40, 1): "armhf",
    (21, 2): "ppc64el",
    (22, 2): "s390x",
    (243, 2): "riscv64",
}

DESCRIPTION = """\
REST API for Linux hosts, every operation a job on NATS JetStream
 osapi answers questions about Linux hosts (hostname, status, uptime, disks,
 memory, load, DNS settings), pings from them and changes their DNS
 configuration. Every operation runs as a job on NATS JetStream and is executed
 by workers on the target hosts; one host or a whole fleet can be addressed by
 hostname or label.
 .
 This package installs the whole appliance as one program, /usr/bin/osapi: the
 supervisor, the bundled nats-server, the REST API server (JWT auth), the
 worker and the command-line client, plus the osapi.service systemd unit that
 runs them with state in /var/lib/osapi.
"""


class BuildError(Exception):
    """The package cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class Entry:
    """One file of the package: where it goes, its bytes, its mode."""

    path: str  # relative to the root, e.g. "usr/bin/osapi"
    data: bytes
    mode: int = 0o644


# ---------------------------------------------------------------- inputs


def read_version() -> str:
    """``osapi.__version__``, read from the source without importing osapi."""
    text = (ROOT / "osapi" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not match:
        raise BuildError("osapi/__init__.py has no __version__ = '...' line")
    version = match.group(1)
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~]*", version):
        raise BuildError(f"osapi.__version__ {version!r} is not a valid native Debian version")
    return version


def changelog_top(path: Path = DEBIAN / "changelog") -> tuple[str, int]:
    """(version, unix time) of the newest entry of the Debian changelog."""
    text = path.read_text(encoding="utf-8")
    head = re.match(rf"^{PACKAGE} \(([^)]+)\) [a-z-]+; urgency=[a-z]+\n", text)
    trailer = re.search(r"^ -- .+ <[^>]+>  (.+)$", text, re.M)
    if not head or not trailer:
        raise BuildError(f"{path}: the top entry is not in Debian changelog format")
    stamp = email.utils.parsedate_tz(trailer.group(1))
    if stamp is None:
        raise BuildError(f"{path}: cannot read the date {trailer.group(1)!r} (RFC 2822 expected)")
    return head.group(1), int(email.utils.mktime_tz(stamp))


def host_architecture() -> str:
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"cannot run dpkg --print-architecture ({exc}); build on Debian or Ubuntu") from None
    return out.stdout.strip()


def pyz_architecture(pyz: Path) -> str:
    """The Debian architecture of the nats-server bundled in the pyz."""
    try:
        with zipfile.ZipFile(pyz) as zf:
            names = set(zf.namelist())
            if "__main__.py" not in names:
                raise BuildError(f"{pyz} has no __main__.py: not an osapi.pyz (build it with build_pyz.py)")
            if NATS_SERVER_MEMBER not in names:
                raise BuildError(f"{pyz} does not bundle nats-server ({NATS_SERVER_MEMBER}); rebuild it with build_pyz.py")
            with zf.open(NATS_SERVER_MEMBER) as member:
                header = member.read(20)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BuildError(f"{pyz} is not a readable zip archive: {exc}") from None
    if header[:4] != b"\x7fELF" or len(header) < 20:
        raise BuildError(f"{pyz}: {NATS_SERVER_MEMBER} is not an ELF binary")
    elf_class = header[4]
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    arch = ELF_MACHINES.get((machine, elf_class))
    if arch is None:
        raise BuildError(f"{pyz}: nats-server is for ELF machine {machine}, which this script does not map to a Debian architecture")
    return arch


def build_pyz(workdir: Path, epoch: int) -> Path:
    """Run ``build_pyz.py`` with this interpreter into ``workdir``."""
    output = workdir / "osapi.pyz"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    result = subprocess.run([sys.executable, str(ROOT / "build_pyz.py"), "-o", str(output)], env=env)
    if result.returncode != 0 or not output.is_file():
        raise BuildError(f"build_pyz.py failed (exit {result.returncode}); see its message above")
    return output


def with_shebang(pyz: Path) -> bytes:
    """The pyz behind a ``#!/usr/bin/python3`` line instead of its own first line.

    A zip records absolute offsets (of each member's local header and of the
    central directory), and Python's zipimport refuses an archive whose prefix
    got shorter: its offsets would point before the data. So the offsets are
    recomputed for the new prefix; the members' bytes stay as they are.
    """
    data = pyz.read_bytes()
    prefix = data.index(b"\n") + 1 if data.startswith(b"#!") and b"\n" in data else 0
    try:
        return SHEBANG + rebase_zip(data[prefix:], len(SHEBANG))
    except (ValueError, struct.error) as exc:
        raise BuildError(f"{pyz} is not a readable zip archive: {exc}") from None


EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
CDH = struct.Struct("<4s6H3L5H2L")  # central directory file header


def rebase_zip(body: bytes, new_base: int) -> bytes:
    """``body`` (a zip, its prefix cut off) with offsets for a file where it starts at ``new_base``.

    Where its offsets were counted from (the old file's start, or the zip's own
    start as a naive concatenation leaves them) is read from where the central
    directory really is, as zip readers do.
    """
    end = body.rfind(b"PK\x05\x06", max(0, len(body) - EOCD.size - 0xFFFF))
    if end < 0:
        raise ValueError("no end of central directory record")
    sig, disk, cd_disk, entries_disk, entries, cd_size, cd_offset, comment_len = EOCD.unpack_from(body, end)
    if disk or cd_disk or entries != entries_disk or cd_offset == 0xFFFFFFFF or entries == 0xFFFF:
        raise ValueError("multi-disk or zip64 archives are not supported")
    pos = end - cd_size  # where the central directory really starts in body
    if pos < 0:
        raise ValueError("the central directory size is larger than the archive")
    delta = new_base + pos - cd_offset
    out = bytearray(body)
    for _ in range(entries):
        fields = list(CDH.unpack_from(body, pos))
        if fields[0] != b"PK\x01\x02":
            raise ValueError(f"bad central directory entry at offset {pos}")
        if fields[-1] == 0xFFFFFFFF:
            raise ValueError("zip64 archives are not supported")
        fields[-1] += delta  # offset of the member's local header
        CDH.pack_into(out, pos, *fields)
        name_len, extra_len, comment = fields[10], fields[11], fields[12]
        pos += CDH.size + name_len + extra_len + comment
    EOCD.pack_into(out, end, sig, disk, cd_disk, entries_disk, entries, cd_size, cd_offset + delta, comment_len)
    return bytes(out)


def gzip9n(data: bytes) -> bytes:
    """``gzip -9n``: no name, no timestamp (the output depends on the bytes only)."""
    try:
        return subprocess.run(["gzip", "-9n"], input=data, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"gzip -9n failed: {exc}") from None


# ---------------------------------------------------------------- the package


def payload(pyz: Path) -> list[Entry]:
    return [
        Entry("usr/bin/osapi", with_shebang(pyz), 0o755),
        Entry("etc/osapi/osapi.yaml", (ROOT / "osapi.yaml").read_bytes()),
        Entry("usr/lib/systemd/system/osapi.service", (HERE / "osapi.service").read_bytes()),
        Entry("usr/share/doc/osapi/copyright", (DEBIAN / "copyright").read_bytes()),
        Entry("usr/share/doc/osapi/changelog.gz", gzip9n((DEBIAN / "changelog").read_bytes())),
        Entry("usr/share/man/man1/osapi.1.gz", gzip9n((HERE / "osapi.1").read_bytes())),
        Entry("usr/share/lintian/overrides/osapi", (DEBIAN / "lintian-overrides").read_bytes()),
    ]


CONFFILES = ["etc/osapi/osapi.yaml"]
SCRIPTS = ["postinst", "prerm", "postrm"]


def installed_size(entries: list[Entry]) -> int:
    """KiB the way dpkg-gencontrol counts them: each file rounded up, 1 per directory."""
    dirs = {parent for e in entries for parent in Path(e.path).parents if parent != Path(".")}
    return sum((len(e.data) + 1023) // 1024 for e in entries) + len(dirs)


def control(version: str, arch: str, size_kib: int) -> str:
    fields = [
        ("Package", PACKAGE),
        ("Version", version),
        ("Architecture", arch),
        ("Maintainer", MAINTAINER),
        ("Installed-Size", str(size_kib)),
        ("Depends", PYTHON_DEPENDS),
        ("Recommends", RECOMMENDS),
        ("Section", "admin"),
        ("Priority", "optional"),
        ("Description", DESCRIPTION.rstrip("\n")),
    ]
    return "".join(f"{name}: {value}\n" for name, value in fields)


def md5sums(entries: list[Entry]) -> str:
    """Every shipped file but the conffiles (dpkg records those itself), sorted."""
    lines = [
        f"{hashlib.md5(e.data).hexdigest()}  {e.path}\n"
        for e in sorted(entries, key=lambda e: e.path)
        if e.path not in CONFFILES
    ]
    return "".join(lines)


def stage(root: Path, entries: list[Entry], meta: dict[str, tuple[bytes, int]], epoch: int) -> None:
    """Write the tree with normalized modes and every mtime at ``epoch``."""
    for entry in entries:
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.data)
        target.chmod(entry.mode)
    debian = root / "DEBIAN"
    debian.mkdir()
    for name, (data, mode) in meta.items():
        (debian / name).write_bytes(data)
        (debian / name).chmod(mode)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def build(pyz: Path | None, outdir: Path, log=print) -> Path:
    """Build the package; returns the path of the .deb."""
    version = read_version()
    log_version, log_time = changelog_top()
    if log_version != version:
        raise BuildError(
            f"packaging/debian/changelog's top entry is {log_version}, osapi.__version__ is {version}; "
            "add a changelog entry for the new version"
        )
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or log_time)
    arch = host_architecture()
    with tempfile.TemporaryDirectory(prefix="osapi-deb-") as tmp:
        work = Path(tmp)
        if pyz is None:
            pyz = build_pyz(work, epoch)
        elif not pyz.is_file():
            raise BuildError(f"--pyz {pyz}: no such file")
        bundled = pyz_architecture(pyz)
        if bundled != arch:
            raise BuildError(f"{pyz} bundles a nats-server for {bundled}, but this machine builds {arch} packages")
        entries = payload(pyz)
        meta = {
            "control": (control(version, arch, installed_size(entries)).encode(), 0o644),
            "conffiles": ("".join(f"/{c}\n" for c in CONFFILES).encode(), 0o644),
            "md5sums": (md5sums(entries).encode(), 0o644),
        }
        for script in SCRIPTS:
            meta[script] = ((DEBIAN / script).read_bytes(), 0o755)
        root = work / "root"
        root.mkdir()
        stage(root, entries, meta, epoch)

        outdir.mkdir(parents=True, exist_ok=True)
        final = outdir / f"{PACKAGE}_{version}_{arch}.deb"
        partial = outdir / f".{final.name}.partial"  # same filesystem: the rename is atomic
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
        result = subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z9", "--build", str(root), str(partial)],
            env=env, capture_output=True, text=True,
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BuildError(f"dpkg-deb --build failed (exit {result.returncode}): {result.stderr.strip()}")
        os.replace(partial, final)
    log(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB)")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build dist/osapi_<version>_<arch>.deb.")
    parser.add_argument("--pyz", type=Path, help="use this osapi.pyz instead of building one with build_pyz.py")
    parser.add_argument("-o", "--output-dir", type=Path, default=ROOT / "dist",
                        help="directory for the .deb (default: dist/ in the repository)")
    args = parser.parse_args(argv)
    try:
        build(args.pyz.resolve() if args.pyz else None, args.output_dir.resolve())
    except BuildError as exc:
        sys.stderr.write(f"build_deb: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
