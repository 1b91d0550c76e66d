"""A tiny HTTP client on ``http.client``: callers see exactly the status, headers and body sent."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self):
        return json.loads(self.raw) if self.raw else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def decoded(self):
        """The body as JSON when it is JSON, else as text; None when empty."""
        try:
            return self.json
        except ValueError:
            return self.raw.decode(errors="replace")


@dataclass
class Http:
    port: int
    host: str = "127.0.0.1"
    token: str | None = None
    timeout: float = 30.0

    def request(self, method: str, path: str, body=None, *, token: str | None | bool = True,
                headers: dict | None = None, raw: bytes | None = None, timeout: float | None = None) -> Resp:
        """``token=True`` uses ``self.token``; ``None``/``False`` sends no Authorization."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            hdrs = dict(headers or {})
            tok = self.token if token is True else (token or None)
            if tok:
                hdrs.setdefault("Authorization", f"Bearer {tok}")
            data = raw
            if data is None and body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Resp:
        return self.request("GET", path, **kw)

    def call(self, method: str, path: str, body=None, **kw) -> tuple[int, object]:
        """``(status, JSON body or text)`` of one request (the load tests' and the bench's shape)."""
        resp = self.request(method, path, body, **kw)
        return resp.status, resp.decoded()


def recv_all(sock: socket.socket, reads: int = 1000) -> bytes:
    """Everything ``sock`` receives until the peer closes (or resets), in at most ``reads`` reads.

    Each read is bounded by the socket's own timeout; a timeout ends the reading too.
    """
    chunks = []
    for _ in range(reads):
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
