"""One long-lived NATS connection per process (docs/architecture.md, One NATS connection per process).

``connect`` connects to ``nats_urls(cfg)`` with the token from ``nats_token(cfg)``
and then reconnects on its own forever. Only the *first* connect is bounded
(``first_timeout``) so the caller can report ``NatsUnavailable`` naming the URL;
its message prefers an authorization error over the socket reset the server
sends after it. ``on_closed`` tells the owner that nats-py closed the
connection for good (never called for its own ``close``/``drain``). URLs are
shown with ``redact_url`` everywhere: a token in ``nats.url`` never leaves the
process. ``tls_context`` is the ``ssl.SSLContext`` that verifies a TLS server
against ``nats.tls.ca`` (README "TLS"); nats-py switches to TLS when the
server's INFO requires it, for ``nats://`` and ``tls://`` URLs alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from osapi import config
from osapi.config import redact_url
from osapi.domain.errors import NatsUnavailable

log = logging.getLogger("osapi.job.connection")

CONNECT_TIMEOUT = 2.0  # one TCP + CONNECT attempt
RECONNECT_WAIT = 1.0  # between attempts to the same server
# A server that vanished without closing the socket (its machine died, froze or was cut
# off) is only noticed by unanswered PINGs: after MAX_OUTSTANDING_PINGS + 1 intervals
# (4-6 s) the connection counts as stale and nats-py moves on to the next member of
# nats.url. nats-py's default (120 s x 2) would leave the API answering 503 for minutes.
PING_INTERVAL = 2.0
MAX_OUTSTANDING_PINGS = 2
FIRST_CONNECT_TIMEOUT = 5.0

Callback = Callable[[], Awaitable[None]]


def describe(cfg) -> str:
    """The configured NATS URLs, redacted, for messages."""
    return ", ".join(redact_url(u) for u in config.nats_urls(cfg))


async def connect(cfg, name: str, first_timeout: float = FIRST_CONNECT_TIMEOUT,
                  on_closed: Callback | None = None, on_reconnected: Callback | None = None):
    """A connected ``nats.aio.client.Client`` or ``NatsUnavailable`` after ``first_timeout`` s.

    ``on_closed``: awaited when the connection is closed for good by anything
    but the owner's own ``close()``/``drain()`` (see the module docstring).
    ``on_reconnected``: awaited after each automatic reconnect.
    """
    import nats
    import nats.errors

    urls = config.nats_urls(cfg)
    token = config.nats_token(cfg)
    client = None  # a natsadapter.token_and_user_client when the credential is the token
    last_error: list[BaseException] = []
    connected = asyncio.Event()
    holder: list = []

    async def error_cb(exc: Exception) -> None:
        if _is_auth(exc) and hasattr(client, "send_user") and not client.send_user:
            client.send_user = True  # a users-list server (osapi.fleet.auth): the token is user osapi's password
            return
        if not connected.is_set():
            if not (last_error and _is_auth(last_error[0])) or _is_auth(exc):
                last_error[:] = [exc]  # a refused token stays the reason: see the module docstring
            log.debug("NATS connect attempt failed: %s", exc)
        else:
            log.warning("NATS: %s", exc or type(exc).__name__)

    async def disconnected_cb() -> None:
        if connected.is_set() and not (holder and (holder[0].is_closed or _closing(holder[0]))):
            log.warning("NATS disconnected from %s; reconnecting", describe(cfg))

    async def reconnected_cb() -> None:
        log.warning("NATS reconnected to %s", describe(cfg))
        if on_reconnected is not None:
            await on_reconnected()

    async def closed_cb() -> None:
        if not connected.is_set() or _closing(holder[0]):
            return  # a failed first connect, or the owner's own close()
        nc = holder[0]
        cause = getattr(nc, "last_error", None)
        log.error("the NATS connection to %s was closed for good%s", describe(cfg),
                  f" ({_explain(cause)})" if cause else "")
        if on_closed is not None:
            await on_closed()

    options = dict(
        servers=urls,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT,
        connect_timeout=CONNECT_TIMEOUT,
        ping_interval=PING_INTERVAL,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
        # keep published messages while reconnecting (default 2 MiB is enough for job traffic)
    )
    user, password = cfg.nats.user, cfg.nats.password
    if cfg.nats.creds:
        from osapi.errors import ConfigError

        raise ConfigError("nats.creds: NATS credentials files (JWT) are not used by this osapi",
                          "enroll the host with `osapi client fleet host add`: its bundle sets nats.user and nats.password")
    if user:  # a fleet host (osapi.fleet): its own user, its own inbox subtree
        from osapi.fleet.auth import inbox_prefix

        options.update(user=user, password=password, inbox_prefix=inbox_prefix(user))
    elif token:
        from osapi.fleet.auth import CONTROL_USER
        from osapi.job.natsadapter import token_and_user_client

        options["token"] = token
        client = token_and_user_client(CONTROL_USER)
    tls = tls_context(cfg)
    if tls is not None:
        options["tls"] = tls
    try:
        if client is None:
            nc = await asyncio.wait_for(nats.connect(**options), first_timeout)
        else:
            await asyncio.wait_for(client.connect(**options), first_timeout)
            nc = client
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


def tls_context(cfg):
    """An ``ssl.SSLContext`` trusting only the CA of ``nats.tls.ca`` (else
    ``<state_dir>/secrets/ca.pem``), checking the server's name or address;
    None when there is no such CA (a ``tls://`` URL then uses the system's CAs).
    ``ConfigError`` (exit 2) when the CA cannot be read or is no certificate."""
    from osapi import tls
    from osapi.errors import ConfigError

    found = tls.client_ca(cfg)
    if found is None:
        return None
    import ssl  # here only: a process without a CA never loads it

    text, source = found
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{source} is not a usable CA certificate: {exc}",
                          "set nats.tls.ca to the PEM text of the CA nats-server's certificate is signed by") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


_CLOSING_ATTR = "_osapi_closing"


def _closing(nc) -> bool:
    return bool(getattr(nc, _CLOSING_ATTR, False))


async def close(nc, drain_timeout: float | None = None) -> None:
    """Close (or drain, when ``drain_timeout`` is given) a connection made by ``connect``.

    Marks it first, so ``on_closed`` is not called for a close the owner asked for.
    """
    if nc is None:
        return
    setattr(nc, _CLOSING_ATTR, True)
    if nc.is_closed:
        return
    if drain_timeout is not None:
        try:
            await asyncio.wait_for(nc.drain(), drain_timeout)
            return
        except BaseException:  # noqa: BLE001 - already gone or slow: close hard
            pass
    try:
        await asyncio.wait_for(nc.close(), max(1.0, (drain_timeout or 2.0) / 2))
    except BaseException:  # noqa: BLE001
        pass


def _is_auth(exc: BaseException) -> bool:
    """The server refused our credentials (``-ERR 'Authorization Violation'``)."""
    return "authorization" in str(exc).lower() or type(exc).__name__ == "AuthorizationError"


def _explain(exc: BaseException) -> str:
    if _is_auth(exc):
        return "authorization violation (wrong or missing token)"
    return str(exc).strip() or type(exc).__name__


def _hint(exc: BaseException) -> str:
    if _is_auth(exc):
        return "check nats.token (or <state_dir>/secrets/nats.token) against the server's token"
    if type(exc).__name__.startswith("SSL") or "certificate" in str(exc).lower():
        return "check that nats.tls.ca (or <state_dir>/secrets/ca.pem) is the CA of the server's certificate"
    return "is nats-server running? check nats.url, or start it with `osapi nats server start`"
