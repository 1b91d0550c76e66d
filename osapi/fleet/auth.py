"""Each enrolled host's nats-server user, its permissions, and the file they are rendered into.

A control-plane node whose nats-server requires auth (``osapi nats server start``
with a token) runs with ``users`` rather than a bare ``token``: the control plane
is the user ``osapi`` whose password is the NATS token (full permissions), and
every enrolled host is one more user limited to what its worker does (README.md,
"Fleet hosts", lists the allowed and refused actions). The list lives in
``<state_dir>/nats-users.conf``, included by ``nats-server.conf``; the
enrolled hosts' part is also kept in ``nats-users.json`` (same dir, 0600) so
that a restart of nats-server renders the file again with the current token.
Both are written atomically, mode 0600. Neither holds a password: each is a
bcrypt hash (``osapi.fleet.bcrypt``, which says why its cost is the lowest),
a host's made once when it is enrolled (its entry keeps only the hash), the
control plane's when the file is written with a token it does not hold yet. ``reload`` makes the node's
nats-server re-read them (SIGHUP): clients of a removed user, or of a changed
password, are disconnected by the server itself.

Every value that reaches the file is checked against a strict pattern first
(``check_entry``: user, password hash, hostname) and then quoted as a JSON string,
so nothing enrolled can close a block, start a new key or ``include`` a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
from pathlib import Path
from typing import Iterable

from osapi.config import is_hostname
from osapi.fleet import bcrypt

CONTROL_USER = "osapi"
USER_PREFIX = "osapi-host-"
USER_RE = re.compile(r"^osapi-host-[0-9a-f]{16}$")
PASSWORD_RE = re.compile(r"^[0-9a-f]{48}$")
USERS_CONF = "nats-users.conf"
USERS_JSON = "nats-users.json"
MAX_HOSTNAME = 253


class InvalidHost(ValueError):
    """An enrollment value that is refused; the message says why."""


def check_hostname(value) -> str:
    """The enrolled form of a hostname (lower case), exactly as workers validate theirs; ``InvalidHost`` otherwise."""
    if not isinstance(value, str):
        raise InvalidHost(f"hostname must be a string, got {type(value).__name__}")
    if not is_hostname(value) or value.startswith("_"):
        shown = value[:80]
        raise InvalidHost(f"{shown!r} is not a valid hostname: dot-separated labels of letters, digits, '-' "
                          "and '_' (not first), 1-63 characters each, 253 in all")
    return value.lower()


def new_credentials() -> tuple[str, str]:
    """A fresh (user, password): both random, the user an opaque token (not the hostname: see ``permissions``)."""
    return USER_PREFIX + secrets.token_hex(8), secrets.token_hex(24)


def hash_password(password: str) -> str:
    """The bcrypt hash nats-server keeps of a host's password (``check_entry``'s ``password_hash``)."""
    if not isinstance(password, str) or not PASSWORD_RE.fullmatch(password):
        raise InvalidHost("invalid NATS password")
    return bcrypt.hashpw(password)


def inbox_prefix(user: str) -> str:
    """The inbox prefix a fleet host's connection uses (its own subtree, see ``permissions``)."""
    return f"_INBOX.{user}"


def permissions(names, hostname: str, user: str) -> dict:
    """The nats-server permissions of an enrolled host (its worker's every NATS action, nothing more).

    ``names``: ``osapi.job.setup.Names``. Subjects that carry the hostname end
    with it or hold it between fixed positions, so ``a`` never matches ``a.b``
    (``*`` is one token); the inbox is under the opaque user name for the same
    reason. Reading job bodies and events is a direct get on the jobs bucket's
    stream (key in the subject or in the body), and a get from its leader to
    confirm a miss (``Store._job_from_leader``); the responses bucket is not
    readable. ``allow_responses``: the host may answer a request it received
    (another instance's "do you run job J?").
    """
    jobs_stream = names.kv_stream(names.jobs_bucket)
    host_consumer = names.host_consumer(hostname)
    publish = [
        f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.any_consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{host_consumer}",
        f"$JS.ACK.{names.stream}.{names.any_consumer}.>",
        f"$JS.ACK.{names.stream}.{host_consumer}.>",
        f"$JS.API.DIRECT.GET.{jobs_stream}",
        f"$JS.API.DIRECT.GET.{jobs_stream}.>",
        f"$JS.API.STREAM.MSG.GET.{jobs_stream}",  # a direct get's miss, confirmed by the leader: no new data
        f"$JS.API.STREAM.INFO.{jobs_stream}",
        f"$KV.{names.jobs_bucket}.status.*.*.{hostname}.*",
        f"$KV.{names.responses_bucket}.*.{hostname}",
        f"$KV.{names.registry_bucket}.{hostname}.*",
        "_osapi.worker.*.running",
    ]
    subscribe = [f"{inbox_prefix(user)}.>", "_osapi.worker.*.running"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}


def check_entry(entry: dict) -> dict:
    """``{user, password_hash, hostname}`` of an enrolled host, each matching its pattern; ``InvalidHost`` otherwise.

    ``password_hash``: a bcrypt hash (``bcrypt.HASH_RE``: ``$``, ``.``, ``/``, letters
    and digits only); a plain ``password`` is never rendered.
    """
    user, hashed, hostname = entry.get("user"), entry.get("password_hash"), entry.get("hostname")
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise InvalidHost(f"invalid NATS user {str(user)[:40]!r}")
    if not bcrypt.is_hash(hashed):
        raise InvalidHost("invalid NATS password hash (a bcrypt hash is expected)")
    if check_hostname(hostname) != hostname:
        raise InvalidHost(f"hostname {hostname!r} is not in its enrolled (lower-case) form")
    return {"user": user, "password_hash": hashed, "hostname": hostname}


def _quote(value: str) -> str:
    return json.dumps(value)


def render_users(control_hash: str, hosts: Iterable[dict], names) -> str:
    """The text of ``nats-users.conf``: ``users: [...]`` (the control plane, then each host, by hostname).

    ``control_hash``: user ``osapi``'s password as nats-server keeps it (``control_password``).
    """
    if not control_hash:
        raise InvalidHost("the control plane's NATS password (the NATS token) is empty")
    lines = ["# written by osapi (fleet enrollment); edits are overwritten", "users: ["]
    lines.append(f"  {{user: {_quote(CONTROL_USER)}, password: {_quote(control_hash)}}}")
    for entry in sorted((check_entry(h) for h in hosts), key=lambda e: e["hostname"]):
        perms = permissions(names, entry["hostname"], entry["user"])
        lines.append(f"  {{user: {_quote(entry['user'])}, password: {_quote(entry['password_hash'])}, "
                     f"permissions: {json.dumps(perms, sort_keys=True)}}}")
    lines.append("]")
    return "\n".join(lines) + "\n"


_CONTROL_LINE = re.compile(r'^  \{user: "' + CONTROL_USER + r'", password: "([^"\\]*)"\}$', re.MULTILINE)
_control_hash: tuple[bytes, str] | None = None  # (sha256 of the token, its bcrypt hash): hashed once per process


def control_password(token: str, current_text: str = "") -> str:
    """User ``osapi``'s password in the users file: the bcrypt hash of the NATS token.

    The hash already in the file (``current_text``) is kept when it is the token's
    (checked once per process), so rewriting the file with the same token does not
    change it (and no reload follows). A token longer than 72 bytes stays as it is:
    bcrypt reads no further, nats-server then compares it whole (and warns about a
    plaintext password); the generated token has 64 characters.
    """
    global _control_hash
    if not token:
        raise InvalidHost("the control plane's NATS password (the NATS token) is empty")
    if len(token.encode("utf-8")) > bcrypt.MAX_KEY:
        return token
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    known = _control_hash[1] if _control_hash and _control_hash[0] == digest else None
    found = _CONTROL_LINE.search(current_text)
    current = found.group(1) if found else None
    if current is not None and bcrypt.is_hash(current) and (current == known or bcrypt.checkpw(token, current)):
        known = current
    elif known is None:
        known = bcrypt.hashpw(token)
    _control_hash = (digest, known)
    return known


def users_paths(directory: Path) -> tuple[Path, Path]:
    return Path(directory) / USERS_CONF, Path(directory) / USERS_JSON


def load_hosts(json_path: Path) -> list[dict]:
    """The enrolled hosts last rendered on this node (``nats-users.json``); [] when none or unreadable."""
    try:
        data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for item in data if isinstance(data, list) else []:
        try:
            out.append(check_entry(item if isinstance(item, dict) else {}))
        except InvalidHost:
            continue
    return out


def write_users(directory: Path, token: str, hosts: Iterable[dict], names) -> bool:
    """Write both files (0600, atomically); False when the configuration text is unchanged (nothing written).

    ``token``: the NATS token, user ``osapi``'s password (written as its hash: ``control_password``).
    """
    from osapi.process import write_private

    hosts = [check_entry(h) for h in hosts]
    conf, sidecar = users_paths(directory)
    try:
        current = conf.read_text(encoding="utf-8")
    except OSError:
        current = ""
    text = render_users(control_password(token, current), hosts, names)
    if text == current:
        return False
    write_private(sidecar, json.dumps(sorted(hosts, key=lambda e: e["hostname"]), indent=1) + "\n")
    write_private(conf, text)
    return True


def reload(pid: int) -> None:
    """Make the nats-server ``pid`` reload its configuration (SIGHUP); ``ProcessLookupError`` if it is gone."""
    os.kill(pid, signal.SIGHUP)
