"""``GET /metrics``: the API's counters and histograms in the Prometheus text format 0.0.4.

``Registry`` holds this process's counters and histograms (thread-safe: Waitress
threads and the NATS loop update them). Gauges are not kept here: at scrape
time they are read from the shared job store (``JobClient.stats()`` and
``workers()``, bounded by ``GAUGE_TIMEOUT``), so every API process of a cluster
reports the same jobs, dead letters and workers; when NATS cannot answer in
time they are left out of that scrape (``osapi_nats_connected`` says whether this
process is connected). Counters and histograms are per process (Prometheus sums
them over the API processes it scrapes).

Labels are bounded: ``route`` is the route pattern (``/api/v1/jobs/{job_id}``),
``unmatched`` for a path no route serves; ``method`` is one of ``METHODS`` or
``other``; ``operation`` is an operation type of the table.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GAUGE_TIMEOUT = 2.0  # seconds the gauges may take to read at scrape time
UNMATCHED = "unmatched"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = HTTP_BUCKETS):
        super().__init__(name, help, labels)
        self.bounds = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [counts per bucket..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0] * len(self.bounds) + [0.0, 0])
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for labels, series in items:
            for bound, count in zip(self.bounds, series):
                out.append(f"{self.name}_bucket{_labels(self.label_names, labels, (('le', _number(bound)),))} {count}")
            out.append(f"{self.name}_bucket{_labels(self.label_names, labels, (('le', '+Inf'),))} {series[-1]}")
            out.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, labels)} {series[-1]}")
        return out


def gauge(name: str, help: str, samples: list[tuple[dict[str, str], float]]) -> list[str]:
    """A gauge read at scrape time: its header and one line per ``(labels, value)``."""
    out = [f"# HELP {name} {_escape_help(help)}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        out.append(f"{name}{_labels(tuple(labels), tuple(labels.values()))} {_number(value)}")
    return out


class Registry:
    """This API process's counters and histograms (docs/api.md, Metrics)."""

    def __init__(self):
        self.http_requests = Counter("osapi_http_requests_total", "HTTP requests answered, by method, route "
                                     "pattern and status", ("method", "route", "status"))
        self.http_duration = Histogram("osapi_http_request_duration_seconds", "time to answer an HTTP request, "
                                       "by route pattern", ("route",), HTTP_BUCKETS)
        self.jobs_submitted = Counter("osapi_jobs_submitted_total", "jobs this API process stored, by operation "
                                      "type", ("operation",))
        self.job_duration = Histogram("osapi_job_duration_seconds", "submission to final status of the jobs this "
                                      "API process waited on (synchronous endpoints), by operation type",
                                      ("operation",), JOB_BUCKETS)
        self.broadcast_no_response = Counter("osapi_broadcast_no_response_total", "hosts a broadcast expected "
                                             "(from the worker registry) that did not answer it")

    def request(self, method: str, route: str, status: int | str, seconds: float) -> None:
        method = method.upper() if method.upper() in METHODS else "other"
        self.http_requests.inc(method, route, str(status))
        self.http_duration.observe(seconds, route)

    def submitted(self, operation: str) -> None:
        self.jobs_submitted.inc(operation)

    # JobClient.run()'s observer (osapi/job/client.py)
    def run_done(self, operation: str, seconds: float | None, no_response: int) -> None:
        if seconds is not None:
            self.job_duration.observe(seconds, operation)
        if no_response:
            self.broadcast_no_response.inc(amount=no_response)

    def render(self, gauges: list[str]) -> bytes:
        lines: list[str] = []
        for metric in (self.http_requests, self.http_duration, self.jobs_submitted, self.job_duration,
                       self.broadcast_no_response):
            lines += metric.lines()
        lines += gauges
        return ("\n".join(lines) + "\n").encode("utf-8")


def shared_gauges(bridge) -> list[str]:
    """The gauges from the shared store; only ``osapi_nats_connected`` when NATS cannot answer."""
    import asyncio

    lines: list[str] = []
    connected = bridge.connected
    if connected:
        async def both(client):
            return await asyncio.gather(client.stats(), client.workers())

        try:
            stats, workers = bridge.call(both, GAUGE_TIMEOUT)
        except Exception:  # noqa: BLE001 - a scrape shows what it can: the gauges are left out
            stats = None
        if stats is not None:
            lines += gauge("osapi_jobs", "jobs in the store by status",
                           [({"status": s}, n) for s, n in sorted((stats.get("status_counts") or {}).items())])
            lines += gauge("osapi_dlq_jobs", "jobs in the dead-letter stream", [({}, stats.get("dlq_count") or 0)])
            lines += gauge("osapi_workers", "live worker hosts in the registry",
                           [({}, len(workers.get("workers") or []))])
    lines += gauge("osapi_nats_connected", "1 when this API process is connected to NATS",
                   [({}, 1 if bridge.connected else 0)])
    return lines


def scrape(call):
    from osapi.api.routing import Reply

    body = call.services.metrics.render(shared_gauges(call.services.bridge))
    return Reply(200, body, {"Content-Type": CONTENT_TYPE})


def routes(cfg=None):
    from osapi.api import schemas
    from osapi.api.routing import Response, Route

    public = bool(cfg is not None and cfg.api.server.metrics.public)
    errors = schemas.error_responses(400) if public else schemas.error_responses(400, 401, 403)
    return [
        Route("GET", "/metrics", scrape, "Prometheus metrics of this API process", "meta",
              None if public else "read", prefix="",
              responses={200: Response("the Prometheus text format 0.0.4", {"type": "string"}, CONTENT_TYPE),
                         **errors},
              description="Counters and histograms of this API process (requests by method, route pattern and "
                          "status; request durations by route; jobs submitted by operation; durations of the "
                          "jobs it waited on; broadcast hosts that did not answer) and gauges read from the "
                          "shared job store at scrape time (jobs by status, dead letters, live worker hosts) "
                          "plus `osapi_nats_connected`. The store's gauges are left out when NATS cannot answer "
                          "within 2 s. `read` scope unless `api.server.metrics.public: true`.",
              operation_id="metrics"),
    ]
