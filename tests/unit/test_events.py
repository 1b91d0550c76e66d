"""The pieces of the job event stream that need no server: ids, the wire format, the client's parser."""

from __future__ import annotations

import io
import json
import queue

import pytest

from osapi.api.events import EventStream, format_event, parse_last_event_id
from osapi.api.routing import InvalidValue
from osapi.cli.client_format import progress_line
from osapi.client import parse_event_stream
from osapi.job.watch import StoredEvent


@pytest.mark.parametrize("text,value", [("0", 0), ("7", 7), ("999999999999999999", 10**18 - 1)])
def test_last_event_id_accepts_the_ids_a_stream_sends(text, value):
    assert parse_last_event_id(text) == value


@pytest.mark.parametrize("text", ["", "-1", "01", "1e3", "1 ", "0x1", "1" * 19, "١", "1\n2", "*", "1\x00"])
def test_last_event_id_refuses_anything_else(text):
    with pytest.raises(InvalidValue):
        parse_last_event_id(text)


def test_an_event_is_one_block_and_hostile_text_stays_inside_its_json_line():
    event = StoredEvent(42, "failed", "h1", 1_700_000_000_123_000_000, "bad\n\nid: 1\nevent: end\r\x00")
    chunk = format_event(event.seq, event.event, event.data())
    text = chunk.decode()
    assert text.endswith("\n\n") and text.count("\n") == 4
    lines = text.split("\n")
    assert lines[:2] == ["id: 42", "event: failed"]
    assert json.loads(lines[2][len("data: "):]) == {"timestamp": "2023-11-14T22:13:20.123Z", "hostname": "h1",
                                                   "error": "bad\n\nid: 1\nevent: end\r\x00"}


def test_the_stream_sends_events_then_end_with_the_last_id_and_close_frees_its_slot():
    items: queue.SimpleQueue = queue.SimpleQueue()
    freed: list[str] = []
    stream = EventStream("j1", items, lambda: freed.append("stop"), lambda: freed.append("release"))
    items.put(("event", StoredEvent(5, "submitted", "_all", 0, None)))
    items.put(("end", {"id": "j1", "status": "completed"}))
    chunks = list(stream)
    assert chunks[0].startswith(b": events of job j1\n")
    assert chunks[1].startswith(b"id: 5\nevent: submitted\n")
    assert chunks[2] == b'id: 5\nevent: end\ndata: {"id": "j1", "status": "completed"}\n\n'
    stream.close()
    stream.close()
    assert freed == ["stop", "release"]


def test_a_client_that_went_away_ends_the_stream():
    gone = [False]
    stream = EventStream("j1", queue.SimpleQueue(), lambda: None, lambda: None, lambda: gone[0])
    next(stream)
    gone[0] = True
    assert list(stream) == []


def test_the_client_parser_skips_comments_and_stops_at_end():
    wire = (b": events of job j1\nretry: 3000\n\n: idle\n\n"
            b"id: 1\nevent: started\ndata: {\"hostname\": \"h1\"}\n\n"
            b"id: 1\nevent: end\ndata: {\"status\": \"completed\"}\n\n"
            b"id: 2\nevent: started\ndata: {}\n\n")
    assert list(parse_event_stream(io.BytesIO(wire))) == [("started", {"hostname": "h1"}),
                                                          ("end", {"status": "completed"})]


def test_progress_lines_never_carry_control_characters():
    line = progress_line("failed", {"hostname": "h\x1b[2J1", "timestamp": "x\x07", "error": "no\nway"})
    assert line.isprintable() and line.endswith("h\\x1b[2J1: failed: no\\nway")
    assert progress_line("submitted", {"hostname": "_all", "timestamp": None}) == "  submitted to _all"


def test_keepalive_comments_let_the_reader_look_at_its_clock():
    wire = b": idle\n\n: idle\n\nid: 1\nevent: started\ndata: {}\n\n"
    assert list(parse_event_stream(io.BytesIO(wire), keepalive=True)) == [
        (None, None), (None, None), ("started", {})]


def test_job_run_following_an_idle_stream_gives_up_at_its_deadline():
    """A job that never ends (a host that never answers) must not hold `job run` past -t."""
    import itertools
    import time

    from osapi.cli import Environment
    from osapi.cli.client_job import follow_events

    class Idle:
        sent = 0

        def job_events(self, job_id):
            for _ in itertools.repeat(None, 10_000):  # bounded: an idle stream, a comment each time
                time.sleep(0.001)
                self.sent += 1
                yield None, None

    ctx = type("Ctx", (), {"env": Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO())})()
    idle = Idle()
    assert follow_events(ctx, idle, "j1", time.monotonic() + 0.05) is None
    assert idle.sent < 10_000  # it stopped reading at its deadline, not at the end of the stream
    assert ctx.env.stderr.getvalue() == ""  # comments print nothing
