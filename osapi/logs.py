"""Logging to stderr: readable lines, JSON lines with ``--json``, debug with ``-d``.

One record is one line, whatever its values hold: a request path, a header or an
error message that echoes input cannot add a line of its own (a forged access-log
line). The text format writes every character that could break or hide a line --
control characters (newline, carriage return, NUL, C1 controls), line and
paragraph separators, invisible format characters -- as a backslash escape
(``\\n``, ``\\x00``, ``\\u2028``); a field value holding a blank or a double quote
is written as a JSON string (``path="/a b"``), so a value cannot forge another
``key=value`` field either. A traceback keeps its lines, each indented, so none
can pass for a record. JSON lines escape the same characters as JSON does.

``request_value`` is for values taken from an HTTP request before they are
logged at all (the access log): WSGI text decoded as UTF-8 where it is, escaped
and cut to ``REQUEST_VALUE_LIMIT`` characters.
"""

from __future__ import annotations

import json
import logging
import sys
import time

REQUEST_VALUE_LIMIT = 1024
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character (all but the blank) as a backslash escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def request_value(value: object, limit: int = REQUEST_VALUE_LIMIT) -> str:
    """A value from a request, fit for a log line: one line, at most ``limit`` characters (+ a marker)."""
    text = value if isinstance(value, str) else str(value)
    try:  # WSGI carries the request's bytes as latin-1 text
        text = text.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        pass
    text = escape(text)
    if len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit} chars)"
    return text


def _field_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or " " in text or '"' in text:
        return escape(json.dumps(text, ensure_ascii=False))
    return escape(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: control characters, U+2028/U+2029 and the rest become \u escapes
        return json.dumps(entry, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = escape(self.formatMessage(record))
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            line += " " + " ".join(f"{escape(str(k))}={_field_value(v)}" for k, v in extra.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                line += "".join(f"\n    {escape(part)}" for part in block.split("\n"))
        return line


def setup(debug: bool = False, json_lines: bool = False, stream=None) -> None:
    """Configure the root logger once per process (again replaces the handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_osapi", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._osapi = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        # the libraries' chatter is only worth reading when debugging
        for noisy in ("asyncio", "nats", "waitress.queue"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
