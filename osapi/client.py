"""A small HTTP client for the osapi REST API, on the standard library only.

``osapi client …`` must start fast and must not pull in nats, bottle, waitress or
psutil (docs/architecture.md, Processes), so this module uses ``http.client`` and
``json`` and nothing of the server side. One method per endpoint of the API; each
returns the decoded JSON body exactly as the API sent it (``None`` for 204).

Every failure becomes an ``ApiError`` (an ``OperationError``: exit status 1) whose
message says what went wrong in operator terms: the URL that could not be
reached, why a token was rejected (401), which scope is missing (403), or the
API's own error envelope ``{error, details, code}`` for any other 4xx/5xx.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
from typing import Any, Mapping
from urllib.parse import quote, urlencode, urlsplit

from osapi.errors import ConfigError, OperationError

API_PREFIX = "/api/v1"
# An HTTP request may legitimately take as long as the API's job_timeout (30 s by
# default) plus a broadcast's collection; this only guards against a hung server.
DEFAULT_TIMEOUT = 120.0
TOKEN_ENV = "OSAPI_API_CLIENT_SECURITY_BEARER_TOKEN"
EVENTS_READ_TIMEOUT = 30.0  # seconds an event stream may stay silent (the API comments every 5 s while idle)
MAX_BODY_IN_MESSAGE = 200


class ApiError(OperationError):
    """The API could not be reached or answered with an error (exit status 1).

    ``status`` is the HTTP status (None when no answer arrived) and ``body`` the
    decoded JSON answer, if any, for callers that want to look closer.
    """

    def __init__(self, message: str, hint: str | None = None, status: int | None = None, body: Any = None):
        super().__init__(message, hint)
        self.status = status
        self.body = body


def resolve_token(cfg, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The bearer token to send and where it came from (for messages).

    ``api.client.security.bearer_token`` (from the file or the environment),
    else ``<state_dir>/secrets/admin.token`` when readable -- what ``osapi
    supervise`` writes, so a client on the same host works without flags
    (docs/appliance.md, The state directory). Neither: ``ConfigError`` (exit 2) naming both places.
    """
    from osapi import config

    environ = os.environ if environ is None else environ
    token = (cfg.api.client.security.bearer_token or "").strip()
    if token:
        if environ.get(TOKEN_ENV, "").strip():
            return token, f"environment variable {TOKEN_ENV}"
        return token, f"api.client.security.bearer_token in {cfg.source}"
    token = config.read_secret(cfg, "admin.token")
    if token:
        return token, str(config.secret_path(cfg, "admin.token"))
    raise ConfigError(
        "no API token: api.client.security.bearer_token is empty and "
        f"{config.secret_path(cfg, 'admin.token')} is not readable",
        f"set {TOKEN_ENV} or api.client.security.bearer_token to a token from "
        "`osapi token generate -r admin -u <you>`, or run the client where `osapi supervise` runs",
    )


def check_url(url: str) -> str:
    """``url`` without a trailing slash; ``ValueError`` unless it is an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL such as http://127.0.0.1:8080")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return url.strip().rstrip("/")


class ApiClient:
    """Talks to one osapi API at ``url`` (e.g. ``http://127.0.0.1:8080``) with ``token``.

    ``url`` may include the ``/api/v1`` base path or not. A new connection per
    request: the CLI makes one or a handful of requests and then exits.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 token_source: str | None = None):
        self.url = check_url(url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        base = parts.path.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        self._root = base  # "" or a path prefix under which the API is mounted
        self.token = token
        self.token_source = token_source
        self.timeout = timeout

    # ------------------------------------------------------------ endpoints

    def system(self, what: str, target: str = "_any") -> dict:
        """GET /system/{hostname,status,uptime,os,disk,memory,load}."""
        return self.get(f"/system/{what}", {"target_hostname": target})

    def dns_get(self, interface_name: str, target: str = "_any") -> dict:
        return self.get(f"/network/dns/{_segment(interface_name)}", {"target_hostname": target})

    def dns_update(self, interface_name: str, servers: list[str] | None = None,
                   search_domains: list[str] | None = None, target: str = "_any") -> dict:
        body: dict[str, Any] = {"interface_name": interface_name}
        if servers is not None:
            body["servers"] = servers
        if search_domains is not None:
            body["search_domains"] = search_domains
        return self.request("PUT", "/network/dns", {"target_hostname": target}, body)

    def ping(self, address: str, count: int | None = None, target: str = "_any") -> dict:
        body: dict[str, Any] = {"address": address}
        if count is not None:
            body["count"] = count
        return self.request("POST", "/network/ping", {"target_hostname": target}, body)

    def operation(self, method: str, path: str, data: Mapping[str, Any], target: str = "_any") -> dict:
        """The REST route of an operation (``osapi.domain.operations.Rest``) with its ``data``.

        ``{name}`` segments of ``path`` take those data fields (percent-encoded); the
        rest of the data is the JSON body of PUT/POST, else query parameters.
        """
        rest = dict(data)
        path = re.sub(r"\{(\w+)\}", lambda m: _segment(str(rest.pop(m.group(1)))), path)
        if method in ("PUT", "POST"):
            return self.request(method, path, {"target_hostname": target}, rest)
        return self.request(method, path, {"target_hostname": target, **rest})

    def job_create(self, operation: dict, target: str = "_any", dry_run: bool = False,
                   idempotency_key: str | None = None, rollout: dict | None = None) -> dict:
        """POST /jobs; with ``idempotency_key`` a repeat of the same request answers the first job again;
        ``rollout``: ``{batch, max_failures?, pause?}`` sends it batch by batch."""
        body: dict[str, Any] = {"operation": operation, "target_hostname": target}
        if dry_run:
            body["dry_run"] = True
        if rollout is not None:
            body["rollout"] = rollout
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self.request("POST", "/jobs", None, body, headers=headers)

    def job_get(self, job_id: str) -> dict:
        return self.get(f"/jobs/{_segment(job_id)}")

    def job_retry(self, job_id: str, only: list[str] | None = None) -> dict:
        return self.request("POST", f"/jobs/{_segment(job_id)}/retry", None, {} if only is None else {"only": only})

    def job_list(self, status: str | None = None, limit: int | None = None, offset: int | None = None) -> dict:
        query = {"status": status, "limit": limit, "offset": offset}
        return self.get("/jobs", {k: v for k, v in query.items() if v is not None})

    def job_delete(self, job_id: str) -> None:
        return self.request("DELETE", f"/jobs/{_segment(job_id)}")

    def job_events(self, job_id: str, read_timeout: float = EVENTS_READ_TIMEOUT):
        """``GET /jobs/{id}/events``: yields ``(event, data)`` as each arrives, the last one ``end``.

        ``ApiError`` when the stream cannot be opened, is not an event stream, or
        stays silent for ``read_timeout`` seconds (the API sends a comment every few).
        """
        target = self.endpoint(f"/jobs/{_segment(job_id)}/events")
        headers = {"Accept": "text/event-stream", "User-Agent": "osapi-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=read_timeout)
        try:
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                if response.status != 200:
                    data, text = _json_or_text(response.read())
                    raise self._error("GET", f"/jobs/{job_id}/events", response.status, response.reason, data, text)
                if not (response.getheader("Content-Type") or "").startswith("text/event-stream"):
                    raise ApiError(f"the server at {self.url} did not answer GET {target} with an event stream")
                yield from parse_event_stream(response, keepalive=True)
            except (OSError, http.client.HTTPException) as exc:
                raise ApiError(f"the event stream of job {job_id} from {self.url} broke off: "
                               f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}") from None
        finally:
            conn.close()

    def job_stats(self) -> dict:
        return self.get("/jobs/status")

    def workers(self) -> dict:
        return self.get("/jobs/workers")

    def audit_list(self, since: str | None = None, subject: str | None = None, status: int | None = None,
                   limit: int | None = None, offset: int | None = None) -> dict:
        query = {"since": since, "subject": subject, "status": status, "limit": limit, "offset": offset}
        return self.get("/audit", {k: v for k, v in query.items() if v is not None})

    def fleet_host_add(self, hostname: str, labels: dict | None = None, rotate: bool = False) -> dict:
        body: dict = {"hostname": hostname}
        if labels is not None:
            body["labels"] = labels
        if rotate:
            body["rotate"] = True
        return self.request("POST", "/fleet/hosts", body=body)

    def fleet_host_remove(self, hostname: str) -> None:
        return self.request("DELETE", f"/fleet/hosts/{_segment(hostname)}")

    def fleet_hosts(self) -> dict:
        return self.get("/fleet/hosts")

    def version(self) -> dict:
        return self.get("/version", auth=False)

    # ------------------------------------------------------------ transport

    def get(self, path: str, query: Mapping[str, Any] | None = None, auth: bool = True) -> Any:
        return self.request("GET", path, query, auth=auth)

    def endpoint(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The request target for ``path`` under ``/api/v1`` (``/health…`` has no prefix)."""
        prefix = "" if path.startswith("/health") else API_PREFIX
        target = f"{self._root}{prefix}{path}"
        if query:
            target += "?" + urlencode({k: str(v) for k, v in query.items()})
        return target

    def request(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                body: Any = None, auth: bool = True, headers: Mapping[str, str] | None = None) -> Any:
        """Send one request; the decoded JSON body, ``None`` for an empty 2xx, or ``ApiError``."""
        target = self.endpoint(path, query)
        headers = {"Accept": "application/json", "User-Agent": "osapi-cli", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        status, reason, raw = self._send(method, target, payload, headers)
        return self._decode(method, path, status, reason, raw)

    def _send(self, method: str, target: str, payload: bytes | None, headers: dict) -> tuple[int, str, bytes]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        hint = ("is the API running there? start it with `osapi supervise` or `osapi api server start`, "
                "or point the client elsewhere with --url or api.client.url")
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.reason, response.read()
        except ConnectionRefusedError:
            raise ApiError(f"cannot reach the osapi API at {self.url}: connection refused", hint) from None
        except socket.gaierror as exc:
            raise ApiError(f"cannot reach the osapi API at {self.url}: cannot resolve {self._host!r} "
                           f"({exc.strerror or exc})", hint) from None
        except (TimeoutError, socket.timeout):
            raise ApiError(
                f"the osapi API at {self.url} did not answer {method} {target} within {self.timeout:g}s",
                "check the API's log; a worker may be stuck",
            ) from None
        except http.client.RemoteDisconnected:
            raise ApiError(f"the server at {self.url} closed the connection without answering {method} {target}",
                           "check the API's log; is --url / api.client.url the osapi API?") from None
        except http.client.HTTPException:
            # e.g. NATS's port, which greets with an "INFO {...}" line: say what it is not,
            # never echo the peer's bytes (they may be long, binary or terminal escapes)
            raise ApiError(f"{self.url}: not an osapi API (the reply was not HTTP); "
                           "check --url or api.client.url") from None
        except OSError as exc:
            raise ApiError(f"cannot reach the osapi API at {self.url}: {exc.strerror or exc}", hint) from None
        finally:
            conn.close()

    def _decode(self, method: str, path: str, status: int, reason: str, raw: bytes) -> Any:
        text = raw.decode("utf-8", errors="replace")
        data: Any = None
        is_json = False
        if text.strip():
            try:
                data = json.loads(text)
                is_json = True
            except ValueError:
                pass
        if 200 <= status < 300:
            if not text.strip():
                return None
            if not is_json:
                raise ApiError(
                    f"the server at {self.url} answered {method} {path} with HTTP {status} "
                    f"but not JSON: {_excerpt(text)}",
                    "is --url / api.client.url the osapi API?", status,
                )
            return data
        raise self._error(method, path, status, reason, data if is_json else None, text)

    def _error(self, method: str, path: str, status: int, reason: str, data: Any, text: str) -> ApiError:
        error = details = None
        if isinstance(data, dict):
            error = data.get("error")
            details = data.get("details")
        if error is None:
            # not the API's envelope: a proxy, another server, a crash page
            summary = f"HTTP {status} {reason}".rstrip()
            body = f": {_excerpt(text)}" if text.strip() else ""
            message = f"the server at {self.url} answered {method} {path} with {summary}{body}"
        else:
            message = join_error(error, details)
        if status == 401:
            source = f"it came from {self.token_source}; " if self.token_source else ""
            return ApiError(
                f"token was rejected: {details or error or 'no reason given'}",
                f"{source}generate a new one with `osapi token generate -r admin -u <you>` on the API host",
                status, data,
            )
        if status == 403:
            return self._forbidden(method, path, error, details, data)
        hint = None
        if details:
            pass  # the API said what to do
        elif status == 503:
            hint = "the API cannot reach NATS; is nats-server running?"
        elif status == 504:
            hint = "is a worker running for that target? see `osapi client job workers list`"
        if error is not None:
            message += f" (HTTP {status})"  # otherwise the message already names the status
        return ApiError(message, hint, status, data)

    @staticmethod
    def _forbidden(method: str, path: str, error: Any, details: Any, data: Any) -> ApiError:
        """403: which scope is missing, what the token grants, which roles would do -- each said once.

        The API's details open with "this endpoint needs the 'write' scope", which the
        first half of this message already says; only the rest (what the token grants) is kept.
        """
        scope = "read" if method == "GET" else "write"
        if isinstance(error, str) and error.startswith("missing scope "):
            scope = error[len("missing scope "):].strip() or scope
        said = f"needs the '{scope}' scope"
        rest = [part.strip() for part in str(details or "").split(";")
                if part.strip() and said not in part and part.strip() != str(error)]
        why = "; " + "; ".join(rest) if rest else ""
        roles = {"read": "a read, write or admin", "write": "a write or admin", "admin": "the admin"}
        return ApiError(
            f"permission denied: {method} {path} {said}{why}",
            f"use a token with {roles.get(scope, 'a suitable')} role",
            403, data,
        )


def parse_event_stream(lines, keepalive: bool = False):
    """``(event, data)`` for each event of a ``text/event-stream`` read line by line (bytes).

    Comment lines are skipped (``keepalive``: each one yields ``(None, None)``, so a reader
    can look at its clock while the stream is idle); ``data`` is the decoded JSON of the
    ``data:`` lines (``ValueError`` when it is not JSON). Ends after ``end`` or at the end
    of the input.
    """
    event, data = None, []
    for raw in iter(lines.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if keepalive and line.startswith(":"):
            yield None, None
            continue
        if not line:
            if event is not None or data:
                name = event or "message"
                yield name, json.loads("\n".join(data)) if data else None
                if name == "end":
                    return
            event, data = None, []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)


def _json_or_text(raw: bytes) -> tuple[Any, str]:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def join_error(error: Any, details: Any) -> str:
    """The API's ``error`` and ``details`` as one phrase that says nothing twice.

    The API's ``details`` often restates its ``error`` ("no worker answered in time" /
    "no worker answered job … within 1s") or repeats the name the error ends with
    ("invalid query parameter target_hostname" / "target_hostname invalid target …").
    """
    error = " ".join(str(error or "").split())
    details = " ".join(str(details or "").split())
    if not details or details.lower() in error.lower():
        return error
    if not error or error.lower() in details.lower():
        return details
    ew, dw = error.split(), details.split()
    shared = 0
    while shared < min(len(ew), len(dw)) and ew[shared].lower() == dw[shared].lower():
        shared += 1
    if shared >= 2:
        return details  # the details say the same thing, more precisely
    if len(ew[-1]) >= 4 and dw[0] == ew[-1] and len(dw) > 1:
        return f"{error}: {' '.join(dw[1:])}"  # "... parameter limit" + "limit must be ..."
    return f"{error}: {details}"


def _segment(value: str) -> str:
    """A path segment, percent-encoded so a '/' in user input cannot change the route."""
    return quote(str(value), safe="")


def _excerpt(text: str) -> str:
    """A short, printable quote of a body (no control characters reach the terminal)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= MAX_BODY_IN_MESSAGE else flat[:MAX_BODY_IN_MESSAGE] + "…"
