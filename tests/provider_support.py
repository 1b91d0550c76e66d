"""Helpers for the provider tests: run code as an unprivileged user, or inside a
private mount namespace where bind mounts stay invisible to the host.

Both start a fresh Python subprocess that prints one JSON line; the tests read it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSAPI_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run_python(code: str, *, env: dict | None = None, timeout: float = 60, prefix: list[str] | None = None):
    """Run ``code`` in a new interpreter; ``(returncode, parsed last stdout line or None, stderr)``."""
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=_env(env), stdin=subprocess.DEVNULL,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    return proc.returncode, result, proc.stderr


def run_as_nobody(code: str, preload: list[str], **kwargs):
    """Run ``code`` as uid/gid 65534 with no supplementary groups.

    The interpreter starts as root and drops privileges itself after importing
    ``preload``: the test interpreter may live under /root, which nobody cannot read.
    """
    imports = "".join(f"import {m}\n" for m in ["json", "os", "sys", *preload])
    drop = f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    return run_python(imports + drop + textwrap.dedent(code), **kwargs)


@functools.lru_cache(maxsize=1)
def unshare_reason() -> str | None:
    """None when private mount namespaces work here, else why not (for skip messages)."""
    if os.geteuid() != 0:
        return "needs root for unshare --mount and bind mounts"
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare (util-linux) is not installed"
    try:
        probe = subprocess.run([exe, "--mount", "--propagation", "private", "true"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare does not run: {exc}"
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here: {probe.stderr.strip()}"
    return None


def run_in_mount_namespace(code: str, binds: list[tuple[str, str]] = (), **kwargs):
    """Run ``code`` in a private mount namespace after ``mount --bind src dst`` for each pair.

    The bind mounts exist only inside that namespace and vanish with it.
    """
    mounts = "".join(
        f"subprocess.run(['mount', '--bind', {src!r}, {dst!r}], check=True)\n" for src, dst in binds
    )
    prelude = "import json, os, subprocess, sys\n" + mounts
    return run_python(prelude + textwrap.dedent(code),
                      prefix=[shutil.which("unshare") or "unshare", "--mount", "--propagation", "private"],
                      **kwargs)


def ipv6_loopback_reason() -> str | None:
    """None when ::1 is usable, else why not."""
    import socket

    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback (::1) on this host: {exc}"
    return None


def check_result(op_type: str, result: dict) -> dict:
    """``result`` matches the operations table's result schema exactly: at every level
    every required field and no undeclared one (optional fields: dry runs only), and the types."""
    import jsonschema

    from osapi.domain import operations

    schema = operations.get(op_type).result_schema
    jsonschema.validate(result, schema)

    def same_fields(value, node, where):
        if node.get("type") == "object" and "properties" in node:
            required = set(node.get("required", node["properties"]))
            assert required <= set(value) <= set(node["properties"]), f"{where}: fields {sorted(value)}"
            for key, sub in node["properties"].items():
                if key in value:
                    same_fields(value[key], sub, f"{where}.{key}")
        elif node.get("type") == "array" and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                same_fields(item, node["items"], f"{where}[{i}]")

    same_fields(result, schema, op_type)
    return result


LO_UP = """
import fcntl, socket, struct
def _lo_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    finally:
        s.close()
"""


@functools.lru_cache(maxsize=1)
def unshare_net_reason() -> str | None:
    """None when private network namespaces work here, else why not."""
    if os.geteuid() != 0:
        return "needs root for unshare --net"
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare (util-linux) is not installed"
    try:
        probe = subprocess.run([exe, "--net", "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare does not run: {exc}"
    if probe.returncode != 0:
        return f"unshare --net is not permitted here: {probe.stderr.strip()}"
    return None


def run_in_net_namespace(code: str, *, lo_up: bool = True, sysctls: dict | None = None,
                         as_nobody: bool = False, preload: list[str] = (), **kwargs):
    """Run ``code`` in a new, empty network namespace (only ``lo``, brought up when
    ``lo_up``), after writing ``sysctls`` (``{"net/ipv4/…": "value"}``, per-namespace
    ones only) and optionally dropping to uid/gid 65534. Nothing leaves it."""
    lines = ["import json, os, sys", *[f"import {m}" for m in preload], LO_UP]
    if lo_up:
        lines.append("_lo_up()")
    for key, value in (sysctls or {}).items():
        lines.append(f"open('/proc/sys/{key}', 'w').write({value!r})")
    if as_nobody:
        lines.append(f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})")
    return run_python("\n".join(lines) + "\n" + textwrap.dedent(code),
                      prefix=[shutil.which("unshare") or "unshare", "--net"], **kwargs)


def needs_root():
    """pytest mark: the test switches users or changes file owners."""
    import pytest

    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid 65534 or to chown")
