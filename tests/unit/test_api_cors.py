"""CORS policy (docs/api.md, Authentication and CORS): allowed origin, '*', anything else gets nothing."""

from __future__ import annotations

from osapi.api.cors import CorsPolicy


def test_empty_list_means_no_headers_at_all():
    policy = CorsPolicy([])
    assert not policy.enabled
    assert policy.headers("https://a.example") == []
    assert policy.preflight_headers("https://a.example", ["GET"]) == []


def test_listed_origin_is_echoed_with_vary():
    policy = CorsPolicy(["https://ui.example", "http://localhost:3000/"])
    assert policy.headers("https://ui.example") == [
        ("Access-Control-Allow-Origin", "https://ui.example"), ("Vary", "Origin")]
    assert policy.allows("http://localhost:3000")
    assert policy.headers("https://evil.example") == []
    assert policy.headers(None) == []


def test_star_allows_any_origin_by_name():
    policy = CorsPolicy(["*"])
    assert policy.headers("https://x.example")[0] == ("Access-Control-Allow-Origin", "https://x.example")


def test_preflight_lists_methods_and_headers():
    headers = dict(CorsPolicy(["*"]).preflight_headers("https://x.example", ["GET", "POST"]))
    assert headers["Access-Control-Allow-Methods"] == "GET, OPTIONS, POST"
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, Idempotency-Key"
    assert headers["Access-Control-Allow-Origin"] == "https://x.example"
