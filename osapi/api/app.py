"""The WSGI application: Bottle routes wrapped in access logging and CORS.

``create_app(cfg, bridge)`` registers every ``Route`` (system, network, jobs,
health) on a Bottle app. Each route's callback authenticates (when the route
has a scope), builds a ``Call`` (query and body validation), runs the handler
and turns whatever happens into JSON: a ``Reply``, an ``ApiError`` envelope, or
-- for a bug -- a 500 envelope while the traceback goes to the log only.

Around Bottle sits a thin WSGI layer that answers ``OPTIONS`` (CORS preflight),
adds CORS headers to every answer for an allowed origin, and after each request
writes one access log line (method, path, status, duration, token subject --
never the token; the request's values escaped, so a request cannot add a line),
counts it in the metrics (``metrics.py``, by route pattern) and, for ``/api/v1…``
and ``/health/status``, queues one audit entry (``audit.py``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import bottle

from osapi import logs
from osapi.api import audit, errors
from osapi.api.auth import Authenticator
from osapi.api.cors import CorsPolicy
from osapi.api.domain import WaitSlots
from osapi.api.errors import ApiError
from osapi.api.metrics import UNMATCHED
from osapi.api.routing import API_PREFIX, Call, Route

log = logging.getLogger("osapi.api")
access_log = logging.getLogger("osapi.api.access")

JSON_TYPE = "application/json"
SUBJECT_KEY = "osapi.subject"
ROUTE_KEY = "osapi.route"  # the matched route's pattern, for the metrics' ``route`` label


def all_routes(cfg=None) -> list[Route]:
    """Every route the API serves, in the order of the document (``cfg``: whether /metrics is public)."""
    from osapi.api import domain, fleet, health, jobs, metrics

    return [*domain.routes(), *jobs.routes(), *fleet.routes(), *audit.routes(), *health.routes(),
            *metrics.routes(cfg)]


@dataclass(frozen=True)
class Settings:
    job_timeout: float  # seconds a synchronous endpoint waits for workers
    quiet_period: float  # broadcast fallback (docs/jobs.md, Synchronous calls)

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        return cls(float(cfg.api.server.job_timeout), float(cfg.api.server.broadcast_quiet_period))


class Services:
    """What handlers share: configuration, the NATS bridge, settings, start time, wait slots."""

    def __init__(self, cfg, bridge, routes: list[Route]):
        self.cfg = cfg
        self.bridge = bridge
        self.settings = Settings.from_config(cfg)
        self.wait_slots = WaitSlots()  # synchronous calls waiting for workers (domain.py)
        self.event_streams = _stream_slots()  # open event streams (events.py)
        self.started = time.monotonic()
        self.last_job_stats: tuple[int, dict] | None = None  # (time ns, counts): /health/status when NATS is away
        from osapi.api.metrics import Registry

        self.metrics = Registry()
        self._routes = routes
        self._document: dict | None = None

    def openapi(self) -> dict:
        if self._document is None:
            from osapi.api import openapi

            self._document = openapi.build(self._routes)
        return self._document


def _stream_slots() -> WaitSlots:
    from osapi.api.events import stream_slots

    return stream_slots()


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, default=str, ensure_ascii=False).encode("utf-8")


class Api:
    """The WSGI callable: ``Api(cfg, bridge)(environ, start_response)``."""

    def __init__(self, cfg, bridge, signing_key: str, routes: list[Route] | None = None):
        self.routes = list(routes if routes is not None else all_routes(cfg))
        self.services = Services(cfg, bridge, self.routes)
        bridge.run_observer = self.services.metrics  # JobClient.run() reports job durations to it
        self.auth = Authenticator(signing_key)
        self.cors = CorsPolicy(cfg.api.server.security.cors.allow_origins)
        self.bottle = bottle.Bottle(catchall=True)
        self.bottle.config["json.enable"] = False  # handlers return bytes; JSON is ours
        self.bottle.default_error_handler = self._bottle_error  # 404, 405, uncaught 500
        for route in self.routes:
            self.bottle.route(route.bottle_rule(self.routes), route.method, self._endpoint(route))

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        started = time.monotonic()
        environ[audit.RAW_PATH_KEY] = environ.get("PATH_INFO", "")  # Bottle rewrites PATH_INFO
        status_seen: list[str] = []
        extra = self.cors.headers(environ.get("HTTP_ORIGIN"))

        def start(status: str, headers: list, exc_info=None):
            status_seen.append(status)
            return start_response(status, list(headers) + extra, exc_info)

        try:
            if environ.get("REQUEST_METHOD", "").upper() == "OPTIONS":
                return self._options(environ, start_response, status_seen)
            return self.bottle(environ, start)
        finally:
            self._after(environ, status_seen, started)

    def _after(self, environ: dict, status_seen: list[str], started: float) -> None:
        """The access log line, the metrics and the audit entry of one request; never raises."""
        seconds = time.monotonic() - started
        status = status_seen[-1].split(" ", 1)[0] if status_seen else "-"
        try:
            self._log_access(environ, status, seconds)
            metrics = self.services.metrics
            metrics.request(environ.get("REQUEST_METHOD", ""), environ.get(ROUTE_KEY, UNMATCHED), status, seconds)
            noted = environ.get(audit.NOTE_KEY) or {}
            if noted.get("job_id") and noted.get("operation") and not environ.get(audit.REPLAYED_KEY):
                metrics.submitted(noted["operation"])
            if audit.audited(environ.get(audit.RAW_PATH_KEY, "")):
                self._identify(environ)
                self.services.bridge.audit.record(audit.entry(environ, status, seconds))
        except Exception:  # noqa: BLE001 - the request is answered; a bug here must not turn it into a 500
            log.exception("after %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))

    def _identify(self, environ: dict) -> None:
        """The token's subject and roles for the audit entry when no route checked it (404, 405, no scope)."""
        header = environ.get("HTTP_AUTHORIZATION")
        if SUBJECT_KEY in environ or not header:
            return
        try:
            claims = self.auth.claims(header)
        except ApiError:
            return  # no valid token: subject null
        environ[SUBJECT_KEY], environ[audit.ROLES_KEY] = claims.subject, list(claims.roles)

    def _log_access(self, environ: dict, status: str, seconds: float) -> None:
        clean = logs.request_value  # a request's values cannot split or forge the line
        access_log.info("request", extra={"fields": {
            "method": clean(environ.get("REQUEST_METHOD", "-")),
            # the request's own path (Bottle replaces PATH_INFO with its UTF-8 reading)
            "path": clean(environ.get(audit.RAW_PATH_KEY, environ.get("PATH_INFO", "")) or "/"),
            "status": int(status) if status.isdigit() else clean(status),
            "duration_ms": round(seconds * 1000, 1),
            "subject": clean(environ.get(SUBJECT_KEY) or "-"),
            "remote": clean(environ.get("REMOTE_ADDR", "-")),
        }})

    def _options(self, environ: dict, start_response: Callable, status_seen: list[str]) -> list[bytes]:
        """``OPTIONS``: 204 with ``Allow`` (and the CORS preflight headers for an allowed origin)."""
        methods = self._methods_for(environ)
        if not methods:
            return self._raw_error(environ, start_response, status_seen, errors.not_found(
                "not found", f"no route {environ.get('PATH_INFO', '')}; see {API_PREFIX}/openapi.json"))
        allow = sorted(set(methods) | {"OPTIONS"})
        headers = [("Allow", ", ".join(allow)), ("Content-Length", "0")]
        headers += self.cors.preflight_headers(environ.get("HTTP_ORIGIN"), methods)
        status_seen.append("204 No Content")
        start_response("204 No Content", headers)
        return []

    def _methods_for(self, environ: dict) -> list[str]:
        probe = dict(environ, REQUEST_METHOD="OPTIONS")
        try:
            probe["PATH_INFO"] = probe.get("PATH_INFO", "").encode("latin1").decode("utf8")
        except UnicodeError:
            return []
        try:
            self.bottle.router.match(probe)
        except bottle.HTTPError as exc:
            if exc.status_code == 405:
                return [m.strip() for m in exc.get_header("Allow", "").split(",") if m.strip()]
        return []

    def _raw_error(self, environ, start_response, status_seen, err: ApiError) -> list[bytes]:
        body = _json_bytes(err.body())
        status = errors.status_line(err.status)
        status_seen.append(status)
        headers = [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body)))]
        headers += self.cors.headers(environ.get("HTTP_ORIGIN"))
        start_response(status, headers + list(err.headers.items()))
        return [body]

    # ------------------------------------------------------------ routes

    def _endpoint(self, route: Route) -> Callable:
        def callback(**path_args):
            environ = bottle.request.environ
            environ[ROUTE_KEY] = route.full_path
            try:
                claims = None
                if route.scope is not None:
                    claims = self.auth.claims(environ.get("HTTP_AUTHORIZATION"))
                    environ[SUBJECT_KEY] = claims.subject
                    environ[audit.ROLES_KEY] = list(claims.roles)
                    self.auth.require(claims, route.scope)
                reply = route.handler(Call(route, environ, path_args, claims, self.services))
                if reply.stream is not None:
                    return self._streamed(reply)
                return self._response(reply.status, reply.body, reply.headers)
            except Exception as exc:  # every failure becomes an envelope, here
                err = self._to_api_error(exc, route)
                if err.extra.get("job_id"):  # a 404/504 of a synchronous call: its job was stored
                    audit.note(environ, job_id=err.extra["job_id"])
                return self._error_response(err)

        callback.__name__ = route.operation_id or route.path
        return callback

    def _to_api_error(self, exc: Exception, route: Route) -> ApiError:
        err = errors.from_exception(exc)
        if err is None:
            log.error("%s %s: unexpected %s", route.method, route.full_path, type(exc).__name__, exc_info=exc)
            return ApiError(500, "internal error", "the server failed to answer this request; its log has the cause")
        if err.status >= 500:
            log.warning("%s %s: %d %s: %s", route.method, route.full_path, err.status, err.error, err.details)
        return err

    @staticmethod
    def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
        out_headers = {"Cache-Control": "no-store"}
        out_headers.update(headers or {})
        if body is None or status == 204:
            return bottle.HTTPResponse(body=b"", status=status, headers=out_headers)
        if isinstance(body, bytes):  # already encoded; the handler set its Content-Type
            return bottle.HTTPResponse(body=body, status=status, headers=out_headers)
        out_headers["Content-Type"] = JSON_TYPE
        return bottle.HTTPResponse(body=_json_bytes(body), status=status, headers=out_headers)

    @staticmethod
    def _streamed(reply) -> bottle.HTTPResponse:
        """A body sent chunk by chunk as the handler's iterable yields it (no Content-Length:
        Waitress sends each chunk at once, chunked)."""
        headers = {"Cache-Control": "no-store", **reply.headers, "Content-Type": reply.media_type}
        return bottle.HTTPResponse(body=reply.stream, status=reply.status, headers=headers)

    def _error_response(self, err: ApiError) -> bottle.HTTPResponse:
        return self._response(err.status, err.body(), err.headers)

    def _bottle_error(self, exc: bottle.HTTPError) -> bytes:
        """Bottle's own errors (no route, wrong method, a handler that escaped) as envelopes."""
        request = bottle.request
        code = exc.status_code
        if code == 404:
            err = errors.not_found("not found",
                                   f"no route {request.method} {request.path}; see {API_PREFIX}/openapi.json")
        elif code == 405:
            allow = exc.get_header("Allow", "")
            pretty = ", ".join(m.strip() for m in allow.split(",") if m.strip())
            bottle.response.set_header("Allow", pretty)
            err = ApiError(405, "method not allowed", f"{request.path} accepts {pretty}; got {request.method}")
        elif code >= 500:
            if exc.exception is not None:
                log.error("unhandled error on %s %s: %s", request.method, request.path, exc.exception,
                          exc_info=exc.exception)
            err = ApiError(code, "internal error", "the server failed to answer this request; its log has the cause")
        else:
            err = ApiError(code, str(exc.status_line).split(" ", 1)[-1].lower(), str(exc.body or ""))
        bottle.response.content_type = JSON_TYPE
        return _json_bytes(err.body())


def create_app(cfg, bridge, signing_key: str | None = None) -> Api:
    """The API for ``cfg``; the signing key comes from the configuration unless given."""
    if signing_key is None:
        from osapi import config

        signing_key = config.signing_key(cfg)
    return Api(cfg, bridge, signing_key)
