"""``osapi.api.metrics``: the exposition format, read back by prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from osapi.api.metrics import Registry, gauge


def parse(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_escaped_label_values_and_histograms_parse_back_exactly():
    registry = Registry()
    hostile = 'a"b\\c\nd'
    registry.request("get", "/api/v1/jobs/{job_id}", 200, 0.02)
    registry.request("BREW", "unmatched", 404, 7.0)  # an unknown method is "other": no label explosion
    registry.submitted(hostile)
    registry.run_done("system.hostname.get", 0.3, 2)
    registry.run_done("system.hostname.get", None, 1)  # nobody answered: no duration, still counted
    text = registry.render(gauge("osapi_jobs", "jobs\nby status", [({"status": "failed"}, 3)])).decode()
    samples = parse(text)
    assert samples["osapi_http_requests_total", frozenset(
        {"method": "GET", "route": "/api/v1/jobs/{job_id}", "status": "200"}.items())] == 1
    assert samples["osapi_http_requests_total", frozenset(
        {"method": "other", "route": "unmatched", "status": "404"}.items())] == 1
    assert samples["osapi_jobs_submitted_total", frozenset({"operation": hostile}.items())] == 1
    route = frozenset({"route": "/api/v1/jobs/{job_id}"}.items())
    assert samples["osapi_http_request_duration_seconds_count", route] == 1
    assert samples["osapi_http_request_duration_seconds_sum", route] == 0.02
    assert samples["osapi_http_request_duration_seconds_bucket", route | {("le", "0.01")}] == 0
    assert samples["osapi_http_request_duration_seconds_bucket", route | {("le", "0.025")}] == 1
    assert samples["osapi_http_request_duration_seconds_bucket", route | {("le", "+Inf")}] == 1
    op = frozenset({"operation": "system.hostname.get"}.items())
    assert samples["osapi_job_duration_seconds_count", op] == 1
    assert samples["osapi_broadcast_no_response_total", frozenset()] == 3
    assert samples["osapi_jobs", frozenset({"status": "failed"}.items())] == 3
    assert text.endswith("\n") and "\n\n" not in text
