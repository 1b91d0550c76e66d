"""Access-log forging (issue 12): a request's values cannot add a line to the API's log.

A real ``osapi api server start`` (Waitress) with its stderr going to a file, as
under the supervisor (``logs/api.log``), in the plain-text and the ``--json``
formats. No NATS is needed: every request here is answered before NATS would be
asked (404, 400, 401, Waitress's own 400s). Requests carry percent-encoded and
raw newlines, carriage returns, NUL bytes and Unicode line separators, in the
path, the method and the token's subject; each must be exactly one log line, and
the forged text must never start a line.
"""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import pytest
from testkit import ApiProcess, clean_env, free_port, make_token, recv_all

FORGED = "2030-01-01T00:00:00 INFO osapi.api.access: request method=GET path=/ok status=200 subject=admin"
FORGED_URL = FORGED.replace(" ", "%20")
LOGGER = "osapi.api.access"


def _raw_requests(token: str) -> list[tuple[str, bytes]]:
    """(marker, raw request): the marker appears in the forged part of each."""
    def get(target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
        return b"\r\n".join([method + b" " + target + b" HTTP/1.1", b"Host: x", *headers,
                             b"Connection: close", b"", b""])

    out = []
    for marker, tail in (
        ("LF", b"%0A"), ("CRLF", b"%0D%0A"), ("CR", b"%0D"), ("NUL", b"%00%0A"),
        ("LS", b"%E2%80%A8"), ("NEL", b"%C2%85"), ("VT", b"%0B"), ("RAW85", b"%85%0A"),
    ):
        forged = FORGED_URL.replace("path=/ok", f"path=/{marker}").encode()
        out.append((marker, get(b"/nope" + tail + forged)))  # 404 (no route)
        # 401 (no token): a job id may hold no "/"
        out.append((marker + "-401", get(b"/api/v1/jobs/x" + tail + forged.replace(b"/", b""))))
    # a valid token whose subject tries to add a line (a 400 before NATS is asked)
    out.append(("SUBJECT", get(b"/api/v1/jobs?limit=5000", b"Authorization: Bearer " + token.encode())))
    # Waitress's own 400s for broken requests (JsonErrorTask)
    out.append(("BARE-CR", get(b"/nope\r" + FORGED_URL.encode())))
    out.append(("RAW-BYTES", get(b"/nope\x85\xe2\x80\xa8\x00" + FORGED_URL.encode())))
    out.append(("METHOD", get(b"/nope", method=b"GE\x00T%0A" + FORGED_URL.encode())))
    return out


def _send(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        return recv_all(sock)  # the server closes (Connection: close)


def _run_api(workdir: Path, *flags: str) -> str:
    """Start an API with ``flags``, send every hostile request, stop it by pid; its log."""
    api = ApiProcess(workdir, clean_env(OSAPI_NATS_URL=f"nats://127.0.0.1:{free_port()}"), flags=flags)
    token = make_token(["admin"], subject=f"evil\n{FORGED}\r\x00")
    try:
        api.start()
        answers = {marker: _send(api.port, raw) for marker, raw in _raw_requests(token)}
    finally:
        api.stop()
    assert all(a.startswith(b"HTTP/1.") for a in answers.values()), answers
    return api.log_path.read_bytes().decode("utf-8", "surrogateescape")


def _check_one_line_per_request(text: str, is_access, expected: int) -> None:
    lines = text.splitlines()  # also splits at \x0b, \x1c-\x1e, \x85, \u2028: as log viewers may
    assert "\x00" not in text
    access = [line for line in lines if is_access(line)]
    assert len(access) == expected, "\n".join(lines)
    for line in lines:
        assert not line.startswith(FORGED[:20]), line  # the forged text never starts a line
        assert not line.lstrip().startswith(FORGED[20:40]), line


@pytest.fixture(scope="module")
def text_log(tmp_path_factory):
    return _run_api(tmp_path_factory.mktemp("log-text"))


@pytest.fixture(scope="module")
def json_log(tmp_path_factory):
    return _run_api(tmp_path_factory.mktemp("log-json"), "--json")


def test_each_request_is_one_plain_text_line(text_log):
    expected = len(_raw_requests("t"))
    _check_one_line_per_request(text_log, lambda line: f" {LOGGER}: request " in line, expected)
    access = [line for line in text_log.splitlines() if f" {LOGGER}: request " in line]
    assert sum(" status=401 " in line for line in access) == 8, access
    assert any('path="/nope\\\\x85\\\\n2030-01-01T00:00:00 INFO' in line for line in access), access  # not UTF-8
    assert any('path="/nope\\\\u20282030-01-01T00:00:00 INFO' in line for line in access), access  # UTF-8
    # escaped where the access log takes the path (\n), and as a quoted value (blanks in it) once more
    assert any('path="/nope\\\\n2030-01-01T00:00:00 INFO' in line for line in access), access
    assert any("\\x00" in line for line in access), access
    # a value with blanks is quoted: the forged "status=200" stays inside the path's value
    for line in access:
        tokens = shlex.split(line.split(f"{LOGGER}: request ", 1)[1])
        keys = [token.split("=", 1)[0] for token in tokens]
        assert keys in (["method", "path", "status", "duration_ms", "subject", "remote"],
                        ["method", "path", "status", "error", "remote"]), line
        assert dict(t.split("=", 1) for t in tokens)["status"] in ("400", "401", "404"), line
    assert any('subject="evil\\\\n2030-01-01T00:00:00 ' in line for line in access), access


def test_each_request_is_one_json_line(json_log):
    expected = len(_raw_requests("t"))
    lines = json_log.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) == len(lines), lines  # every line is one JSON object
    access = [e for e in entries if e.get("logger") == LOGGER]
    assert len(access) == expected, lines
    _check_one_line_per_request(json_log, lambda line: f'"logger": "{LOGGER}"' in line, expected)
    paths = [e.get("path", "") for e in access]
    assert any(p.startswith("/nope\\n2030-01-01T00:00:00") for p in paths), paths
    assert all("\n" not in str(v) and "\x00" not in str(v) for e in access for v in e.values()), access

