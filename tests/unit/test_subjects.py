"""Targets and subjects (docs/jobs.md, Targets and subjects)."""

from __future__ import annotations

import pytest

from osapi.domain.errors import InvalidJob
from osapi.domain.subjects import (
    host_subjects, label_prefixes, parse_target, prefix_of, subject_for,
)


@pytest.mark.parametrize("text, kind, token", [
    ("_any", "any", "_any"),
    ("_all", "all", "_all"),
    ("web1", "host", "host.web1"),
    ("web1.example.com", "host", "host.web1.example.com"),
    ("WEB1.Example.com", "host", "host.web1.example.com"),
    ("host_1", "host", "host.host_1"),
    ("10-0-0-1", "host", "host.10-0-0-1"),
    ("group:web", "label", "label.group.web"),
    ("group:web.dev.us-east", "label", "label.group.web.dev.us-east"),
    ("zone_a:EU-1", "label", "label.zone_a.EU-1"),
])
def test_valid_targets(text, kind, token):
    target = parse_target(text)
    assert target.kind == kind and target.token == token
    assert target.broadcast == (kind in ("all", "label"))


def test_none_means_any():
    assert parse_target(None).kind == "any"


@pytest.mark.parametrize("bad", [
    "", "  ", "_foo", "_", "a b", "web1..example", "-web", "web$", "group:", ":web", "group:web..dev",
    "group:.web", "group:web.", "gr oup:web", "group:web:dev", "group:we b", "x" * 254, 42, 1.5, ["_all"],
    "a.b.c." + "d" * 64, "  _all  ", " web1", "web1\n", "group:web\n", "web1\x00", "web*", "web>",
    "group:web.*", "grp\n:web", "web1\u00e9", "\u0661",
])
def test_invalid_targets_name_the_value(bad):
    with pytest.raises(InvalidJob) as info:
        parse_target(bad)
    assert "target" in str(info.value)


def test_target_pattern_accepts_exactly_what_parse_target_accepts():
    """The OpenAPI document's pattern and the parser are one rule (ECMA `$` = end of text)."""
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from osapi.domain.subjects import MAX_TARGET_LENGTH, TARGET_PATTERN

    ecma = re.compile(TARGET_PATTERN.replace("$", r"\Z"))

    def accepted(text: str) -> bool:
        try:
            parse_target(text)
            return True
        except InvalidJob:
            return False

    alphabet = st.sampled_from(list("aZ09_-.:: \n\t\x00*>$\u00e9"))

    @settings(max_examples=800, deadline=None, database=None)
    @given(st.one_of(st.text(alphabet, max_size=12), st.from_regex(TARGET_PATTERN)))
    def check(text):
        documented = bool(ecma.search(text)) and 1 <= len(text) <= MAX_TARGET_LENGTH
        assert accepted(text) == documented, text

    check()


def test_subject_for_every_target_kind():
    assert subject_for("query", "_any") == "jobs.query._any"
    assert subject_for("modify", "_all") == "jobs.modify._all"
    assert subject_for("query", "db.example.com") == "jobs.query.host.db.example.com"
    assert subject_for("modify", "group:web.dev") == "jobs.modify.label.group.web.dev"
    assert subject_for("query", parse_target("w1"), prefix="osapi.jobs") == "osapi.jobs.query.host.w1"
    with pytest.raises(ValueError):
        subject_for("delete", "_any")
    with pytest.raises(InvalidJob):
        subject_for("query", "bad target")


def test_label_prefixes_are_whole_segments():
    assert label_prefixes("web") == ["web"]
    assert label_prefixes("web.dev.us-east") == ["web", "web.dev", "web.dev.us-east"]


def test_host_subjects_cover_all_host_and_every_label_prefix():
    subjects = host_subjects("Web1.example.com", {"group": "web.dev", "zone": "a"})
    assert subjects == [
        "jobs.*._all",
        "jobs.*.host.web1.example.com",
        "jobs.*.label.group.web",
        "jobs.*.label.group.web.dev",
        "jobs.*.label.zone.a",
    ]


@pytest.mark.parametrize("target, hostname, labels, expected", [
    ("_all", "w", {}, True),
    ("_any", "w", {}, True),
    ("w1", "W1", {}, True),
    ("w1", "w1.example.com", {}, False),
    ("group:web", "w", {"group": "web"}, True),
    ("group:web", "w", {"group": "web.dev"}, True),
    ("group:web", "w", {"group": "webby"}, False),
    ("group:web.dev", "w", {"group": "web"}, False),
    ("group:web", "w", {"role": "web"}, False),
    ("group:web", "w", None, False),
])
def test_target_matches_worker(target, hostname, labels, expected):
    assert parse_target(target).matches(hostname, labels) is expected


def test_subject_matching_agrees_with_target_matching():
    """A worker's filters receive a target's subject exactly when the target matches it."""
    def nats_match(pattern: str, subject: str) -> bool:
        p, s = pattern.split("."), subject.split(".")
        return len(p) == len(s) and all(a == "*" or a == b for a, b in zip(p, s))

    workers = [("w1", {"group": "web.dev.us-east"}), ("w2", {"group": "web"}), ("db.example.com", {"group": "db"})]
    for target in ["_all", "group:web", "group:web.dev", "group:db", "group:we", "w1", "db.example.com", "W2"]:
        parsed = parse_target(target)
        subject = subject_for("query", parsed)
        for hostname, labels in workers:
            got = any(nats_match(p, subject) for p in host_subjects(hostname, labels))
            assert got == parsed.matches(hostname, labels), (target, hostname)


def test_prefix_of_stream_subjects():
    assert prefix_of("jobs.>") == "jobs"
    assert prefix_of("osapi.jobs.>") == "osapi.jobs"
    assert prefix_of("jobs") == "jobs"
