"""The audit log: one entry per API request on the JetStream stream ``AUDIT``.

``entry()`` builds it from what the WSGI wrapper saw (``app.Api.__call__``):
``{id, timestamp, subject, roles, source_ip, method, path, status, duration_ms,
job_id?, operation?, target?, dry_run?}``. Values from the request are data in a
JSON object (a path holding a newline is one entry with ``\\n`` in a string);
a path longer than ``MAX_PATH`` characters is cut there and ends with ``…``.
Never a token, a password, a query string or a body.

``AuditWriter`` publishes entries from the API's NATS loop: a request thread
only appends to a bounded queue (``MAX_PENDING``) and wakes the loop, so the
audit log adds no wait to a request. While NATS is away, entries wait in that
queue and go out, oldest first, when the connection is back; when it is full,
new entries are dropped and counted (a warning says how many). Each is published
with ``Nats-Msg-Id`` = its id, so one re-sent after a lost ack is stored once.
What is still queued when the API process dies is lost (the access log has a
line for every request).

Subjects: ``audit.<status>.<who>`` where ``who`` is ``-`` (no valid token),
``s<hex of the subject>`` or, for a subject over 64 bytes, ``h<sha256 hex>``:
the server filters by status and subject itself. ``read()`` pages newest first
by sequence from the end of the stream (see its docstring for the cost).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
import threading
import time
from typing import Any

from osapi.job.setup import AUDIT_STREAM
from osapi.retry import Backoff

log = logging.getLogger("osapi.api.audit")

MAX_PENDING = 10_000  # entries waiting while NATS is away; more are dropped (and counted)
MAX_PATH = 1024  # characters of the path kept in an entry
MAX_FIELD = 256  # characters of any other value taken from the request (method, target, subject)
PUBLISH_BATCH = 64  # entries published at once (acks awaited together)
RETRY = (0.5, 5.0)  # seconds between attempts while NATS is away: first and longest
PUBLISH_TIMEOUT = 5.0
SUBJECT_PREFIX = "audit"

# environ keys: what handlers add to the request's entry
NOTE_KEY = "osapi.audit"
ROLES_KEY = "osapi.roles"
RAW_PATH_KEY = "osapi.raw_path"  # PATH_INFO as the server gave it (WSGI: the bytes as latin-1)


def audited(path: str) -> bool:
    """Requests to ``/api/v1…`` and ``/health/status`` get an entry (docs/api.md, Audit log)."""
    return path == "/api/v1" or path.startswith("/api/v1/") or path == "/health/status"


REPLAYED_KEY = "osapi.replayed"  # an Idempotency-Key replay: no job was submitted (not counted as one)


def note(environ: dict, **fields: Any) -> None:
    """A handler adds ``job_id``, ``operation``, ``target`` or ``dry_run`` to this request's entry."""
    environ.setdefault(NOTE_KEY, {}).update({k: v for k, v in fields.items() if v is not None})


def _text(value: Any, limit: int = MAX_FIELD) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def request_path(environ: dict) -> str:
    """PATH_INFO as the client sent it: WSGI's latin-1 text back to bytes, read as UTF-8.

    Bytes that are not UTF-8 are kept as ``\\xNN`` escapes.
    """
    raw = environ.get(RAW_PATH_KEY, environ.get("PATH_INFO", "")) or "/"
    try:
        raw = raw.encode("latin-1").decode("utf-8", errors="backslashreplace")
    except UnicodeEncodeError:
        pass  # already text (a server that decoded it)
    return _text(raw, MAX_PATH)


def entry(environ: dict, status: int | str, duration_s: float, now_ns: int | None = None) -> dict:
    from osapi.domain.ids import new_job_id
    from osapi.job.status import rfc3339

    subject = environ.get("osapi.subject")
    out: dict[str, Any] = {
        "id": new_job_id(),
        "timestamp": rfc3339(time.time_ns() if now_ns is None else now_ns),
        "subject": _text(subject) if subject else None,
        "roles": [_text(r) for r in environ.get(ROLES_KEY) or []] if subject else [],
        "source_ip": _text(environ.get("REMOTE_ADDR") or ""),
        "method": _text(environ.get("REQUEST_METHOD") or "", 16),
        "path": request_path(environ),
        "status": int(status) if str(status).isdigit() else 0,
        "duration_ms": round(duration_s * 1000, 1),
    }
    for key, value in (environ.get(NOTE_KEY) or {}).items():
        if key in ("job_id", "operation", "target"):
            out[key] = _text(value)
        elif key == "dry_run":
            out[key] = bool(value)
    return out


def who_token(subject: str | None) -> str:
    """The subject's part of a NATS subject: ``-``, ``s<hex>`` or ``h<sha256>``."""
    if not subject:
        return "-"
    data = subject.encode("utf-8", errors="surrogatepass")
    if len(data) <= 64:
        return "s" + data.hex()
    return "h" + hashlib.sha256(data).hexdigest()


def subject_of(item: dict) -> str:
    return f"{SUBJECT_PREFIX}.{item['status']}.{who_token(item.get('subject'))}"


def subject_filter(status: int | None = None, subject: str | None = None) -> str:
    return f"{SUBJECT_PREFIX}.{status if status is not None else '*'}.{who_token(subject) if subject else '*'}"


# ---------------------------------------------------------------- writing


class AuditWriter:
    """Publishes entries from the NATS loop of ``bridge``; ``record()`` is safe from any thread."""

    def __init__(self, bridge, limit: int = MAX_PENDING):
        self.bridge = bridge
        self.limit = limit
        self._pending: collections.deque[dict] = collections.deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.dropped = 0  # entries dropped because the queue was full (since the process started)
        self._dropped_unreported = 0
        self.published = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, item: dict) -> None:
        with self._lock:
            if len(self._pending) >= self.limit:
                self.dropped += 1
                self._dropped_unreported += 1
                first = self._dropped_unreported == 1
            else:
                self._pending.append(item)
                first = False
        if first:
            log.warning("audit log: %d entries are waiting for NATS (the limit); further entries are dropped "
                        "until NATS is back (the access log still has every request)", self.limit)
        self.wake()

    def wake(self) -> None:
        wake = self._wake
        if wake is not None:
            try:
                self.bridge.loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is closed: the process is stopping
                pass

    async def run(self) -> None:
        """The publishing task (on the bridge's loop), until cancelled."""
        self._wake = asyncio.Event()
        self._wake.set()
        trouble = Backoff(*RETRY)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if await self._publish_some():
                    trouble.succeeded()
                    continue
                await asyncio.sleep(trouble.failed())  # NATS away: try again later (connect() also wakes us)

    def start(self) -> None:
        """Start ``run()`` on the bridge's loop (call from the loop's thread or via the loop)."""
        self._task = asyncio.ensure_future(self.run())

    async def _publish_some(self) -> bool:
        """One batch; False when NATS refused or is away (the entries stay queued, in order)."""
        bridge = self.bridge
        nc = bridge.nc
        if nc is None or not bridge.connected:
            return False
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(PUBLISH_BATCH, len(self._pending)))]
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)

        async def one(item: dict):
            data = json.dumps(item, separators=(",", ":"), ensure_ascii=True).encode()
            return await js.publish(subject_of(item), data, stream=AUDIT_STREAM, headers={"Nats-Msg-Id": item["id"]})

        results = await asyncio.gather(*(one(i) for i in batch), return_exceptions=True)
        failed = [item for item, res in zip(batch, results) if isinstance(res, BaseException)]
        self.published += len(batch) - len(failed)
        if failed:
            with self._lock:
                self._pending.extendleft(reversed(failed))
            why = results[[isinstance(r, BaseException) for r in results].index(True)]
            log.debug("audit log: %d entries not stored yet: %s", len(failed), why)
            return False
        if self._dropped_unreported:
            with self._lock:
                lost, self._dropped_unreported = self._dropped_unreported, 0
            log.warning("audit log: NATS is back; %d entries were dropped while the queue was full", lost)
        return True

    async def flush(self, timeout: float) -> int:
        """Publish what is queued, for at most ``timeout`` seconds (shutdown). Returns what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending and loop.time() < deadline:
            try:
                ok = await asyncio.wait_for(self._publish_some(), max(0.05, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
            if not ok:
                await asyncio.sleep(0.1)
        if self._pending:
            log.warning("audit log: %d entries not stored (NATS away at shutdown)", len(self._pending))
        return len(self._pending)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


# ---------------------------------------------------------------- reading

WINDOW = 1024  # sequences scanned per step from the end, doubled while few entries match
MAX_WINDOW = 1 << 20
BATCH = 256  # messages of one batch direct get


async def read(store, *, since_ns: int | None, subject: str | None, status: int | None,
               limit: int, offset: int) -> dict:
    """``{total_items, items}`` newest first, from the stream ``AUDIT``.

    Cost: the server filters by status and subject (both are in the NATS subject).
    ``total_items`` is one batch direct get (its ``Nats-Num-Pending``) from the
    first entry at or after ``since`` (JetStream's ``start_time``). The page is read
    backwards from the last sequence in windows of ``WINDOW`` sequences, doubled
    while fewer than wanted match, until ``offset + limit`` entries are found: a
    page near the top costs one or two requests; a deep ``offset``, or a filter
    that matches rarely, costs a request per window scanned.
    """
    import nats.js.errors as jse

    filt = subject_filter(status, subject)
    try:
        info = await store.js.stream_info(AUDIT_STREAM)
    except jse.NotFoundError:
        return {"total_items": 0, "items": []}
    first, last = int(info.state.first_seq or 0), int(info.state.last_seq or 0)
    if not info.state.messages or last < first:
        return {"total_items": 0, "items": []}
    start_request: dict[str, Any] = {"next_by_subj": filt, "batch": 1}
    if since_ns is not None and since_ns > 0:
        start_request["start_time"] = _rfc3339_nanos(since_ns)
    else:
        start_request["seq"] = first
    got, end = await store.direct_batch(AUDIT_STREAM, start_request)
    if not got or (since_ns is not None and _stored_ns(got[0]) < since_ns):  # nothing stored since then
        return {"total_items": 0, "items": []}
    start = int(got[0].headers["Nats-Sequence"])
    total = len(got) + int(end.get("Nats-Num-Pending") or 0)
    want = offset + limit
    found: list = []  # newest first
    hi, window = last, WINDOW
    while hi >= start and len(found) < want and offset < total:
        lo = max(start, hi - window + 1)
        found.extend(reversed(await _range(store, filt, lo, hi)))
        if len(found) < want:
            window = min(window * 2, MAX_WINDOW)
        hi = lo - 1
    items = []
    for msg in found[offset:want]:
        try:
            items.append(json.loads(msg.data))
        except ValueError:
            continue
    return {"total_items": total, "items": items}


def _stored_ns(msg) -> int:
    """When the stream stored ``msg`` (its ``Nats-Time-Stamp``); 0 when it cannot tell."""
    try:
        return parse_rfc3339(msg.headers.get("Nats-Time-Stamp", ""))
    except ValueError:
        return 0


async def _range(store, filt: str, lo: int, hi: int) -> list:
    """The matching messages with sequences ``lo`` to ``hi``, oldest first."""
    out: list = []
    seq = lo
    while seq <= hi:
        got, end = await store.direct_batch(AUDIT_STREAM, {"seq": seq, "next_by_subj": filt, "batch": BATCH})
        for msg in got:
            number = int(msg.headers["Nats-Sequence"])
            if number > hi:
                return out
            out.append(msg)
        if not got or len(got) < BATCH or end.get("Nats-Num-Pending") == "0":
            return out
        seq = int(got[-1].headers["Nats-Sequence"]) + 1
    return out


# ---------------------------------------------------------------- the route

TAG = "audit"
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_OFFSET = 999_999_999
READ_TIMEOUT = 30.0  # seconds a page may take before the API answers 503
MAX_SUBJECT = 256


def _since(text: str) -> int:
    from osapi.api.routing import InvalidValue

    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def _subject(text: str) -> str:
    from osapi.api.routing import InvalidValue

    if not 1 <= len(text) <= MAX_SUBJECT:
        raise InvalidValue(f"must be 1 to {MAX_SUBJECT} characters, got {len(text)}")
    return text


def list_entries(call):
    from osapi.api.routing import Reply

    q = call.query
    page = call.services.bridge.call(
        lambda client: read(client.store, since_ns=q["since"], subject=q["subject"], status=q["status"],
                            limit=q["limit"], offset=q["offset"]),
        READ_TIMEOUT)
    return Reply(200, page)


ENTRY_SCHEMA = {
    "type": "object",
    "required": ["id", "timestamp", "subject", "roles", "source_ip", "method", "path", "status", "duration_ms"],
    "properties": {
        "id": {"type": "string", "description": "UUIDv7 of the entry (also its Nats-Msg-Id)"},
        "timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
        "subject": {"type": ["string", "null"], "description": "the token's subject; null without a valid token"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "source_ip": {"type": "string"},
        "method": {"type": "string"},
        "path": {"type": "string", "description": f"as sent, without the query; cut at {MAX_PATH} characters "
                                                  "(ending with …); bytes that are not UTF-8 as \\xNN"},
        "status": {"type": "integer", "description": "the HTTP status answered"},
        "duration_ms": {"type": "number"},
        "job_id": {"type": "string", "description": "the job a submission stored"},
        "operation": {"type": "string", "description": "the operation type of a submission"},
        "target": {"type": "string", "description": "the target of a submission"},
        "dry_run": {"type": "boolean"},
    },
}


def routes():
    from osapi.api import schemas
    from osapi.api.routing import Param, Response, Route, int_param, parse_int

    page = {"type": "object", "required": ["total_items", "items"],
            "properties": {"total_items": {"type": "integer"}, "items": {"type": "array", "items": ENTRY_SCHEMA}}}
    return [
        Route("GET", "/audit", list_entries, "the audit log, newest first", TAG, "admin",
              query=(
                  Param("since", {"type": "string", "format": "date-time"},
                        "only entries at or after this RFC 3339 date-time", _since, None),
                  Param("subject", {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT},
                        "only requests made with a token of this subject", _subject, None),
                  Param("status", {"type": "integer", "minimum": 100, "maximum": 599},
                        "only requests answered with this HTTP status", parse_int(100, 599), None),
                  int_param("limit", 1, MAX_LIMIT, DEFAULT_LIMIT, f"page size, 1 to {MAX_LIMIT}"),
                  int_param("offset", 0, MAX_OFFSET, 0, f"entries to skip, 0 to {MAX_OFFSET}"),
              ),
              responses={200: Response("one page of entries", page), **schemas.error_responses(400, 401, 403, 503)},
              description="One entry per request to `/api/v1/…` and `/health/status`, refused ones included "
                          "(401, 403, 4xx): who (token subject and roles, source IP), what (method, path, and "
                          "for a submission the job id, operation and target), the status and the duration. "
                          "Never a token, a password, a query string or a body. Entries are kept for "
                          "`audit.max_age`. An entry reaches the log shortly after its request was answered, "
                          "or when NATS is back if it was away.",
              operation_id="audit_list"),
    ]


# ---------------------------------------------------------------- RFC 3339

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z")
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 date-time (``2024-05-01T12:00:00Z``, any offset and fraction) -> Unix nanoseconds.

    ``ValueError`` naming the problem otherwise. A leap second (``:60``) counts as ``:59.999…``.
    """
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z, got {text[:80]!r}")
    y, mo, d, h, mi, s = (int(match.group(i)) for i in range(1, 7))
    if not 1 <= mo <= 12 or not 1 <= d <= (29 if mo == 2 and _leap(y) else _DAYS[mo - 1]):
        raise ValueError(f"is not a date of the calendar: {text[:80]!r}")
    if h > 23 or mi > 59 or s > 60:
        raise ValueError(f"is not a time of day: {text[:80]!r}")
    offset = 0
    if match.group(9):
        oh, om = int(match.group(10)), int(match.group(11))
        if oh > 23 or om > 59:
            raise ValueError(f"has an invalid UTC offset: {text[:80]!r}")
        offset = (oh * 3600 + om * 60) * (1 if match.group(9) == "+" else -1)
    fraction = match.group(7) or ""
    nanos = int((fraction[1:] + "000000000")[:9]) if fraction else 0
    if s == 60:
        s, nanos = 59, 999_999_999
    seconds = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
    return seconds * 1_000_000_000 + nanos


def _rfc3339_nanos(nanos: int) -> str:
    """UTC with nanoseconds, as JetStream's ``start_time`` takes it (Go's time.Time JSON)."""
    import datetime as dt

    seconds, rest = divmod(nanos, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"
