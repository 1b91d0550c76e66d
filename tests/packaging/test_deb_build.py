"""The built .deb: control fields, files, modes, conffile, unit, copyright, lintian, reproducibility.

Everything here reads the package ``packaging/build_deb.py`` built from the real
``osapi.pyz`` (the session fixture ``deb``); nothing is installed on this machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deb_support import plain_env
from testkit import REPO

import osapi
from osapi import config

PACKAGING = REPO / "packaging"

# every file of the package: path -> mode
EXPECTED_FILES = {
    "etc/osapi/osapi.yaml": 0o644,
    "usr/bin/osapi": 0o755,
    "usr/lib/systemd/system/osapi.service": 0o644,
    "usr/share/doc/osapi/changelog.gz": 0o644,
    "usr/share/doc/osapi/copyright": 0o644,
    "usr/share/lintian/overrides/osapi": 0o644,
    "usr/share/man/man1/osapi.1.gz": 0o644,
}


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True, timeout=120).stdout


# ---------------------------------------------------------------- control


def test_file_name_and_control_fields(deb):
    assert deb.version == osapi.__version__
    assert deb.path.name == f"osapi_{osapi.__version__}_{deb.arch}.deb"
    fields = {name: dpkg_deb("-f", str(deb.path), name).strip() for name in (
        "Package", "Version", "Architecture", "Maintainer", "Depends", "Recommends", "Section", "Priority",
        "Installed-Size", "Description")}
    assert fields["Package"] == "osapi"
    assert fields["Version"] == osapi.__version__
    assert fields["Architecture"] == deb.arch != "all"
    assert fields["Depends"] == "python3 (>= 3.10)"
    assert fields["Recommends"] == "openssl"
    assert re.fullmatch(r".+ <[^@\s]+@[^@\s]+>", fields["Maintainer"])
    assert fields["Section"] == "admin" and fields["Priority"] == "optional"
    assert fields["Description"].startswith("REST API for Linux hosts")
    # Installed-Size: KiB, each file rounded up, one per directory (as dpkg-gencontrol counts)
    files = [p for p in deb.tree.rglob("*") if "DEBIAN" not in p.relative_to(deb.tree).parts]
    expected = sum((p.stat().st_size + 1023) // 1024 for p in files if p.is_file())
    expected += sum(1 for p in files if p.is_dir())
    assert int(fields["Installed-Size"]) == expected


def test_files_modes_owners_and_times(deb):
    listing = dpkg_deb("-c", str(deb.path)).splitlines()
    files, dirs = {}, set()
    for line in listing:
        perms, owner, _size, day, clock, path = line.split(None, 5)
        assert owner == "root/root", line
        path = path[2:]  # "./usr/bin/osapi" -> "usr/bin/osapi"
        if perms.startswith("d"):
            assert perms == "drwxr-xr-x", line
            dirs.add(path.rstrip("/"))
        else:
            assert perms.startswith("-"), f"only regular files expected: {line}"
            files[path] = perms
    assert set(files) == set(EXPECTED_FILES)
    for path, mode in EXPECTED_FILES.items():
        assert files[path] == stat.filemode(stat.S_IFREG | mode), path
    # every member carries the same time: the changelog's date (SOURCE_DATE_EPOCH)
    for path in [deb.tree / p for p in EXPECTED_FILES] + [deb.tree / d for d in dirs if d]:
        assert int(path.stat().st_mtime) == deb.epoch, path


def test_maintainer_scripts_and_md5sums(deb):
    control = deb.tree / "DEBIAN"
    assert sorted(p.name for p in control.iterdir()) == ["conffiles", "control", "md5sums", "postinst", "postrm", "prerm"]
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text
        assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0
        # an unknown action is refused loudly and does nothing
        result = subprocess.run(["sh", str(script), "bogus-action"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and f"{name} called with unknown argument 'bogus-action'" in result.stderr
    sums = {}
    for line in (control / "md5sums").read_text().splitlines():
        digest, path = line.split("  ", 1)
        sums[path] = digest
    # every file but the conffile, which dpkg tracks itself
    assert set(sums) == set(EXPECTED_FILES) - {"etc/osapi/osapi.yaml"}
    for path, digest in sums.items():
        assert hashlib.md5((deb.tree / path).read_bytes()).hexdigest() == digest, path


def test_conffile_is_the_documented_defaults(deb):
    assert (deb.tree / "DEBIAN" / "conffiles").read_text() == "/etc/osapi/osapi.yaml\n"
    shipped = deb.tree / "etc" / "osapi" / "osapi.yaml"
    assert shipped.read_bytes() == (REPO / "osapi.yaml").read_bytes()
    cfg = config.load(str(shipped), {})
    empty = Path("empty.yaml")  # the tests run in a temp dir
    empty.write_text("")
    assert cfg.as_dict() == config.load(str(empty), {}).as_dict(), "every key at its built-in default"
    assert cfg.api.server.host == "127.0.0.1" and cfg.nats.server.host == "127.0.0.1"
    assert cfg.supervise.state_dir == ""  # as root: /var/lib/osapi, where the unit keeps its state


# ---------------------------------------------------------------- the program


def test_usr_bin_osapi_is_the_pyz_behind_a_python3_shebang(deb, pyz, tmp_path):
    binary = deb.tree / "usr" / "bin" / "osapi"
    data = binary.read_bytes()
    assert data.startswith(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(binary) as packaged, zipfile.ZipFile(pyz) as built:
        assert packaged.testzip() is None
        assert packaged.namelist() == built.namelist()
        for info in built.infolist():
            assert packaged.read(info.filename) == built.read(info.filename), info.filename
            assert packaged.getinfo(info.filename).external_attr == info.external_attr, info.filename
    # it runs as a program through its shebang, and zipimport accepts it
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120,
                            env=plain_env(HOME=str(home)), cwd=home)
    assert result.returncode == 0 and result.stdout == f"osapi {osapi.__version__}\n", result.stderr
    probe = subprocess.run(
        ["/usr/bin/python3", "-I", "-c",
         f"import sys; sys.path.insert(0, {str(binary) + '/site-packages'!r}); import osapi.supervise; print(osapi.__version__)"],
        capture_output=True, text=True, timeout=60, env=plain_env(), cwd=home,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == osapi.__version__, probe.stderr


def test_architecture_is_that_of_the_bundled_nats_server(deb, build_deb):
    assert build_deb.pyz_architecture(deb.tree / "usr" / "bin" / "osapi") == deb.arch


# ---------------------------------------------------------------- documentation


def test_changelog_is_gzip_9n_of_the_debian_changelog(deb):
    packed = (deb.tree / "usr" / "share" / "doc" / "osapi" / "changelog.gz").read_bytes()
    assert packed[:3] == b"\x1f\x8b\x08"
    assert packed[3] & 0x08 == 0, "gzip -n: no file name"
    assert packed[4:8] == b"\0\0\0\0", "gzip -n: no time stamp"
    text = gzip.decompress(packed).decode()
    assert text == (PACKAGING / "debian" / "changelog").read_text()
    assert text.startswith(f"osapi ({osapi.__version__}) ")


def test_copyright_is_machine_readable_and_names_every_bundled_component(deb):
    text = (deb.tree / "usr" / "share" / "doc" / "osapi" / "copyright").read_text()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    files_licenses = [re.search(r"^License: (\S+)", p, re.M).group(1) for p in paragraphs if p.startswith("Files:")]
    standalone = {re.match(r"License: (\S+)", p).group(1) for p in paragraphs if p.startswith("License:")}
    assert set(files_licenses) <= standalone, "every license named in a Files paragraph has its text"
    assert re.search(r"^Files: \*\nCopyright: .+\nLicense: Expat$", text, re.M), "osapi itself: MIT (Expat)"
    # every distribution inside the archive is listed with its version
    with zipfile.ZipFile(deb.tree / "usr" / "bin" / "osapi") as zf:
        dists = {m.split("/")[1] for m in zf.namelist() if m.startswith("site-packages/") and ".dist-info/" in m}
        has_bootstrap = any(m.startswith("_bootstrap/") for m in zf.namelist())
    assert dists, "the archive has dist-info directories"
    for dist in dists:
        name, version = dist[: -len(".dist-info")].rsplit("-", 1)
        assert f"site-packages/{name}-*" in text, f"{name} has no Files paragraph in copyright"
        assert version in text, f"copyright does not name {name} {version}"
    assert has_bootstrap and "Files: _bootstrap/*" in text
    assert "site-packages/bin/nats-server" in text and "Apache-2.0" in text


def test_man_page_renders_without_warnings(deb):
    page = deb.tree / "usr" / "share" / "man" / "man1" / "osapi.1.gz"
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                            capture_output=True, text=True, timeout=60, env=plain_env(MANWIDTH="80"))
    assert result.returncode == 0 and result.stderr == "", result.stderr


# ---------------------------------------------------------------- the systemd unit


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_the_supervisor_with_state_in_var_lib(deb):
    unit = (deb.tree / "usr" / "lib" / "systemd" / "system" / "osapi.service").read_text()
    assert unit == (PACKAGING / "osapi.service").read_text()
    s = unit_settings(unit)
    assert s["ExecStart"] == ["/usr/bin/osapi supervise"]
    assert s["Restart"] == ["on-failure"]
    assert s["StateDirectory"] == ["osapi"] and s["StateDirectoryMode"] == ["0700"]
    # the supervisor stops its children in order: SIGTERM to it alone, the rest killed at the timeout
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]
    # longer than supervise's own stop waits, one group after the other
    from osapi import supervise

    assert int(s["TimeoutStopSec"][0].rstrip("s")) > sum(supervise.STOPWAITSECS.values())
    # hardening that leaves DNS writes and ping possible
    assert "PrivateNetwork" not in s and "ProtectHostname" not in s
    assert s["ProtectSystem"] == ["true"], "full/strict would make /etc/resolv.conf read-only"
    assert "AF_INET" in s["RestrictAddressFamilies"][0].split() and "AF_UNIX" in s["RestrictAddressFamilies"][0].split()
    # nothing secret in the environment
    for value in s.get("Environment", []):
        assert re.fullmatch(r"SHIV_ROOT=/var/lib/osapi/cache", value), value
    assert s["WantedBy"] == ["multi-user.target"]


def verify_root(deb, tmp_path) -> tuple[Path, dict[str, str]]:
    """A root for ``systemd-analyze verify --root``: the package's files plus the host's units.

    ``--root`` makes systemd look up the executable and the unit's dependencies
    (sysinit.target, …) inside that tree, so /usr/bin/osapi is checked for
    real; ``MANPATH`` points the Documentation=man:osapi(1) check at the
    package's man page.
    """
    root = tmp_path / "verify-root"
    shutil.copytree(deb.tree, root, symlinks=True, ignore=shutil.ignore_patterns("DEBIAN"))
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True, dirs_exist_ok=True)
    return root, plain_env(MANPATH=str(root / "usr" / "share" / "man"), SYSTEMD_LOG_COLOR="0")


def test_systemd_analyze_verify(deb, tmp_path):
    root, env = verify_root(deb, tmp_path)
    command = ["systemd-analyze", "verify", f"--root={root}", "osapi.service"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stdout + result.stderr

    # the check is real: a misspelt setting, a bad value and a missing program are each reported
    unit = root / "usr" / "lib" / "systemd" / "system" / "osapi.service"
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixd\nProtectSystm=true"))
    (root / "usr" / "bin" / "osapi").unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert "Failed to parse kill mode specification" in result.stderr
    assert "Unknown key 'ProtectSystm'" in result.stderr
    assert "/usr/bin/osapi is not executable" in result.stderr


def test_systemd_analyze_security_exposure(deb, tmp_path):
    root, env = verify_root(deb, tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "osapi.service"],
                            capture_output=True, text=True, timeout=120, env=env)
    match = re.search(r"Overall exposure level for osapi\.service: (\d+\.\d+)", result.stdout)
    assert result.returncode == 0 and match, result.stdout + result.stderr
    # a root service with no sandboxing scores 9.6; this one is hardened where osapi's work allows
    assert float(match.group(1)) <= 6.0, result.stdout


# ---------------------------------------------------------------- lintian


def test_lintian_is_clean_but_for_justified_overrides(deb, tmp_path):
    result = subprocess.run(
        ["lintian", "--pedantic", "--display-info", "--display-experimental", "--show-overrides", str(deb.path)],
        capture_output=True, text=True, timeout=300, env=plain_env(HOME=str(tmp_path)),
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert result.returncode == 0 and tags == [], result.stdout + result.stderr
    overridden = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("O: ")}
    # each override in the file is used, and each has a comment saying why
    text = (PACKAGING / "debian" / "lintian-overrides").read_text()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    declared = set()
    for block in blocks[1:]:
        lines = block.splitlines()
        assert lines[0].startswith("# ") and len(lines) >= 2, f"override without a reason: {block!r}"
        for line in lines:
            if not line.startswith("#"):
                declared.add(line.split()[1])
    assert declared == overridden, (declared, overridden)


# ---------------------------------------------------------------- reproducible, and bad input


def test_reproducible_from_a_separately_built_pyz(deb, pyz, tmp_path):
    """build_pyz.py twice, build_deb.py twice (once building the pyz itself): the same bytes."""
    out = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "build_deb.py"), "--pyz", str(pyz), "-o", str(out)],
        capture_output=True, text=True, timeout=600, env=plain_env(HOME=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    again = out / deb.path.name
    assert again.read_bytes() == deb.path.read_bytes()
    assert [p.name for p in out.iterdir()] == [deb.path.name], "no temporary file left behind"


def fake_pyz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def elf_header(machine: int, elf_class: int = 2) -> bytes:
    return b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 11 + machine.to_bytes(2, "little") + b"\0" * 44


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("not-a-zip", "is not a readable zip archive"),
    ("no-main", "has no __main__.py: not an osapi.pyz"),
    ("no-nats", "does not bundle nats-server"),
    ("not-elf", "is not an ELF binary"),
    ("other-arch", "bundles a nats-server for"),
])
def test_a_bad_pyz_is_refused_and_nothing_is_written(case, message, tmp_path, deb):
    pyz = tmp_path / "osapi.pyz"
    other = {"amd64": 183}.get(deb.arch, 62)  # arm64 on amd64, else amd64
    if case == "not-a-zip":
        pyz.write_bytes(b"#!/usr/bin/env python3\nprint('hello')\n")
    elif case == "no-main":
        fake_pyz(pyz, {"site-packages/bin/nats-server": elf_header(62)})
    elif case == "no-nats":
        fake_pyz(pyz, {"__main__.py": b""})
    elif case == "not-elf":
        fake_pyz(pyz, {"__main__.py": b"", "site-packages/bin/nats-server": b"#!/bin/sh\n"})
    elif case == "other-arch":
        fake_pyz(pyz, {"__main__.py": b"", "site-packages/bin/nats-server": elf_header(other)})
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "build_deb.py"), "--pyz", str(pyz), "-o", str(out)],
        capture_output=True, text=True, timeout=120, env=plain_env(HOME=str(tmp_path)),
    )
    assert result.returncode == 1
    assert result.stderr.startswith("build_deb: error: ") and message in result.stderr, result.stderr
    assert str(pyz) in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_a_version_without_a_changelog_entry_is_refused(build_deb, monkeypatch, tmp_path):
    monkeypatch.setattr(build_deb, "read_version", lambda: "99.0.0")
    with pytest.raises(build_deb.BuildError, match=r"top entry is .*, osapi.__version__ is 99.0.0; add a changelog entry"):
        build_deb.build(tmp_path / "unused.pyz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_malformed_changelog_is_refused(build_deb, tmp_path):
    bad = tmp_path / "changelog"
    bad.write_text("osapi 0.1.0 first release\n")
    with pytest.raises(build_deb.BuildError, match="not in Debian changelog format"):
        build_deb.changelog_top(bad)
    bad.write_text("osapi (0.1.0) unstable; urgency=medium\n\n  * x\n\n -- A <a@b.c>  yesterday-ish\n")
    with pytest.raises(build_deb.BuildError, match="cannot read the date 'yesterday-ish'"):
        build_deb.changelog_top(bad)


def test_source_date_epoch_sets_every_time(build_deb, deb, pyz, tmp_path):
    out = tmp_path / "out"
    env = plain_env(HOME=str(tmp_path), SOURCE_DATE_EPOCH="1700000000")
    result = subprocess.run([sys.executable, str(PACKAGING / "build_deb.py"), "--pyz", str(pyz), "-o", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(out / deb.path.name), str(tree)], check=True, timeout=120)
    times = {int(p.stat().st_mtime) for p in tree.rglob("*")}
    assert times == {1700000000}
    assert os.stat(tree / "usr" / "bin" / "osapi").st_mode & 0o777 == 0o755


@pytest.mark.parametrize("absolute", [True, False], ids=["offsets-from-file-start", "naive-concatenation"])
@pytest.mark.parametrize("prefix", [b"", b"#!/usr/bin/env python3\n", b"#!/opt/a/much/longer/path/to/python3.11 -E\n"],
                         ids=["no-shebang", "shorter", "longer"])
def test_the_shebang_swap_keeps_the_archive_importable(build_deb, tmp_path, prefix, absolute):
    """Whatever the original first line and however its offsets were counted, zipimport accepts the result."""
    source = tmp_path / "source.pyz"
    members = {"__main__.py": b"import sys; sys.path.insert(0, sys.argv[0] + '/site-packages'); import hello; print(hello.WORD)\n", "site-packages/hello.py": b"WORD = 'hi'\n"}
    if absolute:  # as build_pyz.py and zipapp write it: the prefix first, then the zip into the same file
        with open(source, "wb") as raw:
            raw.write(prefix)
            with zipfile.ZipFile(raw, "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
    else:
        source.write_bytes(prefix + fake_pyz(tmp_path / "plain.zip", members).read_bytes())
    swapped = tmp_path / "swapped.pyz"
    swapped.write_bytes(build_deb.with_shebang(source))
    assert swapped.read_bytes().startswith(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(swapped) as zf:
        assert zf.testzip() is None and zf.read("site-packages/hello.py") == b"WORD = 'hi'\n"
        assert zf.infolist()[0].header_offset == len(b"#!/usr/bin/python3\n"), "offsets count from the file start"
    code = f"import sys; sys.path.insert(0, {str(swapped) + '/site-packages'!r}); import hello; print(hello.WORD)"
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "hi\n", result.stderr
    result = subprocess.run(["/usr/bin/python3", "-I", str(swapped)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "hi\n", result.stderr


def test_a_truncated_archive_is_refused(build_deb, tmp_path):
    broken = tmp_path / "broken.pyz"
    broken.write_bytes(b"#!/usr/bin/env python3\nPK\x03\x04 not really a zip")
    with pytest.raises(build_deb.BuildError, match="not a readable zip archive: no end of central directory"):
        build_deb.with_shebang(broken)
