"""One long-lived NATS connection per process (STYLE.md: nats-py, asyncio-first).

``connect`` connects to ``nats_urls(cfg)`` with the token from ``nats_token(cfg)``
and then reconnects on its own forever (``max_reconnect_attempts=-1``): a NATS
restart costs the process a few failed requests, never its connection object.
Only the *first* connect is bounded (``first_timeout``, default 5 s) so a caller
can report ``NatsUnavailable`` naming the URL instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging

from osapi import config
from osapi.job.errors import NatsUnavailable

log = logging.getLogger("osapi.job.connection")

CONNECT_TIMEOUT = 2.0  # one TCP + CONNECT attempt
RECONNECT_WAIT = 1.0  # between attempts to the same server
FIRST_CONNECT_TIMEOUT = 5.0


def _redact(url: str) -> str:
    """nats://user:secret@host:4222 → nats://host:4222 (tokens never reach logs)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def describe(cfg) -> str:
    return ", ".join(_redact(u) for u in config.nats_urls(cfg))


async def connect(cfg, name: str, first_timeout: float = FIRST_CONNECT_TIMEOUT):
    """A connected ``nats.aio.client.Client`` or ``NatsUnavailable`` after ``first_timeout`` s."""
    import nats
    import nats.errors

    urls = config.nats_urls(cfg)
    token = config.nats_token(cfg)
    last_error: list[BaseException] = []
    connected = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        if not connected.is_set():
            last_error[:] = [exc]
            log.debug("NATS connect attempt failed: %s", exc)
        else:
            log.warning("NATS: %s", exc or type(exc).__name__)

    holder: list = []

    async def disconnected_cb() -> None:
        if connected.is_set() and not (holder and holder[0].is_closed):  # not our own close()
            log.warning("NATS disconnected from %s; reconnecting", describe(cfg))

    async def reconnected_cb() -> None:
        log.warning("NATS reconnected to %s", describe(cfg))

    options = dict(
        servers=urls,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT,
        connect_timeout=CONNECT_TIMEOUT,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        # keep published messages while reconnecting (default 2 MiB is enough for job traffic)
    )
    if token:
        options["token"] = token
    try:
        nc = await asyncio.wait_for(nats.connect(**options), first_timeout)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        cause = last_error[0] if last_error else exc
        raise NatsUnavailable(
            f"cannot connect to NATS at {describe(cfg)} within {first_timeout:g}s: {_explain(cause)}",
            _hint(cause),
        ) from None
    holder.append(nc)
    connected.set()
    log.debug("connected to NATS at %s as %s", describe(cfg), name)
    return nc


def _explain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "authorization" in text.lower():
        return "authorization violation (wrong or missing token)"
    return text


def _hint(exc: BaseException) -> str:
    if "authorization" in str(exc).lower():
        return "check nats.token (or <state_dir>/secrets/nats.token) against the server's token"
    return "is nats-server running? check nats.url, or start it with `osapi nats server start`"
