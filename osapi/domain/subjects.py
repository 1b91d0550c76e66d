"""Targets and the JetStream subjects that carry jobs to workers (docs/jobs.md).

A target is what a caller names in ``target_hostname``:

``_any``
    one worker of the whole fleet, load-balanced (subject ``jobs.<kind>._any``)
``_all``
    every worker host (``jobs.<kind>._all``)
``key:value``
    every host whose label ``key`` equals ``value`` or starts with ``value.``
    (``jobs.<kind>.label.<key>.<v1>[.<v2>…]``); a worker with
    ``group: web.dev.us-east`` listens on ``label.group.web``,
    ``label.group.web.dev`` and ``label.group.web.dev.us-east``
anything else
    one host by name, dots allowed (``jobs.<kind>.host.<hostname>``); host
    names are compared case-insensitively, so the subject uses lower case.

``<kind>`` is ``query`` or ``modify`` from the operations table. The ``jobs``
prefix follows ``job.stream_subjects`` (``jobs.>`` → ``jobs``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

from osapi.config import NAME_RE
from osapi.domain.errors import InvalidJob
from osapi.domain.operations import MODIFY, QUERY

ANY = "_any"
ALL = "_all"
MAX_TARGET_LENGTH = 253

# The whole target syntax as one regular expression, ECMA-compatible so the OpenAPI document
# carries it as the ``pattern`` of every ``target_hostname``: ``parse_target`` accepts exactly
# what it matches (a test holds the two together), so the document and the API cannot drift.
_SEGMENT = r"[A-Za-z0-9_-]+"
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_FIRST_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"  # a leading _ is reserved
TARGET_PATTERN = (
    rf"^(?:{ANY}|{ALL}|{_SEGMENT}:{_SEGMENT}(?:\.{_SEGMENT})*|{_FIRST_HOST_LABEL}(?:\.{_HOST_LABEL})*)$"
)
# the targets that reach several hosts (``Target.broadcast``): what a rollout needs
BROADCAST_TARGET_PATTERN = rf"^(?:{ALL}|{_SEGMENT}:{_SEGMENT}(?:\.{_SEGMENT})*)$"
_TARGET_RE = re.compile(TARGET_PATTERN.replace("$", r"\Z"))

_TARGET_HELP = (
    "use _any, _all, key:value (a label; the value is dot-separated segments of "
    "[A-Za-z0-9_-], e.g. group:web.dev) or a hostname"
)


class Target(NamedTuple):
    """A parsed, valid target. ``kind`` is ``any``, ``all``, ``host`` or ``label``."""

    kind: str
    text: str  # canonical text: "_any", "_all", "web1.example.com", "group:web.dev"
    hostname: str | None = None
    label_key: str | None = None
    label_value: str | None = None

    @property
    def broadcast(self) -> bool:
        """True when many hosts may answer (``_all`` or a label)."""
        return self.kind in ("all", "label")

    @property
    def token(self) -> str:
        """The subject tokens after ``jobs.<kind>.``."""
        if self.kind == "any":
            return ANY
        if self.kind == "all":
            return ALL
        if self.kind == "host":
            return f"host.{host_token(self.hostname or '')}"
        return f"label.{self.label_key}.{self.label_value}"

    def matches(self, hostname: str, labels: Mapping[str, str] | None) -> bool:
        """Whether a worker with this hostname and these labels receives the target's jobs."""
        if self.kind in ("any", "all"):
            return True
        if self.kind == "host":
            return host_token(hostname) == host_token(self.hostname or "")
        value = (labels or {}).get(self.label_key or "")
        return isinstance(value, str) and (value == self.label_value or value.startswith(f"{self.label_value}."))

    def __str__(self) -> str:
        return self.text


def host_target(hostname: Any) -> Target:
    """The one-host target of a worker hostname; ``InvalidJob`` for anything that is not one
    (``_any``, a label, a wildcard: never a subject other than ``host.<hostname>``)."""
    target = parse_target(hostname)
    if target.kind != "host":
        raise InvalidJob(f"{hostname!r} is not a hostname")
    return target


def parse_target(target: Any) -> Target:
    """A ``Target``, or ``InvalidJob`` naming the bad value and what is allowed."""
    if target is None:
        return Target("any", ANY)
    if not isinstance(target, str):
        raise InvalidJob(f"target_hostname must be a string, got {type(target).__name__}; {_TARGET_HELP}")
    text = target
    if not text.strip():
        raise InvalidJob(f"target_hostname must not be empty; {_TARGET_HELP}")
    if len(text) > MAX_TARGET_LENGTH:
        raise InvalidJob(f"target_hostname is longer than {MAX_TARGET_LENGTH} characters; {_TARGET_HELP}")
    if not _TARGET_RE.match(text):
        raise InvalidJob(f"invalid target {target!r}: {_why_not(text)}; {_TARGET_HELP}")
    if text == ANY:
        return Target("any", ANY)
    if text == ALL:
        return Target("all", ALL)
    if ":" in text:
        key, _, value = text.partition(":")
        return Target("label", text, label_key=key, label_value=value)
    return Target("host", text, hostname=text)


def _why_not(text: str) -> str:
    """Which part of a target that ``TARGET_PATTERN`` refuses is wrong."""
    if text != text.strip():
        return "leading or trailing white space"
    if ":" in text:
        key, _, value = text.partition(":")
        if not NAME_RE.fullmatch(key):
            return f"label key {key!r} must match [A-Za-z0-9_-]+"
        return f"label value {value!r} must be dot-separated segments of [A-Za-z0-9_-]+"
    if text.startswith("_"):
        return "names starting with _ are reserved"
    return "not a hostname"


def host_token(hostname: str) -> str:
    """Host names are case-insensitive; subjects are not. Lower case on both sides."""
    return hostname.lower()


def prefix_of(stream_subjects: str) -> str:
    """``jobs.>`` → ``jobs``: the first tokens of ``job.stream_subjects``."""
    text = stream_subjects.strip()
    for suffix in (".>", ".*"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return text or "jobs"


def _check_kind(kind: str) -> str:
    if kind not in (QUERY, MODIFY):
        raise ValueError(f"kind must be {QUERY!r} or {MODIFY!r}, got {kind!r}")
    return kind


def subject_for(kind: str, target: Target | str, prefix: str = "jobs") -> str:
    """``jobs.<query|modify>.<_any|_all|host.<name>|label.<key>.<v1>[.<v2>…]>``."""
    parsed = target if isinstance(target, Target) else parse_target(target)
    return f"{prefix}.{_check_kind(kind)}.{parsed.token}"


def label_prefixes(value: str) -> list[str]:
    """``web.dev.us-east`` → ``[web, web.dev, web.dev.us-east]``."""
    parts = value.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def any_subject(prefix: str = "jobs") -> str:
    """What the fleet-wide ``_any`` consumer filters on."""
    return f"{prefix}.*.{ANY}"


def host_subjects(hostname: str, labels: Mapping[str, str] | None, prefix: str = "jobs") -> list[str]:
    """What one host's consumer filters on: ``_all``, its hostname and every label prefix."""
    subjects = [f"{prefix}.*.{ALL}", f"{prefix}.*.host.{host_token(hostname)}"]
    for key in sorted(labels or {}):
        for value in label_prefixes((labels or {})[key]):
            subject = f"{prefix}.*.label.{key}.{value}"
            if subject not in subjects:
                subjects.append(subject)
    return subjects

