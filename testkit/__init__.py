"""The one test stack, shared by the tests (tests/) and the benchmarks (bench/).

Not part of osapi: neither ``build_pyz.py`` nor ``packaging/build_deb.py`` ships it.
It is imported from the repository root (``python -m bench.run`` runs there; pytest
puts the root on ``sys.path``, see ``pythonpath`` in pyproject.toml). README.md, Tests,
says what is where.
"""

from testkit.http import Http, Resp, recv_all
from testkit.procs import (
    REPO, WaitTimeout, clean_env, free_port, paused, stop_all, stop_process, wait_for, wait_for_port,
)
from testkit.stack import (
    SIGNING_KEY, ApiProcess, NatsServer, OsapiProcess, Stack, WorkerProcess, generate_tls, make_token, tls_context,
)

__all__ = [
    "REPO", "SIGNING_KEY", "ApiProcess", "Http", "NatsServer", "OsapiProcess", "Resp", "Stack", "WaitTimeout",
    "WorkerProcess", "clean_env", "free_port", "generate_tls", "make_token", "tls_context", "paused", "recv_all", "stop_all", "stop_process", "wait_for",
    "wait_for_port",
]
