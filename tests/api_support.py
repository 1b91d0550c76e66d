"""Helpers for the REST API tests that need no server: a WSGI call in-process, the OpenAPI checks.

Processes (nats-server, API, workers), tokens and the HTTP client are in testkit/.
"""

from __future__ import annotations

import io

from testkit import Resp


def wsgi_call(app, method: str, path: str, *, query: str = "", body: bytes = b"",
              headers: dict[str, str] | None = None, content_length: str | None = None) -> Resp:
    """Call a WSGI app in-process (unit tests of the app without a server)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    seen: dict = {}

    def start_response(status, hdrs, exc_info=None):
        seen["status"], seen["headers"] = status, hdrs

    chunks = app(environ, start_response)
    data = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return Resp(int(seen["status"].split()[0]), {k.lower(): v for k, v in seen["headers"]}, data)


def schema_validator(document: dict, schema: dict):
    """A jsonschema validator for ``schema`` whose ``#/components/...`` refs resolve in ``document``."""
    from jsonschema import Draft202012Validator

    root = dict(schema)
    root["components"] = document["components"]
    return Draft202012Validator(root)


def response_schema(document: dict, method: str, path_template: str, status: int) -> dict:
    op = document["paths"][path_template][method.lower()]
    resp = op["responses"][str(status)]
    return resp["content"]["application/json"]["schema"]


def check_against_document(document: dict, method: str, path_template: str, resp: Resp) -> None:
    """Assert that ``resp`` is documented: status listed, body valid against its schema."""
    op = document["paths"][path_template][method.lower()]
    assert str(resp.status) in op["responses"], f"{method} {path_template} answered undocumented {resp.status}"
    content = op["responses"][str(resp.status)].get("content")
    if content is None:
        assert resp.raw == b"", f"{method} {path_template} {resp.status} should have no body"
        return
    schema = content["application/json"]["schema"]
    errors = sorted(schema_validator(document, schema).iter_errors(resp.json), key=str)
    assert not errors, f"{method} {path_template} {resp.status}: {errors[0].message} at {list(errors[0].path)}"
