"""What a route is, and what its handler gets and gives back.

Every endpoint is one ``Route``: method, path (OpenAPI form, ``/jobs/{job_id}``),
the scope it needs, its query parameters, its body schema and its responses. The
app registers routes from this description and the OpenAPI document is built
from the very same objects, so the two cannot drift apart.

A handler is ``fn(call: Call) -> Reply``. ``Call`` gives it the already
validated path and query values and reads the JSON body on demand (bounded to
``MAX_BODY`` bytes); every bad input raises ``ApiError`` 400 or 413 naming the
field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from osapi.api import schemas
from osapi.api.schemas import Response
from osapi.api.errors import ApiError, bad_request
from osapi.domain import subjects
from osapi.domain.errors import InvalidJob

API_PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024  # bytes; larger bodies are refused with 413
MAX_JSON_DEPTH = 32

TARGET_DESCRIPTION = schemas.TARGET_DESCRIPTION


class InvalidValue(ValueError):
    """A parser refused a value; the message says what was expected.

    Its message follows the value's name ("must be from 1 to 1000, got 0"),
    unless ``whole`` says it is a sentence of its own ("invalid target 'x': …"):
    ``details(name)`` is what an error's ``details`` says, the name once at most.
    """

    def __init__(self, message: str, whole: bool = False):
        super().__init__(message)
        self.whole = whole

    def details(self, name: str) -> str:
        return str(self) if self.whole else f"{name} {self}"


@dataclass(frozen=True)
class Param:
    """One query parameter: how it is parsed and how the document describes it."""

    name: str
    schema: dict
    description: str
    parse: Callable[[str], Any] = str
    default: Any = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI form, relative to ``prefix``
    handler: Callable[["Call"], "Reply"]
    summary: str
    tag: str
    scope: str | None  # None: no token needed
    prefix: str = API_PREFIX
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()  # request headers the handler reads (validated like query parameters)
    body: dict | None = None  # JSON schema of the request body
    body_description: str = ""
    body_required: bool = True  # False: an empty body means the defaults
    responses: dict[int, Response] = field(default_factory=dict)
    description: str = ""
    operation_id: str = ""

    @property
    def full_path(self) -> str:
        return self.prefix + self.path

    def bottle_rule(self, routes: list["Route"] = ()) -> str:
        """The Bottle rule; a path parameter never matches a fixed segment of a sibling route.

        ``/jobs/{job_id}`` must not take ``/jobs/status``: ``DELETE /jobs/status`` is then a
        405 and ``OPTIONS /jobs/status`` allows only what ``/jobs/status`` itself serves.
        """
        mine = self.full_path.split("/")
        out = []
        for i, part in enumerate(mine):
            name = re.fullmatch(r"\{(\w+)\}", part)
            if not name:
                out.append(part)
                continue
            fixed = sorted({other[i] for other in (r.full_path.split("/") for r in routes)
                            if len(other) > i and other[:i] == mine[:i] and not other[i].startswith("{")})
            if fixed:
                alternatives = "|".join(re.escape(f) for f in fixed)
                out.append(f"<{name.group(1)}:re:(?!(?:{alternatives})(?:/|$))[^/]+>")
            else:
                out.append(f"<{name.group(1)}>")
        return "/".join(out)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able, or None for no body
    headers: dict[str, str] = field(default_factory=dict)
    # a streamed body instead (``body`` unused): an iterable of bytes with a ``close()``, sent as
    # it comes with this content type (``events.py``)
    stream: Any = None
    media_type: str = ""


# ---------------------------------------------------------------- parsers


def parse_int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,%d}" % len(str(hi)), text):
            raise InvalidValue(f"must be a whole number from {lo} to {hi}, got {text!r}")
        value = int(text)
        if not lo <= value <= hi:
            raise InvalidValue(f"must be from {lo} to {hi}, got {value}")
        return value

    return parse


def int_param(name: str, lo: int, hi: int, default: int, description: str) -> Param:
    """An integer query parameter: its parser and its documented schema from the same bounds."""
    return Param(name, {"type": "integer", "minimum": lo, "maximum": hi, "default": default},
                 description, parse_int(lo, hi), default)


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise InvalidValue(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def parse_target(text: str) -> subjects.Target:
    """A target (docs/jobs.md, Targets and subjects), parsed by the job system's own parser.

    The one parse of a target a request names: the handler passes the ``Target`` inward.
    """
    if not text:
        raise InvalidValue("must not be empty (use _any, _all, key:value or a hostname)")
    try:
        return subjects.parse_target(text)
    except InvalidJob as exc:
        raise InvalidValue(str(exc), whole=True) from None  # "invalid target 'x': why; what to use"


TARGET_PARAM = Param(
    "target_hostname",
    {**schemas.TARGET, "default": subjects.ANY},
    TARGET_DESCRIPTION,
    parse_target,
    subjects.Target("any", subjects.ANY),
)


# ---------------------------------------------------------------- the call


class Call:
    """One request as a handler sees it."""

    def __init__(self, route: Route, environ: dict, path_args: dict, claims, services):
        self.route = route
        self.environ = environ
        self.path = path_args
        self.claims = claims
        self.services = services
        self.given: frozenset[str] = frozenset()  # query parameters the client gave
        self.query = self._parse_query()
        self.headers = self._parse_headers()  # the declared headers, parsed (absent: the default)
        self._body: Any = _UNREAD

    # -- query

    def _parse_query(self) -> dict[str, Any]:
        from urllib.parse import parse_qsl

        raw = self.environ.get("QUERY_STRING", "")
        try:
            pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False,
                              encoding="utf-8", errors="strict", max_num_fields=50)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request("invalid query string", str(exc)) from None
        known = {p.name: p for p in self.route.query}
        values: dict[str, Any] = {}
        for name, text in pairs:
            param = known.get(name)
            if param is None:
                accepted = ", ".join(known) or "none"
                raise bad_request(f"unknown query parameter {name}",
                                  f"{self.route.method} {self.route.full_path} accepts: {accepted}")
            if name in values:
                raise bad_request(f"invalid query parameter {name}", "given more than once")
            try:
                values[name] = param.parse(text)
            except InvalidValue as exc:
                raise bad_request(f"invalid query parameter {name}", exc.details(name)) from None
        self.given = frozenset(values)
        for param in self.route.query:
            values.setdefault(param.name, param.default)
        return values

    # -- headers

    def _parse_headers(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.route.headers:
            text = self.environ.get("HTTP_" + param.name.upper().replace("-", "_"))
            if text is None:
                values[param.name] = param.default
                continue
            try:
                values[param.name] = param.parse(text)
            except InvalidValue as exc:
                raise bad_request(f"invalid header {param.name}", exc.details(param.name)) from None
        return values

    # -- body

    def body(self) -> Any:
        """The parsed JSON body (read once, at most ``MAX_BODY`` bytes)."""
        if self._body is _UNREAD:
            self._body = parse_json(read_body(self.environ))
        return self._body

    def body_object(self) -> dict:
        body = self.body()
        if body is None:
            raise bad_request("request body is required", "send a JSON object")
        if not isinstance(body, dict):
            raise bad_request("invalid request body", f"must be a JSON object, got {_json_type(body)}")
        return body

    @property
    def subject(self) -> str | None:
        return self.claims.subject if self.claims is not None else None


_UNREAD = object()


def read_body(environ: dict) -> bytes:
    """The request body, refusing more than ``MAX_BODY`` bytes with 413.

    Waitress already refuses larger bodies before the app runs; this is the
    second line for any other WSGI server and for lying ``Content-Length``s.
    """
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if raw_length.strip():
        try:
            length = int(raw_length)
        except ValueError:
            raise bad_request("invalid Content-Length header", f"got {raw_length!r}") from None
        if length < 0:
            raise bad_request("invalid Content-Length header", f"got {raw_length!r}")
    else:
        length = 0
    if length > MAX_BODY:
        raise too_large(length)
    if length == 0:
        return b""
    stream = environ["wsgi.input"]
    data = stream.read(min(length, MAX_BODY + 1))
    if len(data) > MAX_BODY:
        raise too_large(len(data))
    return data


def too_large(size: int) -> ApiError:
    return ApiError(413, "request body too large",
                    f"the body has {size} bytes; the limit is {MAX_BODY} bytes (1 MiB)")


def parse_json(data: bytes) -> Any:
    """The body as JSON; None for an empty body; 400 naming the problem otherwise."""
    if not data.strip():
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request("malformed JSON body", f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise bad_request("malformed JSON body", f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise bad_request("malformed JSON body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except InvalidValue as exc:
        raise bad_request("malformed JSON body", str(exc)) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise bad_request("malformed JSON body", f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidValue(f"{name} is not valid JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def json_type(value: Any) -> str:
    return _json_type(value)


def check_fields(body: dict, allowed: set[str], where: str = "request body") -> None:
    """400 naming the first field the schema does not know."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]} in the {where}",
                          f"allowed fields: {', '.join(sorted(allowed)) or 'none'}")


def dry_run_field(body: dict, op) -> bool:
    """The body's ``dry_run`` (a boolean; given at all only for a modify operation), or 400."""
    if "dry_run" not in body:
        return False
    value = body["dry_run"]
    if not isinstance(value, bool):
        raise bad_request("invalid field dry_run", f"dry_run must be true or false, got {json_type(value)}")
    from osapi.domain import operations

    try:
        operations.check_dry_run(op)
    except operations.InvalidData as exc:
        raise bad_request("invalid field dry_run", f"{exc}; leave dry_run out") from None
    return value
