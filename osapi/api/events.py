"""``GET /api/v1/jobs/{job_id}/events``: a job's events as server-sent events.

The handler checks the job id and ``Last-Event-ID``, takes one of the
``MAX_EVENT_STREAMS`` stream slots (one more: 503 with ``Retry-After``) and
starts a ``JobWatch`` (``osapi/job/watch.py``) on the NATS bridge's loop; the
watch puts each event in a thread-safe queue as the subscription delivers it.
The WSGI response is an ``EventStream`` that Waitress iterates in its thread:
it waits on that queue and yields each event as one chunk, which Waitress
sends at once (no Content-Length: chunked).

A stream holds a Waitress thread until it ends. ``server.py`` keeps
``MAX_EVENT_STREAMS`` threads for streams on top of those for synchronous
calls and the spare ones, so open streams never starve ``/health``, the job
queue or synchronous calls. A stream ends at the job's ``end`` event, when
the job is deleted, or when the client goes away: the thread looks every
``POLL`` seconds (Waitress notices a closed connection) and a write to a
closed connection ends it too, so an idle comment every ``IDLE_COMMENT``
seconds bounds that as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import time

from osapi.api.domain import RETRY_AFTER, WaitSlots
from osapi.api.errors import ApiError
from osapi.api.routing import Call, InvalidValue, Param, Reply

log = logging.getLogger("osapi.api.events")

MEDIA_TYPE = "text/event-stream"
MAX_EVENT_STREAMS = 256  # open event streams at once; server.py keeps a thread for each
IDLE_COMMENT = 5.0  # seconds: a comment line while nothing happens (at most 15 s apart, by contract)
POLL = 1.0  # seconds: how often a waiting stream looks whether its client is still there
START_TIMEOUT = 15.0  # seconds to read the job and subscribe before the API answers 503
LAST_EVENT_ID_PATTERN = r"^(0|[1-9][0-9]{0,17})$"
LAST_EVENT_ID_RULE = ("the `id:` of an event this stream sent (a stream sequence): a decimal number without "
                      "leading zeros, at most 18 digits; the stream resumes with the events stored after it "
                      "(0: from the start). Anything else is a 400.")


EVENT_NAMES = ("submitted", "acknowledged", "started", "completed", "failed", "no_response", "skipped", "end")
EVENT_SCHEMA = {
    "type": "object",
    "description": "one event of the stream, by its fields",
    "properties": {
        "id": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN,
               "description": "the event's stream sequence; `end` repeats the id of the last event"},
        "event": {"type": "string", "enum": list(EVENT_NAMES)},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "one line of JSON: `{timestamp, hostname, error?}`; for `end` the job"},
        "retry": {"type": "integer", "description": "sent once, first: reconnect after this many ms"},
    },
    "required": ["id", "event", "data"],
}


def parse_last_event_id(text: str) -> int:
    if not re.fullmatch(LAST_EVENT_ID_PATTERN, text):
        raise InvalidValue(f"must be an event id this stream sent (digits, no leading zero, at most 18), "
                           f"got {text[:40]!r}")
    return int(text)


LAST_EVENT_ID = Param("Last-Event-ID", {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                      LAST_EVENT_ID_RULE, parse_last_event_id, 0)


def stream_slots() -> WaitSlots:
    return WaitSlots(MAX_EVENT_STREAMS, _too_many_streams)


def _too_many_streams(limit: int) -> ApiError:
    return ApiError(503, "too many event streams open",
                    f"{limit} event streams are already open; retry after {RETRY_AFTER}s, "
                    "or read GET /api/v1/jobs/{job_id}", headers={"Retry-After": str(RETRY_AFTER)})


def handler(job_id_of):
    """The route's handler; ``job_id_of(call)`` checks the path's job id (``jobs.py``)."""

    def events(call: Call) -> Reply:
        job_id = job_id_of(call)
        after = call.headers["Last-Event-ID"]
        services = call.services
        release = services.event_streams.take()
        try:
            items: queue.SimpleQueue = queue.SimpleQueue()
            bridge = services.bridge
            watch = bridge.call(lambda client: client.watch(job_id, after, items.put), START_TIMEOUT)
        except BaseException:
            release()
            raise
        stream = EventStream(job_id, items, lambda: _stop(bridge, watch), release,
                             call.environ.get("waitress.client_disconnected"), after)
        return Reply(200, stream=stream, media_type=MEDIA_TYPE)

    return events


def _stop(bridge, watch) -> None:
    """Stop the watch on the bridge's loop, without waiting for it."""
    try:
        asyncio.run_coroutine_threadsafe(watch.stop(), bridge.loop)
    except RuntimeError:  # the loop is closed: the API is stopping
        pass


def format_event(seq: int, event: str, data) -> bytes:
    """One event of the stream (``data`` as one line of JSON)."""
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n".encode()


class EventStream:
    """The response body: an iterator of chunks, read by a Waitress thread; ``close()`` frees everything."""

    def __init__(self, job_id: str, items: queue.SimpleQueue, stop, release, disconnected=None, after: int = 0):
        self.job_id = job_id
        self.last_id = after  # the id of the newest event sent: ``end`` carries it too
        self.items = items
        self._stop = stop
        self._release = release
        self._disconnected = disconnected or (lambda: False)
        self._first = True
        self._ended = False
        self._closed = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self._first:
            self._first = False  # sent at once: the client has the headers before any event
            return f": events of job {self.job_id}\nretry: 3000\n\n".encode()
        if self._ended:
            raise StopIteration
        quiet_until = time.monotonic() + IDLE_COMMENT
        while True:
            if self._disconnected():
                self._ended = True
                raise StopIteration
            wait = quiet_until - time.monotonic()
            if wait <= 0:
                return b": idle\n\n"
            try:
                item = self.items.get(timeout=min(POLL, wait))
            except queue.Empty:
                continue
            return self._chunk(item)

    def _chunk(self, item: tuple) -> bytes:
        kind, value = item
        if kind == "event":
            self.last_id = max(self.last_id, value.seq)
            return format_event(value.seq, value.event, value.data())
        self._ended = True
        if kind == "end":
            return format_event(self.last_id, "end", value)
        return f": {value}\n\n".encode()  # the job is gone: the stream closes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            self._release()
