"""The one test stack: nats-server, API processes and worker processes on loopback.

``NatsServer`` runs a real nats-server with JetStream and token auth (the
configuration ``osapi.natsd`` writes) on a free port in its own directory.
``ApiProcess`` runs ``osapi api server start`` (real Waitress) and
``WorkerProcess`` runs ``osapi job worker start``, from this source tree
(``python -m osapi``) or from any other command (``osapi=[python3, osapi.pyz]``).
``Stack`` starts the three together with one clean environment. Every process
is started with its log in a file and stopped by pid (TERM, then KILL); every
wait is bounded.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

from testkit.http import Http, Resp
from testkit.procs import clean_env, free_port, stop_all, stop_process, wait_for, wait_for_port

SIGNING_KEY = "api-test-signing-key-" + "k" * 32


def make_token(roles=("admin",), subject="tester", key: str = SIGNING_KEY, expires_in: float = 3600,
               now: float | None = None) -> str:
    from osapi import authtoken

    return authtoken.generate(key, list(roles), subject, expires_in, now=now)


def generate_tls(state_dir: Path):
    """A CA and a server certificate for 127.0.0.1 made by ``osapi.tls`` (as supervise does) in ``state_dir``."""
    from osapi import config, tls

    cfg = config.load(None, {"OSAPI_SUPERVISE_STATE_DIR": str(state_dir), "OSAPI_NATS_SERVER_TLS_ENABLED": "true"})
    return tls.ensure_generated(cfg)


def tls_context(ca_file: str | Path):
    """The client side of ``generate_tls``: an ``ssl.SSLContext`` trusting that CA only."""
    import ssl

    return ssl.create_default_context(cafile=str(ca_file))


class NatsServer:
    """One real nats-server with JetStream and token auth in its own temp dir.

    ``tls=True``: TLS required from clients, with a CA generated in ``workdir/tls``;
    ``env()`` then points clients at that CA (``OSAPI_NATS_TLS_CA``).
    """

    def __init__(self, workdir: Path, port: int | None = None, token: str | None = None,
                 log: Path | None = None, tls: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.token = token if token is not None else secrets.token_hex(16)
        self.store_dir = self.workdir / "jetstream"
        self.conf = self.workdir / "nats.conf"
        self.log = Path(log) if log is not None else self.workdir / "nats.log"
        self.proc: subprocess.Popen | None = None
        self.tls = generate_tls(self.workdir / "tls") if tls else None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        from osapi import natsd

        self.conf.write_text(
            natsd.render_config(host=self.host, port=self.port, store_dir=self.store_dir, token=self.token,
                                tls=self.tls)
        )
        binary = natsd.find_binary()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(binary), "-c", str(self.conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig=sig)

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def env(self) -> dict[str, str]:
        """OSAPI_* variables that point an osapi process at this server."""
        env = {"OSAPI_NATS_URL": self.url, "OSAPI_NATS_TOKEN": self.token}
        if self.tls:
            env["OSAPI_NATS_TLS_CA"] = self.tls.ca_file
        return env


class OsapiProcess:
    """One osapi program run as ``osapi + [command...]`` in ``workdir``, its output in ``log_path``."""

    command: tuple[str, ...] = ()
    log_name = "osapi.log"

    def __init__(self, workdir: Path, env: dict[str, str], *, osapi: list[str] | None = None,
                 log_path: Path | None = None, name: str = ""):
        self.workdir = Path(workdir)
        self.env = env
        self.osapi = list(osapi) if osapi else [sys.executable, "-m", "osapi"]
        self.log_path = Path(log_path) if log_path is not None else self.workdir / self.log_name
        self.name = name or self.workdir.name
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(env)
        env.setdefault("OSAPI_SUPERVISE_STATE_DIR", str(self.workdir / "state"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        return stop_process(self.proc, timeout=timeout, sig=sig) if self.proc is not None else None

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)


class ApiProcess(OsapiProcess):
    """One ``osapi api server start`` (real Waitress) on ``port`` (a free one by default)."""

    log_name = "api.log"

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None, *,
                 flags: tuple[str, ...] = (), **kw):
        super().__init__(workdir, env, **kw)
        self.port = port or free_port()
        self.flags = tuple(flags)

    def start(self, timeout: float = 20.0, wait: bool = True) -> "ApiProcess":
        """Start it; with ``wait``, until its port listens (``wait_port`` later otherwise)."""
        env = dict(self.env)
        env["OSAPI_API_SERVER_PORT"] = str(self.port)
        env.setdefault("OSAPI_API_SERVER_SECURITY_SIGNING_KEY", SIGNING_KEY)
        self._spawn([*self.osapi, "api", "server", "start", *self.flags], env)
        if wait:
            self.wait_port(timeout)
        return self

    def wait_port(self, timeout: float = 20.0) -> None:
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, token: str | None = None) -> Http:
        return Http(self.port, token=token)

    def wait_ready(self, timeout: float = 20.0, want: int = 200) -> Resp:
        """Poll /health/ready until it answers ``want`` (bounded)."""
        seen = []

        def ready():
            seen[:] = [self.http().get("/health/ready", token=None)]
            return seen[0] if seen[0].status == want else None

        try:
            return wait_for(ready, timeout, f"/health/ready answering {want}", interval=0.1)
        except AssertionError:
            last = seen[0] if seen else None
            raise AssertionError(f"/health/ready did not answer {want} within {timeout}s: "
                                 f"{last and last.status} {last and last.raw!r}\n{self.log()}") from None


class WorkerProcess(OsapiProcess):
    """One ``osapi job worker start`` (the job system's real worker).

    ``hostname``/``labels`` set ``OSAPI_JOB_WORKER_HOSTNAME``/``_LABELS``; ``args``
    are more flags of ``job worker start`` (``--heartbeat 30s``); ``wrap`` is a
    command that runs the worker (``unshare --net -- ...``).
    """

    log_name = "worker.log"

    def __init__(self, workdir: Path, env: dict[str, str], args: tuple[str, ...] = (), *,
                 hostname: str | None = None, labels: str = "", wrap: tuple[str, ...] = (), **kw):
        super().__init__(workdir, env, **kw)
        self.args = tuple(args)
        self.hostname = hostname
        self.labels = labels
        self.wrap = tuple(wrap)

    def start(self) -> "WorkerProcess":
        env = dict(self.env)
        if self.hostname:
            env["OSAPI_JOB_WORKER_HOSTNAME"] = self.hostname
        if self.labels:
            env["OSAPI_JOB_WORKER_LABELS"] = self.labels
        self._spawn([*self.wrap, *self.osapi, "job", "worker", "start", *self.args], env)
        return self


class Stack:
    """nats-server, API processes and worker processes sharing one environment, in ``workdir``.

    ``env``: more ``OSAPI_*`` (or other) variables for every process. ``nats``: an
    already running server to use (not stopped here); else one is started in
    ``workdir/nats``. ``heartbeat``/``grace``: the workers' flags when a test
    needs them fixed. Use as a context manager, or ``start()`` then ``stop()``.
    """

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, *, nats: NatsServer | None = None,
                 heartbeat: str | None = None, grace: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = dict(env or {})
        self.own_nats = nats is None
        self.nats = nats if nats is not None else NatsServer(self.workdir / "nats")
        self.heartbeat = heartbeat
        self.grace = grace
        self.apis: list[ApiProcess] = []
        self.workers: list[WorkerProcess] = []
        self.env: dict[str, str] = {}

    @property
    def procs(self) -> list[OsapiProcess]:
        return [*self.workers, *self.apis]

    def start(self) -> "Stack":
        """nats-server (unless given); ``self.env`` is then the environment every process starts from."""
        if self.own_nats:
            self.nats.start()
        self.env = clean_env(**{**self.nats.env(), **self.extra})
        return self

    def start_worker(self, hostname: str, labels: str = "", *, env: dict | None = None, name: str = "",
                     heartbeat: str | None = None, grace: str | None = None, args: tuple[str, ...] = (),
                     resolv_conf: Path | None = None, wrap: tuple[str, ...] = ()) -> WorkerProcess:
        """One more worker process for ``hostname`` (twins share a hostname; each has its own ``name``).

        ``resolv_conf``: its DNS provider is ``resolv_conf`` on that file (a temp file:
        the host's /etc/resolv.conf is never touched).
        """
        names = {w.name for w in self.workers}
        name = name or (hostname if hostname not in names else f"{hostname}-{len(self.workers)}")
        flags = []
        for flag, value in (("--heartbeat", heartbeat or self.heartbeat), ("--grace", grace or self.grace)):
            if value:
                flags += [flag, value]
        env = {**self.env, **(env or {})}
        if resolv_conf is not None:
            env.update(OSAPI_JOB_WORKER_DNS_PROVIDER="resolv_conf", OSAPI_JOB_WORKER_DNS_RESOLV_CONF=str(resolv_conf))
        worker = WorkerProcess(self.workdir / name, env, (*flags, *args),
                               hostname=hostname, labels=labels, wrap=wrap, name=name)
        self.workers.append(worker)
        return worker.start()

    def start_api(self, name: str = "api", env: dict | None = None, *, port: int | None = None,
                  flags: tuple[str, ...] = (), ready: bool = True, timeout: float = 20.0) -> ApiProcess:
        """One more API process; with ``ready``, once /health/ready answers 200."""
        api = ApiProcess(self.workdir / name, {**self.env, **(env or {})}, port, flags=flags, name=name)
        self.apis.append(api)
        api.start(timeout)
        if ready:
            api.wait_ready(timeout)
        return api

    def wait_workers(self, hostnames, api: ApiProcess | None = None, timeout: float = 30.0,
                     token: str | None = None) -> set[str]:
        """Until ``GET /api/v1/jobs/workers`` lists at least ``hostnames``; the hostnames it lists."""
        http = (api or self.apis[0]).http(token or make_token(["read"], subject="testkit"))
        want = set(hostnames)

        def listed():
            seen = {w["hostname"] for w in http.get("/api/v1/jobs/workers").json.get("workers") or []}
            return seen if seen >= want else None

        return wait_for(listed, timeout, f"workers {sorted(want)} registered", interval=0.1)

    def wait_answering(self, hostname: str, api: ApiProcess | None = None, timeout: float = 30.0) -> None:
        """Until a call to ``hostname`` through the API answers 200 (the worker serves jobs)."""
        http = (api or self.apis[0]).http(make_token(["read"], subject="testkit"))
        wait_for(lambda: http.get(f"/api/v1/system/hostname?target_hostname={hostname}").status == 200, timeout,
                 f"{hostname} answering", interval=0.1)

    def stop_workers(self) -> dict[str, int | None]:
        """SIGTERM every worker at once, then wait for each (KILL after 20 s). Exit codes by name."""
        return dict(zip((w.name for w in self.workers), stop_all(self.workers)))

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-chars:]}" for p in self.procs)

    def stop(self) -> None:
        """Every process by pid (workers and APIs together, then NATS); a log with a traceback is printed."""
        try:
            stop_all(self.procs)
        finally:
            if self.own_nats:
                self.nats.stop()
        for proc in self.procs:
            if "Traceback" in proc.log():
                print(f"--- {proc.name}\n{proc.log()}")

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
