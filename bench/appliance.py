"""A real osapi appliance on loopback, started and stopped by pid.

Two ways to run it, reported in results.md:

* ``pyz``: ``python3 build_pyz.py`` builds ``osapi.pyz``, then
  ``python3 osapi.pyz supervise --workers N`` runs nats, api and worker(s) with a
  private state dir and free ports: exactly what an operator runs.
* ``source``: the same three programs started one by one from the source tree
  with the tests' own stack (testkit/: nats-server with the configuration
  ``osapi.natsd.render_config`` writes, ``ApiProcess``, ``WorkerProcess``),
  used while the pyz/supervise are not there yet, or with ``--source``.

Extra worker processes with their own hostnames (the broadcast benchmark) are
started with ``add_workers`` and pointed at the appliance's NATS.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from testkit import (
    REPO, ApiProcess, Http, NatsServer, WorkerProcess, clean_env, free_port, stop_process, wait_for, wait_for_port,
)


class NotAvailable(RuntimeError):
    """A part of osapi the benchmark needs has not landed (message says which)."""


def base_env() -> dict:
    """The environment every process of the bench starts with.

    No ``OSAPI_*`` from the caller (the bench sets what it means), and no
    ``PYTHONDONTWRITEBYTECODE``: a developer shell or CI may set it, but on a real
    host Python caches compiled modules, and without that cache every osapi
    process compiles all of its modules at each start (measured: +10 MiB RSS per
    process and a slower start). The figures are for a real host.
    """
    return clean_env(pythonpath=False, bytecode_flag=False)


def osapi_commands() -> set[str]:
    """The top-level commands ``python -m osapi --help`` lists (to know what has landed)."""
    out = subprocess.run([sys.executable, "-m", "osapi", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=base_env())
    words = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and line.startswith("    ") and not line.startswith("     "):
            words.add(parts[0])
    return words


def pyz_available() -> bool:
    return (REPO / "build_pyz.py").is_file() and "supervise" in osapi_commands()


_PYZ_CACHE: dict[str, Path] = {}


def build_pyz(outdir: Path, python3: str) -> Path:
    """``python3 build_pyz.py -o outdir/osapi.pyz`` once per bench run."""
    key = str(outdir)
    if key in _PYZ_CACHE and _PYZ_CACHE[key].is_file():
        return _PYZ_CACHE[key]
    target = outdir / "osapi.pyz"
    outdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(REPO / "build_pyz.py"), "-o", str(target)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=base_env())
    if proc.returncode != 0 or not target.is_file():
        raise NotAvailable(f"build_pyz.py failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    _PYZ_CACHE[key] = target
    return target


class Appliance:
    """nats + api + N workers of one host, on free loopback ports, in ``workdir``."""

    def __init__(self, workdir: Path, *, mode: str = "source", workers: int = 1, python3: str = "python3",
                 pyz: Path | None = None, api: bool = True, hostname: str = "bench-host",
                 extra_env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.workers = workers
        self.python3 = python3
        self.pyz = pyz
        self.with_api = api
        self.hostname = hostname
        self.extra_env = dict(extra_env or {})
        self.api_port = free_port()
        self.nats_port = free_port()
        self.state_dir = self.workdir / "state"
        self.procs: list[subprocess.Popen] = []   # every process started, stopped in reverse
        self.root: subprocess.Popen | None = None  # supervise (pyz mode)
        self.api_proc: subprocess.Popen | None = None
        self.nats_proc: subprocess.Popen | None = None
        self.worker_procs: list[subprocess.Popen] = []
        self.token = ""
        self.nats_token = ""
        self.signing_key = ""

    # ------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def env(self, **more: str) -> dict:
        """The environment an osapi process of this appliance runs with."""
        env = base_env()
        env.update({
            "OSAPI_SUPERVISE_STATE_DIR": str(self.state_dir),
            "OSAPI_API_SERVER_PORT": str(self.api_port),
            "OSAPI_API_CLIENT_URL": self.url,
            "OSAPI_NATS_SERVER_PORT": str(self.nats_port),
            "OSAPI_JOB_WORKER_HOSTNAME": self.hostname,
        })
        if self.mode == "source":
            env.update({
                "OSAPI_NATS_URL": self.nats_url,
                "OSAPI_NATS_TOKEN": self.nats_token,
                "OSAPI_API_SERVER_SECURITY_SIGNING_KEY": self.signing_key,
                "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN": self.token,
            })
        env.update(self.extra_env)
        env.update(more)
        return env

    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        self._log(name).parent.mkdir(exist_ok=True)
        with open(self._log(name), "ab") as log:
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def _worker(self, name: str, env: dict, args: tuple[str, ...] = ()) -> subprocess.Popen:
        worker = WorkerProcess(self.workdir, env, args, osapi=self.osapi_argv(), log_path=self._log(name)).start()
        self.procs.append(worker.proc)
        self.worker_procs.append(worker.proc)
        return worker.proc

    def osapi_argv(self, *args: str) -> list[str]:
        if self.mode == "pyz":
            return [self.python3, str(self.pyz), *args]
        return [sys.executable, "-m", "osapi", *args]

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> "Appliance":
        try:
            if self.mode == "pyz":
                self._start_pyz(timeout)
            else:
                self._start_source(timeout)
            if self.with_api:
                self.wait_ready(timeout)
            return self
        except BaseException:
            self.stop()
            raise

    def _start_source(self, timeout: float) -> None:
        from osapi import authtoken

        self.signing_key = secrets.token_hex(32)
        self.token = authtoken.generate(self.signing_key, ["admin"], "bench", 7 * 86400)
        nats = NatsServer(self.workdir / "nats", port=self.nats_port, log=self._log("nats"))
        self.procs.append(nats.start(timeout).proc)
        self.nats_proc, self.nats_token = nats.proc, nats.token
        api = None
        if self.with_api:
            api = ApiProcess(self.workdir, self.env(), self.api_port, osapi=self.osapi_argv(),
                             log_path=self._log("api")).start(timeout, wait=False)
            self.procs.append(api.proc)
            self.api_proc = api.proc
        for i in range(self.workers):
            self._worker(f"worker-{i}", self.env())
        if api is not None:
            api.wait_port(timeout)

    def _start_pyz(self, timeout: float) -> None:
        programs = ["nats"] + (["api"] if self.with_api else []) + (["worker"] if self.workers else [])
        env = self.env(OSAPI_SUPERVISE_PROGRAMS=",".join(programs))
        self.root = self._spawn("supervise", self.osapi_argv("supervise", "--workers", str(max(1, self.workers))),
                                env)
        secrets_dir = self.state_dir / "secrets"

        def written() -> bool:
            if self.root.poll() is not None:
                raise RuntimeError(f"supervise exited with {self.root.returncode}; see {self.workdir}/logs")
            return (secrets_dir / "admin.token").is_file() and (secrets_dir / "nats.token").is_file()

        wait_for(written, timeout, f"supervise writing {secrets_dir}/admin.token and nats.token")
        self.token = (secrets_dir / "admin.token").read_text().strip()
        self.nats_token = (secrets_dir / "nats.token").read_text().strip()
        self.signing_key = (secrets_dir / "signing_key").read_text().strip()
        wait_for_port("127.0.0.1", self.nats_port, timeout, self.root)
        if self.with_api:
            wait_for_port("127.0.0.1", self.api_port, timeout, self.root)

    def wait_ready(self, timeout: float) -> None:
        """/health/ready answers 200 and the workers are in the registry."""
        def ready():
            try:
                return self.request("GET", "/health/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"{self.url}/health/ready answering 200", interval=0.1)
        if self.workers:
            self.wait_workers({self.hostname}, timeout)

    def wait_workers(self, hostnames: set[str], timeout: float) -> None:
        def registered():
            status, body = self.request("GET", "/api/v1/jobs/workers")
            return status == 200 and hostnames <= {w.get("hostname") for w in body.get("workers", [])}

        wait_for(registered, max(timeout, 1.0), f"workers {sorted(hostnames)} registered", interval=0.1)

    def add_workers(self, hostnames: list[str], args: tuple[str, ...] = ()) -> list[subprocess.Popen]:
        """One more worker process per hostname, on this appliance's NATS (``args``: more worker flags)."""
        env = self.env()
        if self.mode == "pyz":
            env.update({"OSAPI_NATS_URL": self.nats_url, "OSAPI_NATS_TOKEN": self.nats_token})
        return [self._worker(f"worker-{name}", dict(env, OSAPI_JOB_WORKER_HOSTNAME=name), args)
                for name in hostnames]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                stop_process(proc, timeout=15)
            except Exception:  # noqa: BLE001 - best effort; the next one must still be stopped
                pass
        self.procs.clear()

    def __enter__(self) -> "Appliance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers

    def pids(self) -> list[int]:
        """The whole tree: supervise and its descendants, or the processes started here."""
        import psutil

        roots = [self.root] if self.root is not None else self.procs
        pids: list[int] = []
        for proc in roots:
            if proc.poll() is not None:
                continue
            pids.append(proc.pid)
            try:
                pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return sorted(set(pids))

    def api_rss(self) -> int | None:
        """RSS of the API process (its threads' stacks included), in bytes; None when it is not found."""
        import psutil

        for pid in self.pids():
            try:
                proc = psutil.Process(pid)
                if "api server start" in " ".join(proc.cmdline()):
                    return proc.memory_info().rss
            except psutil.Error:
                continue
        return None

    def request(self, method: str, path: str, body=None, token: str | None = "default", timeout: float = 30.0):
        """One HTTP call: (status, decoded JSON or text)."""
        return Http(self.api_port, token=self.token if token == "default" else token).call(
            method, path, body, timeout=timeout)


def logs_tail(app: Appliance, lines: int = 20) -> str:
    out = []
    for path in sorted((app.workdir / "logs").glob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


def which_python3() -> str:
    """The bare system interpreter that runs osapi.pyz: /usr/bin/python3 when there.

    ``python3`` on PATH may be a version-manager shim (a shell script that adds
    tens of milliseconds to every start); the figure is about osapi, not the shim.
    """
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    found = shutil.which("python3")
    if found:
        real = subprocess.run([found, "-c", "import sys; print(sys.executable)"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        return real or found
    return sys.executable
