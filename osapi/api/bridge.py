"""The API's one NATS connection: an asyncio loop in a background thread.

Waitress runs handlers in ordinary threads; nats-py is asyncio. The bridge owns
one event loop in a daemon thread, connects once (``osapi.job.connection``),
sets up the stream and buckets (``JobClient.setup``) and keeps the
``JobClient``. A handler hands it a coroutine with ``call`` and waits for the
answer with a bound -- no connection per request.

NATS may be down when the API starts: the bridge keeps trying in the background
(with a growing pause, at most ``RETRY_MAX`` seconds) and, until it succeeds,
``call`` answers 503 at once. Once connected, nats-py reconnects by itself; while
it is disconnected ``call`` answers 503 too instead of letting requests pile up.
If NATS closes the connection for good (nats-py does on some server errors, e.g.
a rotated token), the bridge drops its client and connects again as at start.
URLs are kept redacted (``redact_url``): no token in logs, 503s or /health.

The bridge also runs the audit log's publisher (``audit.AuditWriter``), the
rollout driver (``osapi.job.rollout.RolloutDriver``: the rollouts whose lease
it holds or takes over), the dead-letter loop (``osapi.worker.deadletter``: one
shared consumer, so each dead job is handled once whether an API process or a
worker takes it; a fleet of enrolled hosts has no worker that runs it) and, on a
control-plane node, the fleet users renderer on its loop, and hands
``run_observer`` (the metrics) to each ``JobClient`` it makes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable

from osapi import config as configuration
from osapi.config import redact_url
from osapi.api.errors import ApiError, unavailable
from osapi.domain.errors import NatsUnavailable
from osapi.retry import Backoff, GaveUp, retry, sampled

log = logging.getLogger("osapi.api.nats")

RETRY_MIN = 0.5
RETRY_MAX = 5.0
CONNECTION_NAME = "osapi-api"


class NatsBridge:
    def __init__(self, cfg, name: str = CONNECTION_NAME):
        self.cfg = cfg
        self.name = name
        # for messages, logs and /health only: never the credentials a URL may carry
        self.urls = [redact_url(u) for u in configuration.nats_urls(cfg)]
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="nats-bridge", daemon=True)
        self._connector: concurrent.futures.Future | None = None
        self._reconnector: asyncio.Future | None = None  # after NATS closed the connection (on the loop)
        self._rollouts: asyncio.Future | None = None  # the rollout driver (osapi/job/rollout.py) on the loop
        self._fleet: asyncio.Future | None = None  # this node's fleet users renderer (osapi/fleet/renderer.py)
        self._dead_letters: asyncio.Future | None = None  # the dead-letter loop (osapi/worker/deadletter.py)
        self._dead_letters_stop: asyncio.Event | None = None
        self.nc = None
        self.client = None  # osapi.job.client.JobClient once set up
        self.last_error: str | None = "not connected yet"
        self._stopping = False
        self._setup_at_reconnects = 0  # nc.stats["reconnects"] when setup() last ran
        self._setup_lock: asyncio.Lock | None = None
        from osapi.api.audit import AuditWriter

        self.audit = AuditWriter(self)
        self.run_observer = None  # JobClient.observer: the API's metrics (app.Api sets it)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "NatsBridge":
        self._thread.start()
        self.loop.call_soon_threadsafe(self.audit.start)
        self._connector = asyncio.run_coroutine_threadsafe(self._connect_forever(), self.loop)
        return self

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _connect_forever(self) -> None:
        attempt = 0

        async def connect_once() -> None:
            nonlocal attempt
            attempt += 1
            from osapi.job.client import JobClient
            from osapi.job.connection import connect

            if self.nc is None or self.nc.is_closed:
                self.nc = await connect(self.cfg, self.name, on_closed=self._closed)
            client = JobClient(self.nc, self.cfg)
            client.observer = self.run_observer
            await client.setup()
            self._setup_at_reconnects = self.nc.stats.get("reconnects", 0)
            self._setup_lock = asyncio.Lock()
            self.client = client
            self._drive_rollouts(client)
            self._render_fleet(client)
            self._handle_dead_letters(client)
            self.last_error = None
            log.info("connected to NATS at %s", ", ".join(self.urls),
                     extra={"fields": {"attempts": attempt}})
            self.audit.wake()  # entries queued while NATS was away

        logged = None  # the reason last logged as a warning: a new one is logged at once

        def not_ready(attempt: int, exc: BaseException, pause: float) -> None:  # keep serving (503) and keep trying
            nonlocal logged
            if isinstance(exc, NatsUnavailable):
                self.last_error = str(exc)
            else:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            level = logging.WARNING if sampled(attempt, 20) or self.last_error != logged else logging.DEBUG
            if level == logging.WARNING:
                logged = self.last_error
            log.log(level, "NATS at %s not ready (%s); retrying in %.1fs",
                    ", ".join(self.urls), self.last_error, pause)

        try:
            await retry(connect_once, Backoff(RETRY_MIN, RETRY_MAX), stop=lambda: self._stopping, notify=not_ready)
        except GaveUp:
            pass  # closing

    def _render_fleet(self, client) -> None:
        """Keep this node's nats-server users equal to the enrollment bucket (when it runs with osapi's users file)."""
        from osapi.fleet import renderer

        if self._fleet is not None:
            self._fleet.cancel()
        local = renderer.local(self.cfg)
        self._fleet = asyncio.ensure_future(local.run(client.store)) if local is not None else None

    def _handle_dead_letters(self, client) -> None:
        """Run the dead-letter loop on ``client``'s store (the one of the previous client stops)."""
        from osapi.worker.deadletter import DeadLetterLoop

        if self._dead_letters is not None:
            self._dead_letters_stop.set()
            self._dead_letters.cancel()
        self._dead_letters_stop = asyncio.Event()
        self._dead_letters = asyncio.ensure_future(DeadLetterLoop(client.store, self.cfg, self._dead_letters_stop).run())

    def _drive_rollouts(self, client) -> None:
        """Run a ``rollout.RolloutDriver`` for ``client`` (the one of the previous client stops)."""
        from osapi.job.rollout import RolloutDriver

        if self._rollouts is not None:
            self._rollouts.cancel()
        driver = RolloutDriver(client.store, self.cfg)
        client.rollout_driver = driver
        self._rollouts = asyncio.ensure_future(driver.run())

    async def _closed(self) -> None:
        """NATS closed the connection for good (nats-py does on some server errors): connect anew."""
        if self._stopping:
            return
        self.client = None
        self.last_error = "NATS closed the connection (see the log); connecting again"
        self._reconnector = asyncio.ensure_future(self._connect_forever())

    def close(self, timeout: float = 2.0) -> None:
        """Store the queued audit entries, drain the connection, stop the loop; returns within about ``3 * timeout`` s."""
        self._stopping = True
        if not self._thread.is_alive():
            return
        if self._connector is not None:
            self._connector.cancel()

        async def shutdown() -> None:
            from osapi.job.connection import close

            if self._reconnector is not None:
                self._reconnector.cancel()
            if self._rollouts is not None:
                self._rollouts.cancel()
            if self._fleet is not None:
                self._fleet.cancel()
            if self._dead_letters is not None:
                self._dead_letters_stop.set()
                self._dead_letters.cancel()
            self.audit.cancel()
            if self.connected:
                await self.audit.flush(timeout)  # the entries of the last requests
            # drain, or close hard when already gone or slow; marked as our own close
            await close(self.nc, drain_timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout * 2.5 + 0.5)
        except BaseException as exc:
            log.debug("NATS shutdown: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout / 2)

    # ------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        nc = self.nc
        return self.client is not None and nc is not None and nc.is_connected

    def problem(self) -> str:
        """Why the bridge cannot serve right now, for 503 details and health."""
        where = ", ".join(self.urls)
        if self.client is None:
            why = self.last_error or "connecting"
            if why.startswith("cannot connect to NATS"):  # NatsUnavailable: names the URL, the cause and what to do
                return why
            return f"NATS at {where}: {why}; is nats-server running?"
        nc = self.nc
        if nc is not None and nc.is_reconnecting:
            return f"lost the connection to NATS at {where}; reconnecting"
        if nc is not None and nc.is_closed:
            return f"the connection to NATS at {where} is closed"
        return f"not connected to NATS at {where}"

    @property
    def connected_url(self) -> str | None:
        nc = self.nc
        url = getattr(nc, "connected_url", None) if nc is not None else None
        if url is None:
            return None
        # never the credentials
        return f"{url.scheme}://{url.hostname}:{url.port}"

    # ------------------------------------------------------------ calls

    def call(self, work: Callable[[Any], Awaitable[Any]], timeout: float,
             on_timeout: ApiError | None = None) -> Any:
        """Run ``work(job_client)`` on the loop and wait at most ``timeout`` seconds.

        503 when not connected; ``on_timeout`` (default 503) when the bound passes.
        Exceptions from ``work`` propagate to the caller unchanged.
        """
        client = self.client
        if client is None or not self.connected:
            raise unavailable(self.problem())
        future = asyncio.run_coroutine_threadsafe(self._after_setup(client, work), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if not future.cancel() and future.done():
                return future.result()  # it finished just as the wait ran out: its answer stands
            raise on_timeout or unavailable(
                f"NATS at {', '.join(self.urls)} did not answer within {timeout:g}s"
            ) from None

    async def _setup_after_reconnect(self) -> None:
        """Set the streams and buckets up again if NATS was reconnected since the last time.

        A nats-server that comes back with an empty store (a new machine, a wiped
        directory) has no stream or buckets; ``setup()`` is idempotent and cheap,
        and runs once per reconnect, not per request.
        """
        client, nc = self.client, self.nc
        if client is None or nc is None or self._setup_lock is None:
            return
        reconnects = nc.stats.get("reconnects", 0)
        if reconnects == self._setup_at_reconnects:
            return
        async with self._setup_lock:
            if reconnects != self._setup_at_reconnects:
                await client.setup()
                self._setup_at_reconnects = reconnects
                log.info("NATS reconnected: job streams and buckets checked")

    async def _after_setup(self, client, work):
        await self._setup_after_reconnect()
        return await work(client)

    async def _raw_after_setup(self, nc, work):
        await self._setup_after_reconnect()
        return await work(nc)

    def call_raw(self, work: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
        """Like ``call`` but hands ``work`` the NATS connection (health checks)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise unavailable(self.problem())
        future = asyncio.run_coroutine_threadsafe(self._raw_after_setup(nc, work), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise unavailable(f"NATS at {', '.join(self.urls)} did not answer within {timeout:g}s") from None
