"""What every seam of the worker shares: the log, times, quiet calls, short error texts."""

from __future__ import annotations

import logging
import time

from osapi.job import status as st

log = logging.getLogger("osapi.job.worker")  # one logger for the whole worker, whichever seam speaks

MAX_PAUSE = 5.0  # longest wait between retries while NATS is away


def now() -> str:
    return st.rfc3339(time.time_ns())


async def quiet(coro) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001
        log.debug("ignored: %s", exc)


def describe(exc: BaseException) -> str:
    return getattr(exc, "description", None) or str(exc) or type(exc).__name__
