"""Configuration: the defaults tree, file lookup, ``OSAPI_*`` overrides, validation.

README "Configuration". Every key is declared once in ``SPEC`` below with its default, its
type and a one-line comment; ``osapi.yaml`` at the repository root mirrors it (a
test keeps the two equal).

Lookup: ``-f PATH`` (must exist), else ``./osapi.yaml``, else
``/etc/osapi/osapi.yaml``, else the defaults alone. Environment variables override
the file: ``OSAPI_`` + the key path upper-cased, ``_`` between the parts
(``OSAPI_API_SERVER_PORT=9090``); lists are comma-separated, maps are
``k=v,k2=v2``. An unknown ``OSAPI_*`` variable is an error like an unknown key.

Loaded values are plain Python data in a ``Config`` tree with attribute access
(``cfg.api.server.port``). Durations (``30s``, ``2m``, ``24h``, ``7d``, also
combined ``1h30m`` and ``500ms``) are converted to float seconds.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from osapi.errors import ConfigError

DEFAULT_PATHS = (Path("osapi.yaml"), Path("/etc/osapi/osapi.yaml"))
ENV_PREFIX = "OSAPI_"

# Used with fullmatch only: ``re.match`` with ``$`` also accepts a trailing newline.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
LABEL_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$"
)
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# ---------------------------------------------------------------- value types


class Invalid(ValueError):
    """A value is wrong; the message says what was expected."""


def parse_duration(value: Any) -> float:
    """``"30s"`` -> 30.0. Accepts sequences like ``1h30m``; must be > 0."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise Invalid(f"must be a duration with a unit, such as 30s, 2m, 24h or 7d, got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise Invalid(f"must be a duration with a unit, such as 30s, 2m, 24h or 7d, got {value!r}")
    if total <= 0:
        raise Invalid(f"must be a duration greater than zero, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """30.0 -> ``"30s"``; the largest whole unit that fits, for messages and rendering."""
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{int(round(seconds * 1000))}ms"


def is_hostname(value: str) -> bool:
    return isinstance(value, str) and bool(HOSTNAME_RE.fullmatch(value))


def is_label_value(value: str) -> bool:
    return bool(value) and all(LABEL_SEGMENT_RE.fullmatch(seg) for seg in value.split("."))


class Type(NamedTuple):
    """How one key is checked and converted.

    ``kind`` is what the file must hold (for messages and for parsing the
    environment); ``check`` converts and validates, raising ``Invalid``.
    """

    kind: str  # bool | int | str | duration | list | map | str_or_list
    check: Callable[[Any], Any]


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {value!r}")
    return value


def _int(lo: int, hi: int | None = None) -> Type:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            upper = f" to {hi}" if hi is not None else " or more"
            raise Invalid(f"must be an integer from {lo}{upper}, got {value}")
        return value

    return Type("int", check)


def _str(validate: Callable[[str], str | None] | None = None) -> Type:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, got {value!r}")
        if validate is not None:
            problem = validate(value)
            if problem:
                raise Invalid(problem)
        return value

    return Type("str", check)


def _enum(*choices: str) -> Type:
    return _str(lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}")


def _name(value: str) -> str | None:
    return None if NAME_RE.fullmatch(value) else f"must match [A-Za-z0-9_-]+, got {value!r}"


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _hostname_or_empty(value: str) -> str | None:
    return None if value == "" or is_hostname(value) else f"must be a valid hostname, got {value!r}"


def _listen_host(value: str) -> str | None:
    if value in ("localhost", "0.0.0.0", "::"):
        return None
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    return None if is_hostname(value) else f"must be an IP address or hostname, got {value!r}"


def _http_url(value: str) -> str | None:
    if re.fullmatch(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?", value) or re.fullmatch(
        r"https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?(/\S*)?", value
    ):
        return None
    return f"must be an http:// or https:// URL such as http://127.0.0.1:8080, got {value!r}"


def redact_url(url: str) -> str:
    """nats://user:secret@host:4222 → nats://host:4222 (credentials never reach logs or answers)."""
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        scheme, rest = "", scheme
    if "@" in rest:  # NATS URLs have no path: everything up to the last @ is credentials
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _nats_url(value: str) -> str | None:
    if re.fullmatch(r"(nats|tls|ws|wss)://\S+", value):
        return None
    # never echo a token written into the URL
    return f"must be a nats:// URL such as nats://127.0.0.1:4222, got {redact_url(value)!r}"


def _file_path(value: str) -> str | None:
    """A path that goes into nats-server's configuration: no control characters (newline, NUL)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"must be a file path without control characters (newline, NUL, ...), got {value!r}"
    return None


PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_CERT_END = "-----END CERTIFICATE-----"


def _tls_ca(value: str) -> str | None:
    """``nats.tls.ca``: PEM text of certificates, or the path of a file holding them."""
    text = value.strip()
    if "-----BEGIN" in text:
        if (text.startswith(PEM_CERT_BEGIN) and text.endswith(PEM_CERT_END) and "\0" not in text
                and "PRIVATE KEY" not in text):
            return None
        return "must be the PEM text of CA certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) or a file path"
    problem = _file_path(value)
    if problem:
        return "must be the PEM text of CA certificates or a file path without control characters, " \
            f"got {value[:80]!r}"
    return None


def _secret(min_len: int = 0) -> Type:
    def validate(value: str) -> str | None:
        if value and len(value) < min_len:
            return f"must be at least {min_len} characters when set (got {len(value)})"
        return None

    return _str(validate)


def _list(item: Type, *, unique: bool = False, nonempty: bool = False) -> Type:
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise Invalid(f"must be a list, got {value!r}")
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item.check(element))
            except Invalid as exc:
                raise Invalid(f"item {i + 1}: {exc}") from None
        if unique and len(set(map(str, out))) != len(out):
            raise Invalid(f"must not repeat an item, got {value!r}")
        if nonempty and not out:
            raise Invalid("must not be empty")
        return out

    return Type("list", check)


def _labels(value: Any) -> dict:
    if not isinstance(value, dict):
        raise Invalid(f"must be a map of label to value, got {value!r}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not NAME_RE.fullmatch(key):
            raise Invalid(f"label key must match [A-Za-z0-9_-]+, got {key!r}")
        if not isinstance(val, str) or not is_label_value(val):
            raise Invalid(
                f"label {key!r}: value must be dot-separated segments of [A-Za-z0-9_-]+, got {val!r}"
            )
        out[key] = val
    return out


def _duration_type() -> Type:
    return Type("duration", parse_duration)


def _str_or_list(item: Callable[[str], str | None]) -> Type:
    single, many = _str(lambda v: None if v == "" else item(v)), _list(_str(item))

    def check(value: Any) -> str | list:
        return many.check(value) if isinstance(value, list) else single.check(value)

    return Type("str_or_list", check)


BOOL = Type("bool", _bool)
PORT = _int(1, 65535)
REPLICAS = _int(1, 5)
STORAGE = _enum("file", "memory")
DURATION = _duration_type()


# ---------------------------------------------------------------- the keys

# path -> (default, type, comment). The order is the order of osapi.yaml.
SPEC: dict[str, tuple[Any, Type, str]] = {
    "debug": (False, BOOL, "debug logging for every command"),
    "api.client.url": ("http://127.0.0.1:8080", _str(_http_url), "where `osapi client` sends requests"),
    "api.client.security.bearer_token": ("", _str(), "empty: use <state_dir>/secrets/admin.token if readable"),
    "api.server.host": ("127.0.0.1", _str(_listen_host), "address the REST API listens on"),
    "api.server.port": (8080, PORT, "port the REST API listens on"),
    "api.server.job_timeout": ("30s", DURATION, "how long a synchronous endpoint waits for workers"),
    "api.server.broadcast_quiet_period": ("3s", DURATION, "fallback only: wait after the last answer when the registry cannot tell"),
    "api.server.security.signing_key": ("", _secret(32), "HS256 key, 32+ characters; empty: use <state_dir>/secrets/signing_key"),
    "api.server.security.cors.allow_origins": ([], _list(_str(_nonempty)), "empty: no CORS headers at all; '*' allows any"),
    "api.server.metrics.public": (False, BOOL, "true: GET /metrics needs no token; false: it needs the read scope"),
    "nats.url": ("", _str_or_list(_nats_url), "what API and workers connect to; empty: derived from nats.server; a list for a cluster"),
    "nats.token": ("", _str(), "client auth token; empty: <state_dir>/secrets/nats.token if it exists"),
    "nats.tls.ca": ("", _str(_tls_ca), "CA the clients verify nats-server against: PEM text or a file; empty: <state_dir>/secrets/ca.pem if it exists"),
    "nats.user": ("", _str(lambda v: None if v == "" or NAME_RE.fullmatch(v) else f"must match [A-Za-z0-9_-]+, got {v!r}"),
                  "a fleet host's NATS user (from its bundle: osapi client fleet host add)"),
    "nats.password": ("", _str(), "that user's password"),
    "nats.creds": ("", _str(), "or the text of a NATS credentials file"),
    "nats.server.host": ("127.0.0.1", _str(_listen_host), "address nats-server listens on"),
    "nats.server.port": (4222, PORT, "port nats-server listens on"),
    "nats.server.store_dir": ("", _str(), "JetStream storage; empty: <state_dir>/nats"),
    "nats.server.binary": ("", _str(), "empty: the nats-server bundled in osapi.pyz, then PATH"),
    "nats.server.auth.token": ("", _str(), "empty: <state_dir>/secrets/nats.token (generated by supervise)"),
    "nats.server.cluster.name": ("", _str(lambda v: None if v == "" else _name(v)), "empty: no clustering"),
    "nats.server.cluster.host": ("127.0.0.1", _str(_listen_host), "address for cluster routes"),
    "nats.server.cluster.port": (6222, PORT, "port for cluster routes"),
    "nats.server.cluster.routes": ([], _list(_str(_nats_url)), "other cluster members, e.g. nats://10.0.0.2:6222"),
    "nats.server.tls.enabled": (False, BOOL, "true: nats-server requires TLS from clients and routes"),
    "nats.server.tls.cert_file": ("", _str(_file_path), "server certificate (PEM); empty: a CA and a certificate generated into <state_dir>/secrets/"),
    "nats.server.tls.key_file": ("", _str(_file_path), "private key of cert_file; set both or neither"),
    "nats.server.tls.ca_file": ("", _str(_file_path), "with cert_file: the CA routes verify each other against; empty: the system's CAs"),
    "job.stream_name": ("JOBS", _str(_name), "JetStream stream carrying job notifications"),
    "job.stream_subjects": ("jobs.>", _str(_nonempty), "subjects of that stream"),
    "job.kv_bucket": ("job-queue", _str(_name), "KV bucket of jobs and their status events"),
    "job.kv_response_bucket": ("job-responses", _str(_name), "KV bucket of worker results"),
    "job.consumer_name": ("jobs-worker", _str(_name), "prefix of the durable consumer names"),
    "job.stream.max_age": ("24h", DURATION, "how long a notification is kept"),
    "job.stream.max_msgs": (10000, _int(1), "how many notifications are kept"),
    "job.stream.storage": ("file", STORAGE, "file | memory"),
    "job.stream.replicas": (1, REPLICAS, "copies in a cluster (1-5)"),
    "job.stream.discard": ("old", _enum("old", "new"), "when full: drop the oldest (old) or refuse new (new)"),
    "job.consumer.max_deliver": (5, _int(1), "deliveries of one job before it goes to the DLQ"),
    "job.consumer.ack_wait": ("2m", DURATION, "a worker silent this long is taken for dead"),
    "job.consumer.max_ack_pending": (1000, _int(1), "unacknowledged jobs in flight per consumer"),
    "job.consumer.back_off": (["30s", "2m", "5m", "15m", "30m"], _list(DURATION), "wait before each redelivery"),
    "job.kv.ttl": ("24h", DURATION, "how long jobs, events and results are kept"),
    "job.kv.max_bytes": (104857600, _int(1), "size limit of each KV bucket"),
    "job.kv.storage": ("file", STORAGE, "file | memory"),
    "job.kv.replicas": (1, REPLICAS, "copies in a cluster (1-5)"),
    "job.dlq.max_age": ("7d", DURATION, "how long dead jobs are kept"),
    "job.dlq.max_msgs": (1000, _int(1), "how many dead jobs are kept"),
    "job.dlq.storage": ("file", STORAGE, "file | memory"),
    "job.dlq.replicas": (1, REPLICAS, "copies in a cluster (1-5)"),
    "job.worker.hostname": ("", _str(_hostname_or_empty), "empty: the system hostname"),
    "job.worker.labels": ({}, Type("map", _labels), "e.g. {group: web.dev.us-east}"),
    "job.worker.max_jobs": (10, _int(1, 1000), "jobs one worker runs at once"),
    "job.worker.dns.provider": ("auto", _enum("auto", "resolv_conf", "resolved"), "auto | resolv_conf | resolved"),
    "job.worker.dns.resolv_conf": ("/etc/resolv.conf", _str(_nonempty), "file the resolv_conf provider reads and writes"),
    "supervise.state_dir": ("", _str(), "empty: /var/lib/osapi as root, else ~/.local/state/osapi"),
    "supervise.programs": (["nats", "api", "worker"], _list(_enum("nats", "api", "worker"), unique=True, nonempty=True), "a worker-only fleet host: [worker]"),
    "supervise.workers": (1, _int(1, 64), "worker processes under supervise"),
    "audit.max_age": ("30d", DURATION, "how long the audit log (stream AUDIT) keeps an entry"),
    "audit.replicas": (1, REPLICAS, "copies of the audit log in a cluster (1-5)"),
}

ENV_NAMES = {ENV_PREFIX + path.replace(".", "_").upper(): path for path in SPEC}


def defaults_tree() -> dict:
    """The raw defaults as nested dicts, exactly what ``osapi.yaml`` holds."""
    tree: dict = {}
    for path, (default, _type, _comment) in SPEC.items():
        _set(tree, path, _copy(default))
    return tree


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


# ---------------------------------------------------------------- the tree


class Config:
    """A read-only view of one section: ``cfg.api.server.port``, ``cfg["api"]``."""

    __slots__ = ("_data", "_path", "source")

    def __init__(self, data: dict, path: str = "", source: str = "built-in defaults"):
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"no configuration key {self._join(name)}") from None
        if isinstance(value, dict) and self._join(name) != "job.worker.labels":
            return Config(value, self._join(name), self.source)
        return value

    __getitem__ = __getattr__

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("configuration is read-only")

    def _join(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def get(self, path: str) -> Any:
        node: Any = self
        for part in path.split("."):
            node = getattr(node, part)
        return node

    def as_dict(self) -> dict:
        return _deepcopy(self._data)

    def __repr__(self) -> str:
        return f"Config({self._path or '<root>'} from {self.source})"


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


# ---------------------------------------------------------------- loading


def find_file(explicit: str | None) -> Path | None:
    """The file to read: ``-f`` (must exist), else the first default path that exists."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise ConfigError(f"configuration file {explicit} does not exist", "check the -f/--osapi-file path")
        if path.is_dir():
            raise ConfigError(f"configuration file {explicit} is a directory", "give the path of a YAML file")
        return path  # a regular file, or e.g. /dev/null or a pipe: read as it is
    for path in DEFAULT_PATHS:
        if path.is_file():
            return path
    return None


def _read_yaml(path: Path) -> dict:
    import yaml  # only here: the CLI start-up path must stay light when no file exists

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"configuration file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _flatten(data: dict, source: str, prefix: str = "") -> dict[str, Any]:
    """Nested file data -> {dotted path: value}, refusing unknown keys and misplaced sections."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {key!r} under {prefix.rstrip('.') or 'the top level'} is not a string")
        if path in SPEC:
            flat[path] = value
        elif any(p.startswith(path + ".") for p in SPEC):
            if not isinstance(value, dict):
                if value is None:
                    continue  # an empty section, e.g. "api:" with nothing under it
                raise ConfigError(f"{source}: {path}: must be a section (a mapping of keys), got {value!r}")
            flat.update(_flatten(value, source, path + "."))
        else:
            raise ConfigError(f"{source}: unknown key {path}", _suggest(path))
    return flat


def _suggest(path: str) -> str | None:
    import difflib

    close = difflib.get_close_matches(path, list(SPEC), n=1)
    return f"did you mean {close[0]}?" if close else "see osapi.yaml for every key"


def _from_env(raw: str, kind: str) -> Any:
    """An environment string -> the value a YAML file would have held."""
    text = raw.strip()
    if kind == "bool":
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return raw
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return raw
    if kind == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "str_or_list":
        parts = [part.strip() for part in text.split(",") if part.strip()]
        return parts if len(parts) > 1 else text
    if kind == "map":
        out: dict[str, str] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise Invalid(f"must be key=value pairs separated by commas, got {raw!r}")
            out[key.strip()] = value.strip()
        return out
    return raw


def load(explicit_file: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the file, then ``OSAPI_*``: validated, or ``ConfigError``."""
    environ = os.environ if environ is None else environ
    path = find_file(explicit_file)
    values: dict[str, tuple[Any, str]] = {}
    if path is not None:
        source = f"configuration file {path}"
        for key, value in _flatten(_read_yaml(path), source).items():
            try:
                SPEC[key][1].check(value)  # a bad value in the file is an error even when overridden
            except Invalid as exc:
                raise ConfigError(f"{source}: {key}: {exc}") from None
            values[key] = (value, source)

    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = ENV_NAMES.get(name)
        source = f"environment variable {name}"
        if key is None:
            close = _suggest_env(name)
            raise ConfigError(f"{source}: no such configuration key", close)
        try:
            values[key] = (_from_env(raw, SPEC[key][1].kind), source)
        except Invalid as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None

    tree: dict = {}
    for key, (default, typ, _comment) in SPEC.items():
        value, source = values.get(key, (_copy(default), "built-in defaults"))
        try:
            checked = typ.check(value)
        except Invalid as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
        _set(tree, key, checked)
    return Config(tree, source=str(path) if path else "built-in defaults")


def _suggest_env(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(ENV_NAMES), n=1)
    return f"did you mean {close[0]}?" if close else "unset it, or see osapi.yaml for every key"


# ---------------------------------------------------------------- derived paths


def state_dir(cfg: Config) -> Path:
    """``supervise.state_dir``; empty: /var/lib/osapi as root, else ~/.local/state/osapi."""
    configured = cfg.supervise.state_dir
    if configured:
        return Path(configured).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/osapi")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "osapi"


def secret_path(cfg: Config, name: str) -> Path:
    return state_dir(cfg) / "secrets" / name


def read_secret(cfg: Config, name: str) -> str | None:
    """The stripped contents of ``<state_dir>/secrets/<name>``, or None if missing or
    unreadable; ``ConfigError`` when another user could have written it (see
    ``read_secret_file``)."""
    return read_secret_file(state_dir(cfg), name)


# ---------------------------------------------------------------- secrets in the state dir
#
# Every reader of a secret from the state dir (the client's admin.token, the API's
# signing_key, the nats.token of API, workers and nats-server, supervise itself)
# goes through ``read_secret_file``, and ``osapi supervise`` checks the whole
# directory with ``check_state_dir`` before it changes anything. The rule: the
# state dir, ``secrets/`` and each secret belong to this process's user (or
# root) and are not writable by group or others; a secret is a regular file, never
# a symbolic link (opened with O_NOFOLLOW); a directory that is a symbolic link
# must itself belong to this user or root. Anything else could hold a value
# another user planted -- a signing key that lets them sign admin tokens -- so it
# is refused (``ConfigError``, exit 2) with the command that fixes it.

SECRETS_DIR = "secrets"
SECRET_MAX_BYTES = 65536
_LAX = 0o022  # group- or other-writable


def trusted_owner(uid: int) -> bool:
    """Whether a file owned by ``uid`` may hold this process's secrets: its own user or root."""
    return uid in (os.geteuid(), 0)


def user_name(uid: int | None = None) -> str:
    import pwd

    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner(uid: int) -> str:
    return f"{user_name(uid)} (uid {uid})"


def _trusted_users() -> str:
    me = user_name()
    return me if os.geteuid() == 0 else f"{me} or root"


def _refuse(path: Path, problem: str, kind: str) -> ConfigError:
    import shlex

    q, me = shlex.quote(str(path)), user_name()
    if kind == "link":
        hint = f"if you made the link: chown -h {me}: {q}; else rm {q}"
    elif kind == "dir":
        hint = f"if it is yours: chown {me}: {q} && chmod 700 {q}"
    elif kind == "secret-link":
        hint = f"rm {q} and start `osapi supervise` to create a new one, or put the file itself there (chmod 600)"
    else:
        hint = (f"if you wrote it: chown {me}: {q} && chmod 600 {q}; "
                f"else rm {q} and start `osapi supervise` to create a new one")
    return ConfigError(f"refusing to use {path}: {problem}; another user could have planted or changed the secrets",
                       hint)


def _check_stat(path: Path, st: os.stat_result, kind: str, *, lax_ok: bool = False) -> None:
    """Owner and mode of an opened directory (``kind`` "dir") or secret ("secret")."""
    if not trusted_owner(st.st_uid):
        raise _refuse(path, f"it is owned by {_owner(st.st_uid)}, not by {_trusted_users()}", kind)
    if st.st_mode & _LAX and not (lax_ok and st.st_uid == os.geteuid()):
        raise _refuse(path, f"it is writable by group or others (mode {st.st_mode & 0o7777:04o})", kind)


def _open_dir(path: Path, name: str, dir_fd: int | None, *, lax_ok: bool = False) -> int | None:
    """An fd of the checked directory ``name`` (relative to ``dir_fd``); None if it is
    missing or this user cannot enter it."""
    import stat

    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # missing, a parent is not a directory, not searchable: nothing to read
        return None
    if stat.S_ISLNK(st.st_mode) and not trusted_owner(st.st_uid):
        raise _refuse(path, f"it is a symbolic link owned by {_owner(st.st_uid)}", "link")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # gone, not a directory, not searchable: nothing to read (supervise says why)
        return None
    try:
        _check_stat(path, os.fstat(fd), "dir", lax_ok=lax_ok)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_secrets_dir(state: Path, *, lax_ok: bool = False) -> int | None:
    """An fd of ``<state>/secrets`` after checking both directories; None if either is missing."""
    state_fd = _open_dir(state, str(state), None, lax_ok=lax_ok)
    if state_fd is None:
        return None
    try:
        return _open_dir(state / SECRETS_DIR, SECRETS_DIR, state_fd, lax_ok=lax_ok)
    finally:
        os.close(state_fd)


def _open_secret(path: Path, name: str, dir_fd: int) -> int | None:
    """An fd of the checked secret file ``name`` in ``dir_fd``; None if missing or unreadable."""
    import errno
    import stat

    try:
        # O_NONBLOCK: a FIFO planted in its place must not hang the reader
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "it is a symbolic link, and a secret must be a regular file", "secret-link") from None
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file", "secret")
        _check_stat(path, st, "secret")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_secret_file(state: Path, name: str) -> str | None:
    """The stripped text of ``<state>/secrets/<name>``; None when it is missing, empty,
    unreadable or not UTF-8. ``ConfigError`` (exit 2, naming the path and the fix)
    when the state dir, ``secrets/`` or the file belongs to another user or is
    writable by group or others, or the file is a symbolic link (see above)."""
    secrets_fd = _open_secrets_dir(state)
    if secrets_fd is None:
        return None
    try:
        fd = _open_secret(state / SECRETS_DIR / name, name, secrets_fd)
    finally:
        os.close(secrets_fd)
    if fd is None:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= SECRET_MAX_BYTES:
            chunk = os.read(fd, 8192)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    if size > SECRET_MAX_BYTES:
        raise ConfigError(f"{state / SECRETS_DIR / name} is larger than {SECRET_MAX_BYTES} bytes: "
                          "not a secret osapi wrote")
    try:
        return b"".join(chunks).decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def check_state_dir(state: Path, *, lax_ok: bool = False, entries: tuple[str, ...] = ()) -> None:
    """What every reader checks, for the whole state dir at once: the directory,
    ``secrets/`` and each file in it; and that each of ``entries`` (names in the
    state dir), where present, belongs to this user or root. Missing parts pass.
    ``lax_ok``: a directory of this user's that group or others can write passes
    (``osapi supervise`` checks with it before it changes anything, then tightens)."""
    import stat

    state_fd = _open_dir(state, str(state), None, lax_ok=lax_ok)
    if state_fd is None:
        return
    try:
        for entry in entries:
            if entry == SECRETS_DIR:
                continue  # checked in full below
            try:
                st = os.stat(entry, dir_fd=state_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if trusted_owner(st.st_uid):
                continue
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(state / entry, f"it is a symbolic link owned by {_owner(st.st_uid)}", "link")
            raise _refuse(state / entry, f"it is owned by {_owner(st.st_uid)}, not by {_trusted_users()}",
                          "dir" if stat.S_ISDIR(st.st_mode) else "secret")
        secrets_fd = _open_dir(state / SECRETS_DIR, SECRETS_DIR, state_fd, lax_ok=lax_ok)
    finally:
        os.close(state_fd)
    if secrets_fd is None:
        return
    try:
        for name in sorted(os.listdir(secrets_fd)):
            if name.startswith("."):
                continue  # a temporary file of create_secret's, not yet published
            fd = _open_secret(state / SECRETS_DIR / name, name, secrets_fd)
            if fd is not None:
                os.close(fd)
    finally:
        os.close(secrets_fd)


def signing_key(cfg: Config) -> str:
    """The JWT signing key: configured, else the state dir's; ``ConfigError`` when neither."""
    key = cfg.api.server.security.signing_key or read_secret(cfg, "signing_key")
    if not key:
        raise ConfigError(
            "no signing key: api.server.security.signing_key is empty and "
            f"{secret_path(cfg, 'signing_key')} is not readable",
            "set OSAPI_API_SERVER_SECURITY_SIGNING_KEY, or run `osapi supervise` once to create it",
        )
    if len(key) < 32:
        raise ConfigError(f"signing key from {secret_path(cfg, 'signing_key')} is shorter than 32 characters")
    return key


def nats_token(cfg: Config) -> str | None:
    """The token clients present to NATS: ``nats.token``, else the state dir's, else the
    server's own ``nats.server.auth.token`` (the same host runs both), else none."""
    return cfg.nats.token or read_secret(cfg, "nats.token") or cfg.nats.server.auth.token or None


def nats_server_token(cfg: Config) -> str | None:
    """The token nats-server requires: ``nats.server.auth.token``, else the state dir's."""
    return cfg.nats.server.auth.token or read_secret(cfg, "nats.token")


def nats_urls(cfg: Config) -> list[str]:
    """``nats.url`` as a list; empty: derived from ``nats.server.host/port``."""
    url = cfg.nats.url
    if isinstance(url, list):
        return list(url)
    if url:
        return [url]
    host = cfg.nats.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return [f"nats://{host}:{cfg.nats.server.port}"]
