"""Serving the API with Waitress, in the foreground, until SIGTERM or SIGINT.

``ApiServer`` binds first (so a taken port fails fast with exit 2 and nothing
else started), then starts the NATS bridge, then serves. Waitress refuses
bodies over 1 MiB itself (``max_request_body_size``) and its own errors --
413, a malformed HTTP request -- are sent in the API's JSON envelope, not as
Waitress's plain text. SIGTERM/SIGINT stop accepting, let running requests
finish (bounded), drain NATS and return normally (exit 0).
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import threading
import time

from osapi import logs
from osapi.api.domain import MAX_SYNC_WAITS
from osapi.api.events import MAX_EVENT_STREAMS
from osapi.api.errors import envelope
from osapi.api.routing import MAX_BODY
from osapi.errors import ConfigError

log = logging.getLogger("osapi.api")
access_log = logging.getLogger("osapi.api.access")

# Threads. A WSGI handler must return from its thread, so a synchronous endpoint
# holds one while it waits for the workers -- up to job_timeout when a host hangs.
# With 8 threads, 8 calls to one hung host made /health wait for job_timeout.
# Now: at most MAX_SYNC_WAITS calls wait at once (one more is a 503 with
# Retry-After at once, domain.WaitSlots), and SPARE_THREADS more threads are
# never taken by a wait, so /health, the job queue and calls to other hosts
# still answer. An idle thread costs about 16 KiB of RSS (measured: 8 -> 272
# threads, +4.8 MiB); a smaller threading.stack_size would only save address
# space, not memory, so the default stack stays. bench/hung.py measures it.
# An event stream (GET /jobs/{id}/events) holds a thread for as long as it is
# open: MAX_EVENT_STREAMS more threads are theirs (one more stream is a 503 with
# Retry-After, events.py), so streams starve neither synchronous calls nor the
# spare threads. bench/events.py measures /health with 200 streams open.
SPARE_THREADS = 8  # for everything that does not wait for workers
THREADS = MAX_SYNC_WAITS + MAX_EVENT_STREAMS + SPARE_THREADS
# Open connections Waitress accepts (its default, 100, would leave a probe in the
# listen backlog once 100 calls wait): every thread busy plus as many idle
# keep-alive connections as calls may wait; under the usual 1024 open files.
CONNECTION_LIMIT = THREADS + MAX_SYNC_WAITS
# Waitress reads one request ahead on a busy connection, so it notices at once
# when a client closes it: a long request (an event stream) then ends promptly
# instead of at its next write (environ["waitress.client_disconnected"]).
REQUEST_LOOKAHEAD = 1
CHANNEL_TIMEOUT = 120  # seconds an idle connection stays open
SHUTDOWN_GRACE = 5.0  # seconds running requests get to finish after SIGTERM
LOOP_TIMEOUT = 0.25  # seconds per poll round; bounds how late a stop signal is noticed


def _json_error_task():
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        """Waitress's own errors (413, 400 for broken HTTP, 431) in the API's envelope."""

        def execute(self):
            err = self.request.error
            if err.code == 413:
                error, details = "request body too large", f"the limit is {MAX_BODY} bytes (1 MiB)"
            else:
                error, details = err.reason.lower(), str(err.body)
            body = json.dumps(envelope(err.code, error, details)).encode("utf-8")
            self.status = f"{err.code} {err.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)
            clean = logs.request_value  # a broken request's values cannot split or forge the line
            access_log.info("request", extra={"fields": {
                "method": clean(getattr(self.request, "command", None) or "-"),
                "path": clean(getattr(self.request, "path", None) or "-"),
                "status": err.code,
                "error": clean(details),
                "remote": clean(self.channel.addr[0] if self.channel.addr else "-"),
            }})

    return JsonErrorTask


def _json_channel():
    from waitress.channel import HTTPChannel

    class JsonChannel(HTTPChannel):
        error_task_class = _json_error_task()

    return JsonChannel


class ApiServer:
    """One API process: Waitress + the NATS bridge."""

    def __init__(self, cfg, threads: int = THREADS):
        from waitress import create_server
        from waitress.server import BaseWSGIServer

        from osapi import config
        from osapi.api.app import create_app
        from osapi.api.bridge import NatsBridge

        self.cfg = cfg
        key = config.signing_key(cfg)  # ConfigError (exit 2) before anything else starts
        self.bridge = NatsBridge(cfg)
        self.app = create_app(cfg, self.bridge, key)
        host, port = cfg.api.server.host, cfg.api.server.port
        try:
            self.server = create_server(
                self.app,
                host=host,
                port=port,
                threads=threads,
                connection_limit=CONNECTION_LIMIT,
                ident="osapi",
                max_request_body_size=MAX_BODY + 1,  # waitress refuses at >= this size
                channel_timeout=CHANNEL_TIMEOUT,
                channel_request_lookahead=REQUEST_LOOKAHEAD,
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {_reason(exc)}",
                _hint(exc),
            ) from None
        self._signal: int | None = None
        self._stop = threading.Event()
        channel = _json_channel()
        for dispatcher in list(self.server_map().values()):
            if isinstance(dispatcher, BaseWSGIServer):
                dispatcher.channel_class = channel

    def server_map(self) -> dict:
        return getattr(self.server, "map", None) or getattr(self.server, "_map", {})

    @property
    def addresses(self) -> list[tuple[str, int]]:
        listen = getattr(self.server, "effective_listen", None)
        if listen:
            return [(h, int(p)) for h, p in listen]
        return [(self.server.effective_host, int(self.server.effective_port))]

    def urls(self) -> list[str]:
        return [f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p in self.addresses]

    def serve(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop()``) and shut down cleanly.

        The signal handler only records the signal: the serving loop polls in
        short rounds and notices it within ``LOOP_TIMEOUT``. Raising from the
        handler instead could interrupt waitress while it holds a lock.
        """
        from waitress import wasyncore

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        self.bridge.start()
        log.info("API listening on %s", ", ".join(self.urls()),
                 extra={"fields": {"nats": ", ".join(self.bridge.urls), "threads": self.server.adj.threads}})
        try:
            serving_map = self.server_map()
            while self._signal is None and not self._stop.is_set() and serving_map:
                wasyncore.loop(timeout=LOOP_TIMEOUT, map=serving_map,
                               use_poll=self.server.adj.asyncore_use_poll, count=1)
        finally:
            if self._signal is not None:
                log.info("received %s; stopping", signal.Signals(self._signal).name)
            try:
                self.shutdown()  # a second signal meanwhile changes nothing: shutdown is bounded
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _busy(self) -> bool:
        """Requests queued, running, or with answers not yet sent."""
        from waitress.channel import HTTPChannel

        tasks = self.server.task_dispatcher
        if tasks.queue or tasks.active_count:
            return True
        return any(isinstance(c, HTTPChannel) and (c.requests or c.total_outbufs_len)
                   for c in list(self.server_map().values()))

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def stop(self) -> None:
        """Ask ``serve()`` (in another thread) to return."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop accepting, finish running requests (bounded), drain NATS."""
        from waitress import wasyncore

        serving_map = self.server_map()
        for dispatcher in list(serving_map.values()):
            if getattr(dispatcher, "accepting", False):
                try:  # only the listening socket; the trigger stays for the running tasks
                    wasyncore.dispatcher.close(dispatcher)
                except Exception:
                    pass
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self._busy() and time.monotonic() < deadline:
            # keep the loop turning so answers of running requests are sent
            wasyncore.loop(timeout=0.05, map=serving_map, use_poll=self.server.adj.asyncore_use_poll, count=1)
        try:
            self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=SHUTDOWN_GRACE)
        except Exception as exc:
            log.debug("waitress shutdown: %s", exc)
        for dispatcher in list(self.server_map().values()):
            try:
                dispatcher.close()
            except Exception:
                pass
        self.bridge.close(timeout=2.0)
        log.info("API stopped")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not available on this host"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


def _hint(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "stop the other process, or choose another port with api.server.port / OSAPI_API_SERVER_PORT"
    if exc.errno == errno.EACCES:
        return "ports below 1024 need root; choose another api.server.port"
    return "check api.server.host and api.server.port"
