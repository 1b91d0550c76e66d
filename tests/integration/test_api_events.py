"""``GET /api/v1/jobs/{id}/events`` against a real API, nats-server and three worker hosts.

The stream is read from a raw socket, so the tests see what arrives when: an
event must reach the client while its job is still running (Waitress must not
hold it back). No timing is asserted; every read is bounded by a socket timeout.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
from testkit import ApiProcess, Http, Stack, make_token, stop_all, wait_for

from osapi.api.events import MAX_EVENT_STREAMS

ADMIN = make_token(["admin"], subject="ops")
READ = make_token(["read"], subject="viewer")
HOSTS = ("ev-a", "ev-b", "ev-c")
READ_TIMEOUT = 30.0  # seconds a test waits for the next chunk of a stream before failing


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("events"), {"OSAPITEST_HOOKS": "1"}) as stack:
        for host in HOSTS:
            stack.start_worker(host, heartbeat="1s")
        api = stack.start_api()
        stack.wait_workers(HOSTS, api)
        yield api


class Stream:
    """One event stream on a raw socket: the status line, headers, then events as they come."""

    def __init__(self, port: int, job_id: str, token: str | None = ADMIN, last_event_id: str | None = None,
                 raw_path: str | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        path = raw_path or f"/api/v1/jobs/{job_id}/events"
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n").decode("latin1").split("\r\n")
        self.status = int(head[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.text = ""  # the decoded body read so far (chunked framing removed)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; got {self.buf[-500:]!r}")
            self.buf += data
        out, _, self.buf = self.buf.partition(marker)
        return out

    def _chunk(self) -> bytes | None:
        size = int(self._until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            return None
        while len(self.buf) < size + 2:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed inside a chunk")
            self.buf += data
        chunk, self.buf = self.buf[:size], self.buf[size + 2:]
        return chunk

    def body(self) -> bytes:
        """A non-200 answer's body (Content-Length framed)."""
        length = int(self.headers.get("content-length", "0"))
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        return self.buf[:length]

    def next_block(self) -> dict | None:
        """The next event or comment block as a dict (``comment`` for comment lines); None at the end."""
        while "\n\n" not in self.text:
            chunk = self._chunk()
            if chunk is None:
                return None
            self.text += chunk.decode()
        block, _, self.text = self.text.partition("\n\n")
        out: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            out.setdefault(field or "comment", value[1:] if value.startswith(" ") else value)
        if "data" in out:
            out["data"] = json.loads(out["data"])
        return out

    def events(self) -> list[dict]:
        """Every event up to the end of the stream (comments left out)."""
        out = []
        while (block := self.next_block()) is not None:
            if "event" in block:
                out.append(block)
        return out

    def close(self) -> None:
        self.sock.close()


def _submit(api, operation: dict, target: str) -> str:
    resp = Http(api.port, token=ADMIN).request("POST", "/api/v1/jobs",
                                               {"operation": operation, "target_hostname": target})
    assert resp.status == 201, resp.raw
    return resp.json["job_id"]


def _total_jobs(api) -> int:
    return Http(api.port, token=ADMIN).get("/api/v1/jobs/status").json["total_jobs"]


def test_a_job_on_three_hosts_streams_each_hosts_events_then_end(stack):
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "_all")
    stream = Stream(stack.port, job_id, token=READ)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers.get("transfer-encoding") == "chunked"
        events = stream.events()
    finally:
        stream.close()
    assert events[0]["event"] == "submitted" and events[0]["data"]["hostname"] == "_all"
    assert events[-1]["event"] == "end"
    end = events[-1]["data"]
    assert end["id"] == job_id and end["status"] == "completed"
    assert sorted(end["responses"]) == sorted(HOSTS)
    body = events[:-1]
    for host in HOSTS:
        own = [e["event"] for e in body if e["data"]["hostname"] == host]
        assert own == ["acknowledged", "started", "completed"], (host, own)
    ids = [int(e["id"]) for e in events[:-1]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert int(events[-1]["id"]) == ids[-1]
    for e in body:
        assert set(e["data"]) == {"timestamp", "hostname"} and e["data"]["timestamp"].endswith("Z")
    # the stream told what GET /jobs/{id} tells
    assert Http(stack.port, token=ADMIN).get(f"/api/v1/jobs/{job_id}").json == end


def test_last_event_id_resumes_after_that_event(stack):
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "_all")
    first = Stream(stack.port, job_id)
    try:
        everything = first.events()
    finally:
        first.close()
    middle = everything[len(everything) // 2]
    again = Stream(stack.port, job_id, last_event_id=middle["id"])
    try:
        later = again.events()
    finally:
        again.close()
    assert [(e["id"], e["event"]) for e in later[:-1]] == [
        (e["id"], e["event"]) for e in everything[:-1] if int(e["id"]) > int(middle["id"])]
    assert later[-1]["event"] == "end" and later[-1]["data"]["status"] == "completed"
    # after the last event: nothing but the end
    last = Stream(stack.port, job_id, last_event_id=everything[-2]["id"])
    try:
        assert [e["event"] for e in last.events()] == ["end"]
    finally:
        last.close()


def test_events_arrive_while_the_job_runs_and_a_failure_carries_its_error(stack):
    job_id = _submit(stack, {"type": "test.sleep", "data": {"seconds": 3, "fail_hosts": ["ev-b"]}}, "_all")
    stream = Stream(stack.port, job_id)
    try:
        started = None
        while started is None:
            block = stream.next_block()
            assert block is not None and block.get("event") != "end", block
            if block.get("event") == "started":
                started = block
        # the worker is still sleeping: the job is not final, the event came through anyway
        assert Http(stack.port, token=ADMIN).get(f"/api/v1/jobs/{job_id}").json["status"] == "processing"
        rest = stream.events()
    finally:
        stream.close()
    failed = [e for e in rest if e["event"] == "failed"]
    assert [e["data"]["hostname"] for e in failed] == ["ev-b"]
    assert failed[0]["data"]["error"]
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["status"] == "partial_failure"


@pytest.mark.parametrize("header", ["abc", "-1", "01", "1.5", "7 8", "1,2", "1" * 19, "", "0x10", "١٢"])
def test_a_bad_last_event_id_is_400_and_opens_nothing(stack, header):
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "ev-a")
    before = _total_jobs(stack)
    stream = Stream(stack.port, job_id, last_event_id=header)
    try:
        assert stream.status == 400, stream.body()
        body = json.loads(stream.body())
        assert body["error"] == "invalid header Last-Event-ID" and body["code"] == 400
    finally:
        stream.close()
    assert _total_jobs(stack) == before


@pytest.mark.parametrize("path", [
    f"/api/v1/jobs/{uuid.uuid4()}/events",  # well-formed, unknown
    "/api/v1/jobs/not-a-uuid/events",
    "/api/v1/jobs/a*b/events",
    "/api/v1/jobs/%3E/events",
    "/api/v1/jobs/a%00b/events",
    "/api/v1/jobs/..%2F..%2Fjobs/events",
    "/api/v1/jobs/a%0Ab/events",
    "/api/v1/jobs/" + "a" * 300 + "/events",
])
def test_unknown_and_hostile_job_ids_are_refused_and_change_nothing(stack, path):
    before = _total_jobs(stack)
    stream = Stream(stack.port, "", raw_path=path)
    try:
        assert stream.status in (400, 404), (path, stream.status)
        assert json.loads(stream.body())["code"] == stream.status
    finally:
        stream.close()
    assert _total_jobs(stack) == before


def test_a_stream_needs_the_read_scope(stack):
    stream = Stream(stack.port, str(uuid.uuid4()), token=None)
    try:
        assert stream.status == 401
    finally:
        stream.close()


def test_open_streams_are_bounded_health_answers_and_a_closed_stream_frees_its_slot(stack):
    # a job for a host that does not exist stays submitted: its streams stay open, idle
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "nobody-here")
    streams: list[Stream] = []
    try:
        for _ in range(MAX_EVENT_STREAMS):
            streams.append(Stream(stack.port, job_id))
            assert streams[-1].status == 200
        for s in streams:  # each has its stored event: they are all really open
            block = s.next_block()
            while "event" not in block:
                block = s.next_block()
            assert block["event"] == "submitted"
        http = Http(stack.port, token=ADMIN, timeout=10)
        assert (http.get("/health", token=None).status, http.get("/health", token=None).json) == (200, {"status": "ok"})
        assert http.get(f"/api/v1/jobs/{job_id}").status == 200
        assert http.get("/api/v1/system/hostname?target_hostname=ev-a").status == 200
        one_more = Stream(stack.port, job_id)
        try:
            assert one_more.status == 503
            assert one_more.headers.get("retry-after")
            assert json.loads(one_more.body())["error"] == "too many event streams open"
        finally:
            one_more.close()
        streams.pop().close()  # the client goes away: its slot comes back

        def reopened():
            s = Stream(stack.port, job_id)
            if s.status == 200:
                streams.append(s)
                return True
            s.close()
            return False

        wait_for(reopened, timeout=20, interval=0.2, what="a slot freed by a closed stream")
    finally:
        for s in streams:
            s.close()


def test_a_deleted_job_ends_its_stream(stack):
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "nobody-here")
    stream = Stream(stack.port, job_id)
    try:
        assert stream.next_block().get("comment")  # the opening comment
        assert Http(stack.port, token=ADMIN).request("DELETE", f"/api/v1/jobs/{job_id}").status == 204
        deadline = time.monotonic() + READ_TIMEOUT
        blocks = []
        while time.monotonic() < deadline:
            block = stream.next_block()
            if block is None:
                break
            blocks.append(block)
        assert block is None, blocks
        assert all(b.get("event") != "end" for b in blocks)
    finally:
        stream.close()


def test_a_job_deleted_by_another_api_process_is_a_404_here(stack, tmp_path):
    """This API process read the job (and keeps its body cached); another one deletes it:
    its event stream is then a 404 here, not a stream of a job that is gone."""
    job_id = _submit(stack, {"type": "system.hostname.get", "data": {}}, "nobody-here")
    http = Http(stack.port, token=ADMIN)
    assert http.get(f"/api/v1/jobs/{job_id}").status == 200  # read here: its body is cached here
    other = ApiProcess(tmp_path / "other-api", stack.env).start()
    try:
        other.wait_ready()
        assert Http(other.port, token=ADMIN).request("DELETE", f"/api/v1/jobs/{job_id}").status == 204
    finally:
        stop_all([other])
    stream = Stream(stack.port, job_id)
    try:
        assert stream.status == 404, stream.status
    finally:
        stream.close()
