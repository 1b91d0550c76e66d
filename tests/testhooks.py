"""Operations that exist only for tests (``operations.enable_test_operations``):
the test stack's plugin, never part of the product (nor of ``osapi.pyz``).

They let the job-system tests make a job slow, fail on chosen hosts, or ask for
retries, without touching the production table (``operations.OPERATIONS``): the
OpenAPI document, the REST routes and the CLI never see them. Test code
registers them in its own process; the worker processes the tests start get
them with ``OSAPITEST_HOOKS=1`` in their environment (and the checkout on
``PYTHONPATH``: this module is ``tests.testhooks``), read once when
``osapi.domain.operations`` is imported (and logged as a warning at start). Without
either (every real deployment) ``operations.get("test.sleep")`` is an unknown
operation like any other. The variable deliberately does not start with
``OSAPI_``: configuration refuses unknown ``OSAPI_*`` variables.

* ``test.sleep`` ``{seconds: 0-60, fail_hosts?: [hostname…]}`` → ``{slept}``;
  raises after sleeping on a host listed in ``fail_hosts``.
* ``test.fail`` ``{message?, hosts?: [hostname…]}`` → raises ``message`` on the
  listed hosts (on every host when ``hosts`` is absent), else ``{ok: true}``.
* ``test.retry`` ``{}`` → always raises ``RetryableError``.
* ``test.record`` (modify) ``{tag: [a-z0-9-]{1,32}}`` → appends ``tag`` and a
  newline to the file named by ``OSAPITEST_RUNS`` in the worker's environment
  (nothing without it): tests see how often a modify job really ran.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from osapi.domain.errors import RetryableError
from osapi.domain.operations import MODIFY, QUERY, InvalidData, Operation, _object

RUNS_ENV = "OSAPITEST_RUNS"
TAG = re.compile(r"[a-z0-9-]{1,32}")

def _hosts(data: dict, key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise InvalidData(f"{key} must be a list of hostnames")
    return value


def sleep_data(data: Any) -> dict:
    data = _object(data, {"seconds", "fail_hosts"})
    seconds = data.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 60:
        raise InvalidData(f"seconds must be a number from 0 to 60, got {seconds!r}")
    out: dict[str, Any] = {"seconds": seconds}
    if _hosts(data, "fail_hosts") is not None:
        out["fail_hosts"] = data["fail_hosts"]
    return out


def fail_data(data: Any) -> dict:
    data = _object(data, {"message", "hosts"})
    out: dict[str, Any] = {"message": str(data.get("message") or "test failure")}
    if _hosts(data, "hosts") is not None:
        out["hosts"] = data["hosts"]
    return out


def no_data(data: Any) -> dict:
    return _object(data, set())


def record_data(data: Any) -> dict:
    data = _object(data, {"tag"})
    tag = data.get("tag")
    if not isinstance(tag, str) or not TAG.fullmatch(tag):
        raise InvalidData(f"tag must be 1 to 32 of a-z, 0-9 and -, got {tag!r}")
    return {"tag": tag}


def record(data: dict, host) -> dict:
    path = os.environ.get(RUNS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as runs:
            runs.write(data["tag"] + "\n")
    return {"recorded": data["tag"]}


def sleep(data: dict, host) -> dict:
    time.sleep(data["seconds"])
    if host.hostname in data.get("fail_hosts", ()):
        raise RuntimeError(f"test.sleep told to fail on {host.hostname}")
    return {"slept": data["seconds"]}


def fail(data: dict, host) -> dict:
    hosts = data.get("hosts")
    if hosts is None or host.hostname in hosts:
        raise RuntimeError(data["message"])
    return {"ok": True}


def retry(data: dict, host) -> dict:
    raise RetryableError("test.retry always asks to be retried")


OPERATIONS = {
    op.type: op
    for op in (
        Operation("test.sleep", QUERY, "tests.testhooks:sleep", sleep_data, "tests only: sleep"),
        Operation("test.fail", QUERY, "tests.testhooks:fail", fail_data, "tests only: fail on hosts"),
        Operation("test.retry", QUERY, "tests.testhooks:retry", no_data, "tests only: always retry"),
        Operation("test.record", MODIFY, "tests.testhooks:record", record_data, "tests only: record a run"),
    )
}
