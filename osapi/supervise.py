"""``osapi supervise``: the state directory, the supervisord configuration, control.

One foreground process runs the ``supervisor`` package's supervisord in-process
(``run``), so SIGTERM reaches supervisord itself: it stops the workers, then the
API, then NATS, and returns; the command exits 0. The design -- the programs and
their priorities, restarts, why nats-server gets SIGTERM and not lame duck mode,
the state directory and the ownership rules for secrets -- is docs/appliance.md.

* ``layout`` names the files of the state directory (``config.state_dir``).
* ``bootstrap`` (and ``preflight``) check the whole state dir first
  (``check_state``: the rule of ``config.check_state_dir``, also for every entry
  of ``STATE_ENTRIES``), refuse another user's files with exit 2, tighten our own
  state dir and ``secrets/`` to 0700, and create the secrets the programs need
  (with ``nats.server.tls.enabled`` and no certificate files: the CA and the
  server certificate, ``osapi.tls.ensure_generated``).
* ``create_secret`` writes a secret once, mode 0600, to a temporary file
  published with ``link()`` (fails when the name exists): two starts at once
  agree on one value, no reader sees half a file, nothing is overwritten.
* ``render`` writes ``supervisord.conf``: each program as ``self_command()`` plus
  the same ``-f``/``-d``/``-j`` flags, ``autorestart``, ``STARTRETRIES`` with
  supervisor's growing back-off, stops and kills to the whole process group.
* ``rpc`` talks to the running supervisor over ``supervisor.sock``
  (``supervise status|start|stop|restart``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from osapi.errors import ConfigError, OperationError, UsageError
from osapi.process import create_secret, make_dir, tighten_dir, write_private

log = logging.getLogger("osapi.supervise")

ADMIN_TOKEN_LIFETIME = 10 * 365 * 86400  # seconds: the host's own admin token, valid 10 years
ADMIN_SUBJECT = "admin"
PROGRAMS = ("nats", "api", "worker")
PRIORITY = {"nats": 10, "api": 20, "worker": 30}
STOPWAITSECS = {"nats": 30, "api": 30, "worker": 60}
STARTSECS = 1
STARTRETRIES = 1000  # with 1 s more back-off per try: days of retrying, never a quick FATAL
LOG_MAXBYTES = "10MB"
LOG_BACKUPS = 5
UNIX_SOCKET_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
SUPERVISOR_USER = "osapi"
SUPERVISOR_PASSWORD = "supervisor.password"


@dataclass(frozen=True)
class Layout:
    """Every path of one state directory."""

    state_dir: Path

    @property
    def secrets(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def conf(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.state_dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "supervisord.pid"

    def secret(self, name: str) -> Path:
        return self.secrets / name


# what osapi keeps directly in the state dir: each, where present, must belong to this user or root
STATE_ENTRIES = ("secrets", "logs", "nats", "supervisord.conf", "supervisor.sock", "supervisord.pid",
                 "nats-server.conf", "cache")


def layout(cfg) -> Layout:
    from osapi import config

    return Layout(config.state_dir(cfg).absolute())


# ---------------------------------------------------------------- bootstrap





def _random_secret() -> str:
    import secrets

    return secrets.token_urlsafe(48)  # 64 characters


def check_state(paths: Layout, *, lax_ok: bool = True) -> None:
    """Refuse (``ConfigError``, exit 2) a state dir another user could have written to:
    the rule of ``config.check_state_dir``, for the state dir, ``secrets/`` with each
    secret, and the owner of everything else osapi keeps there. ``lax_ok``: a
    directory of ours that group or others can write passes (``bootstrap`` tightens it)."""
    from osapi import config

    config.check_state_dir(paths.state_dir, lax_ok=lax_ok, entries=STATE_ENTRIES)


def bootstrap(cfg, programs: list[str]) -> Layout:
    """Create the state directory (0700) and the secrets the selected programs need; never overwrite.

    An existing state dir is checked first (``check_state``): one that belongs to
    another user, or holds secrets that do, is refused before anything changes;
    our own state dir and ``secrets/`` are tightened to 0700, with a log line.
    """
    from osapi import authtoken, config

    paths = layout(cfg)
    check_state(paths)
    for directory in (paths.state_dir, paths.secrets, paths.logs):
        make_dir(directory)
    for directory in (paths.state_dir, paths.secrets):
        tighten_dir(directory)
    check_state(paths, lax_ok=False)
    create_secret(paths.secret(SUPERVISOR_PASSWORD), _random_secret)
    if "nats" in programs:
        fresh = create_secret(paths.secret("nats.token"), _random_secret)
        if cfg.nats.server.cluster.name and fresh:
            # the route secret (osapi.natsd), copied to the other nodes with the rest. Only with a new
            # node's first secrets: a node of a running cluster (upgraded, or clustered later) making one
            # of its own would differ from the others' and cut the routes (README "Run a fleet")
            from osapi import natsd

            create_secret(paths.secret(natsd.ROUTE_SECRET), _random_secret)
        from osapi import tls

        if tls.generated(cfg):
            tls.ensure_generated(cfg)  # the CA once, the server certificate when missing or stale
    if "api" in programs:
        if not cfg.api.server.security.signing_key:
            create_secret(paths.secret("signing_key"), _random_secret)
        key = config.signing_key(cfg)
        created = create_secret(
            paths.secret("admin.token"),
            lambda: authtoken.generate(key, ["admin"], ADMIN_SUBJECT, ADMIN_TOKEN_LIFETIME),
        )
        if not created:
            _check_admin_token(paths, key)
    return paths



def _check_admin_token(paths: Layout, key: str) -> None:
    from osapi import authtoken, config

    path = paths.secret("admin.token")
    try:
        authtoken.validate(config.read_secret_file(paths.state_dir, path.name) or "", key)
    except authtoken.TokenError as exc:
        log.warning(
            "%s is not valid with the current signing key (%s): `osapi client` on this host will get 401; "
            "delete the file and restart supervise to create a new one", path, exc,
        )


# ---------------------------------------------------------------- supervisord.conf


def self_command() -> list[str]:
    """How to run this same osapi: ``<python> <osapi.pyz>`` from the archive, else ``<python> -m osapi``."""
    boot = sys.modules.get("_osapi_boot")
    archive = getattr(boot, "ARCHIVE", None)
    if archive:
        return [sys.executable, archive]
    return [sys.executable, "-m", "osapi"]


def _source_root() -> str | None:
    """The directory holding the ``osapi`` package when not running from the archive."""
    if getattr(sys.modules.get("_osapi_boot"), "ARCHIVE", None):
        return None
    return str(Path(__file__).resolve().parent.parent)


def _ini(value: str, what: str) -> str:
    """A value for supervisord.conf: ``%`` doubled (supervisor expands ``%(name)s``), one line."""
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{what} must not contain a line break: {value!r}")
    return value.replace("%", "%%")


def _env_pair(name: str, value: str) -> str:
    if '"' in value:
        raise ConfigError(f"{name} must not contain a double quote: {value!r}")
    return f'{name}="{value}"'


NATS_SERVER_LOG = "nats-server.log"


def program_commands(programs: list[str], base: list[str], flags: list[str],
                     logs: Path | None = None) -> dict[str, list[str]]:
    """Each program's command line. nats-server writes its own log (``logs/nats-server.log``):
    see ``natsd.exec_server`` for why it must not log through supervisord's pipe."""
    nats_log = ["--log-file", str(logs / NATS_SERVER_LOG)] if logs is not None else []
    args = {
        "nats": ["nats", "server", "start", "--require-auth", *nats_log],
        "api": ["api", "server", "start"],
        "worker": ["job", "worker", "start"],
    }
    return {name: base + args[name] + flags for name in programs}


def render(paths: Layout, programs: list[str], workers: int, base: list[str], flags: list[str],
           user: str | None = None, password: str | None = None) -> str:
    """The text of supervisord.conf (``password``: for the socket, stored as its SHA-1)."""
    state = _ini(str(paths.state_dir), "supervise.state_dir")
    logs = _ini(str(paths.logs), "the log directory")
    environment = [_env_pair("OSAPI_SUPERVISE_STATE_DIR", state)]
    source = _source_root()
    if source:
        environment.append(_env_pair("PYTHONPATH", _ini(source, "the source directory")))
    lines = [
        "; rendered by `osapi supervise` at every start: edits here are overwritten",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={logs}/supervisord.log",
        f"logfile_maxbytes={LOG_MAXBYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        "loglevel=info",
        f"pidfile={_ini(str(paths.pidfile), 'the pid file')}",
        f"childlogdir={logs}",
        "identifier=osapi",
    ]
    if user:
        lines.append(f"user={user}")
    lines += [
        "",
        "[unix_http_server]",
        f"file={_ini(str(paths.socket), 'the socket path')}",
        "chmod=0700",
    ]
    if password:
        import hashlib

        lines += [f"username={SUPERVISOR_USER}", "password={SHA}" + hashlib.sha1(password.encode()).hexdigest()]
    lines += [
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(paths.socket), 'the socket path')}",
    ]
    for name, command in program_commands(programs, base, flags, paths.logs).items():
        lines += ["", f"[program:{name}]"]
        lines.append("command=" + _ini(" ".join(shlex.quote(part) for part in command), f"the {name} command"))
        if name == "worker":
            lines += [
                f"numprocs={workers}",
                "numprocs_start=1",
                "process_name=%(program_name)s-%(process_num)d",
                f"stdout_logfile={logs}/%(program_name)s-%(process_num)d.log",
            ]
        else:
            lines.append(f"stdout_logfile={logs}/{name}.log")
        lines += [
            f"priority={PRIORITY[name]}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={STARTSECS}",
            f"startretries={STARTRETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOPWAITSECS[name]}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile_maxbytes={LOG_MAXBYTES}",
            f"stdout_logfile_backups={LOG_BACKUPS}",
            "environment=" + ",".join(environment),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- run


def _listening(host: str, port: int) -> bool:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def preflight(cfg, paths: Layout, programs: list[str]) -> None:
    """Refuse early, with a clear message, what would otherwise be a restart loop."""
    from osapi import natsd

    check_state(paths)  # first: is_running below reads supervisor.password from it
    if len(os.fsencode(str(paths.socket))) > UNIX_SOCKET_MAX:
        raise ConfigError(
            f"the supervisor socket path {paths.socket} is longer than {UNIX_SOCKET_MAX} bytes",
            "set supervise.state_dir to a shorter path",
        )
    if paths.socket.exists() and is_running(paths):
        raise OperationError(
            f"osapi supervise is already running with state dir {paths.state_dir} (socket {paths.socket})",
            "see `osapi supervise status`",
        )
    if "nats" in programs:
        from osapi import tls

        natsd.find_binary(cfg.nats.server.binary)
        natsd.check_store_free(natsd.store_dir(cfg))
        tls.check(cfg)  # certificate files, or the openssl command that makes them
    checks = []
    if "nats" in programs:
        checks.append(("nats.server", cfg.nats.server.host, cfg.nats.server.port))
    if "api" in programs:
        checks.append(("api.server", cfg.api.server.host, cfg.api.server.port))
    for key, host, port in checks:
        if _listening(host, port):
            raise OperationError(
                f"{host}:{port} ({key}.host/{key}.port) is already in use",
                f"stop what listens there, or set {key}.port",
            )


def passthrough_flags(osapi_file: str | None, debug: bool, json_lines: bool) -> list[str]:
    from osapi import config

    flags = []
    found = config.find_file(osapi_file)
    if found is not None:
        flags += ["-f", str(Path(found).absolute())]
    if debug:
        flags.append("-d")
    if json_lines:
        flags.append("-j")
    return flags


def _user() -> str | None:
    """``user=root`` when root: supervisord then does not warn that it kept root privileges."""
    if os.geteuid() != 0:
        return None
    import pwd

    with contextlib.suppress(KeyError):
        return pwd.getpwuid(0).pw_name
    return None


def prepare(cfg, programs: list[str], workers: int, flags: list[str]) -> Layout:
    """Check, bootstrap, render: everything short of running supervisord.

    The checks come first so that a refused start changes nothing on disk.
    """
    preflight(cfg, layout(cfg), programs)
    paths = bootstrap(cfg, programs)
    password = _password(paths)
    write_private(paths.conf, render(paths, programs, workers, self_command(), flags, _user(), password))
    return paths


def run(cfg, programs: list[str], workers: int, flags: list[str]) -> int:
    """Run supervisord in the foreground until SIGTERM/SIGINT; 0 when it stopped cleanly."""
    paths = prepare(cfg, programs, workers, flags)
    log.info(
        "supervising %s from %s (state %s, logs %s)",
        ", ".join(f"worker x{workers}" if p == "worker" else p for p in programs),
        " ".join(self_command()), paths.state_dir, paths.logs,
    )
    from supervisor import supervisord

    # supervisord logs to stdout in the foreground; osapi's stdout is for results
    with contextlib.redirect_stdout(sys.stderr):
        supervisord.main(["-n", "-c", str(paths.conf)])
    return 0


# ---------------------------------------------------------------- control


def rpc(paths: Layout):
    """An XML-RPC proxy to supervisord over its unix socket."""
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    password = _password(paths)
    transport = SupervisorTransport(
        SUPERVISOR_USER if password else None, password, f"unix://{paths.socket}"
    )
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _password(paths: Layout) -> str | None:
    from osapi import config

    return config.read_secret_file(paths.state_dir, SUPERVISOR_PASSWORD)


def _not_running(paths: Layout, exc: Exception) -> OperationError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return OperationError(
        f"osapi supervise is not running: cannot connect to {paths.socket} ({reason})",
        "start it with `osapi supervise`, with the same configuration (state dir)",
    )


def is_running(paths: Layout) -> bool:
    try:
        rpc(paths).supervisor.getPID()
        return True
    except Exception:  # noqa: BLE001 -- any failure to talk means "not running"
        return False


def status(paths: Layout) -> dict:
    """``{state, pid, socket, processes: [...]}`` from the running supervisord."""
    proxy = rpc(paths)
    try:
        state = proxy.supervisor.getState()
        pid = proxy.supervisor.getPID()
        infos = proxy.supervisor.getAllProcessInfo()
    except OSError as exc:
        raise _not_running(paths, exc) from None
    processes = []
    for info in infos:
        running = info["statename"] == "RUNNING"
        processes.append({
            "name": _full_name(info),
            "program": info["group"],
            "state": info["statename"],
            "pid": info["pid"] or None,
            "uptime_seconds": (info["now"] - info["start"]) if running and info["start"] else None,
            "description": info["description"],
            "exit_status": info["exitstatus"],
            "log_file": info["stdout_logfile"],
        })
    processes.sort(key=lambda p: (PRIORITY.get(p["program"], 99), p["name"]))
    return {"state": state["statename"], "pid": pid, "socket": str(paths.socket), "processes": processes}


def _full_name(info: dict) -> str:
    return info["name"] if info["name"] == info["group"] else f"{info['group']}:{info['name']}"


def resolve(paths: Layout, name: str) -> tuple[str, str]:
    """``(kind, target)``: ``("all", "")``, ``("group", "worker")`` or ``("process", "worker:worker-2")``."""
    if name == "all":
        return "all", ""
    try:
        infos = rpc(paths).supervisor.getAllProcessInfo()
    except OSError as exc:
        raise _not_running(paths, exc) from None
    groups = {info["group"] for info in infos}
    if name in groups:
        return "group", name
    for info in infos:
        full = f"{info['group']}:{info['name']}"
        if name in (full, info["name"]):
            return "process", full
    known = sorted(groups | {info["name"] for info in infos})  # short names: worker-1 (worker:worker-1 works too)
    raise UsageError(f"no program named {name!r} under supervise", f"known: all, {', '.join(known)}")


def _call(paths: Layout, method: str, *args):
    import xmlrpc.client

    proxy = rpc(paths)
    try:
        return getattr(proxy.supervisor, method)(*args)
    except OSError as exc:
        raise _not_running(paths, exc) from None
    except xmlrpc.client.Fault as exc:
        raise OperationError(f"supervisord refused {method}: {exc.faultString}") from None


# supervisor's fault codes (supervisor.xmlrpc.Faults) that mean "already in the asked state"
_ALREADY = {60, 70}  # ALREADY_STARTED, NOT_RUNNING


def _results_ok(results) -> None:
    failed = [r for r in results or [] if r.get("status") not in (80, *_ALREADY)]  # 80: SUCCESS
    if failed:
        detail = "; ".join(f"{r['group']}:{r['name']}: {r['description']}" for r in failed)
        raise OperationError(f"supervisord: {detail}")


def control(paths: Layout, action: str, name: str) -> dict:
    """``stop``, ``start`` or ``restart`` one program, one process or ``all``.

    Returns ``{action, name, processes}``: the status entries of the processes
    it acted on, as they are afterwards.
    """
    import xmlrpc.client

    kind, target = resolve(paths, name)
    steps = {"stop": ["stop"], "start": ["start"], "restart": ["stop", "start"]}[action]
    for step in steps:
        try:
            if kind == "all":
                _results_ok(_call(paths, f"{step}AllProcesses", True))
            elif kind == "group":
                _results_ok(_call(paths, f"{step}ProcessGroup", target, True))
            else:
                proxy = rpc(paths)
                getattr(proxy.supervisor, f"{step}Process")(target, True)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode in _ALREADY:
                continue
            raise OperationError(f"cannot {step} {name}: {exc.faultString}") from None
        except OSError as exc:
            raise _not_running(paths, exc) from None
    processes = [p for p in status(paths)["processes"] if _selected(p, kind, target)]
    return {"action": action, "name": name, "processes": processes}


def _selected(process: dict, kind: str, target: str) -> bool:
    if kind == "all":
        return True
    if kind == "group":
        return process["program"] == target
    return process["name"] == target or f"{process['program']}:{process['name']}" == target


# supervisord's states of a process that is (or is about to be) running
_ACTIVE = {"STARTING", "RUNNING", "BACKOFF", "STOPPING"}
SHUTDOWN_SLACK = 30  # seconds on top of every program's stopwaitsecs


def shutdown(paths: Layout, timeout: float | None = None) -> dict:
    """Stop the whole supervisor, as SIGTERM does, and wait until its process has exited.

    supervisord's ``shutdown`` call takes the same path as SIGTERM: workers,
    then the API, then NATS (each group waiting for the previous one, each
    program up to its ``stopwaitsecs``), then supervisord exits and ``osapi
    supervise`` with it, status 0. Waits for that (bounded by the sum of the
    ``stopwaitsecs`` and a margin) so that "stopped" means stopped. Returns
    ``{action: "stop", name: None, supervisord: {pid, socket, state}, stopped}``
    with the processes that were running, in the order they were stopped.
    """
    import time

    before = status(paths)
    pid = before["pid"]
    _call(paths, "shutdown")
    timeout = timeout if timeout is not None else sum(STOPWAITSECS.values()) + SHUTDOWN_SLACK
    deadline = time.monotonic() + timeout
    while is_running(paths) or _alive(pid):
        if time.monotonic() >= deadline:
            raise OperationError(
                f"osapi supervise (pid {pid}) is still stopping after {timeout:.0f} s",
                f"see {paths.logs / 'supervisord.log'}",
            )
        time.sleep(0.2)
    stopped = [p["name"] for p in reversed(before["processes"]) if p["state"] in _ACTIVE]
    return {
        "action": "stop",
        "name": None,
        "supervisord": {"pid": pid, "socket": before["socket"], "state": "EXITED"},
        "stopped": stopped,
    }


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
