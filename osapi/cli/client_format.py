"""How ``osapi client`` shows API answers to people: one table row per host.

Pure functions from decoded API bodies (README "REST API") to text; ``--json``
bypasses all of this and prints the body itself. Byte sizes are human-readable
(``osapi.cli.output.human_bytes``), times are local. A host that failed keeps its
row: the data columns stay empty and an ERROR column says why.

Each operation declares its table (``Operation.view`` in ``osapi.domain.operations``:
columns, or the name of a ``view_*`` function here for tables that are more than
columns); ``VIEWS`` maps every operation type to it, so ``osapi client system disk``
and ``osapi client job run`` of a ``system.disk.get`` job print the same table.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, Callable, Sequence

from osapi.cli.output import human_bytes, key_values, table

Column = tuple[str, Callable[[dict], Any]]

JOB_STATUSES = ("submitted", "processing", "completed", "failed", "partial_failure")


# ---------------------------------------------------------------- small values


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 string (any fraction length, ``Z`` or offset) -> aware datetime, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat takes at most 6 fraction digits
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{(digits + '000000')[:6]}{rest}"
    try:
        moment = dt.datetime.fromisoformat(text.replace("T", " ", 1))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def local_time(value: Any) -> str:
    """``2024-05-01T12:00:00Z`` -> ``2024-05-01 14:00:00`` in the local zone; unparseable passes through."""
    moment = parse_time(value)
    if moment is None:
        return "" if value in (None, "") else str(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(value: Any, now: float | None = None) -> str:
    """How long before ``now`` the RFC 3339 time ``value`` was: ``4s ago``, ``3m ago``."""
    moment = parse_time(value)
    if moment is None:
        return ""
    seconds = max(0.0, (now if now is not None else time.time()) - moment.timestamp())
    return "just now" if seconds < 1 else f"{human_duration(seconds)} ago"


def human_duration(seconds: Any) -> str:
    """90061 -> ``1d 1h 1m``; 42.5 -> ``42s``; below a second -> ``0.25s``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "" if seconds is None else str(seconds)
    if seconds < 1:
        return f"{seconds:.2f}s"
    total = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    if not parts or (total and len(parts) < 2):
        parts.append(f"{total}s")
    return " ".join(parts[:3])


def percent(part: Any, whole: Any) -> str:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (part, whole)) or not whole:
        return ""
    return f"{100.0 * part / whole:.0f}%"


def disk_percent(used: Any, free: Any) -> str:
    """USE% as ``df`` computes it: used / (used + free), rounded up.

    A filesystem's total includes the blocks reserved for root, which are neither
    used nor free to others, so used / total would understate how full it is.
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (used, free)):
        return ""
    if used + free == 0:
        return "-"
    return f"{-(-100 * used // (used + free))}%"


def number(value: Any, fmt: str = "{:.2f}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return fmt.format(value)


def join(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values)
    return "" if values is None else str(values)


def labels(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return "" if value is None else str(value)


def compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------- per-host results


NOT_OK = ("failed", "no_response")  # a host item that carries an error instead of a result


def is_failed(item: Any) -> bool:
    """A host that failed or did not answer: its row shows the error."""
    return isinstance(item, dict) and item.get("status") in NOT_OK


def failed_hosts(results: Sequence[dict]) -> list[dict]:
    return [item for item in results if is_failed(item)]


def _host(item: dict) -> str:
    return str(item.get("hostname") or "?")


def host_table(results: Sequence[dict], columns: Sequence[Column], status: bool = False) -> str:
    """One row per host; failed hosts keep their row with the error in an ERROR column.

    ``status``: a STATUS column after the host name, ``ok`` or ``failed`` (for
    changes, where that is the answer an operator reads first).
    """
    if not results:
        return "no host answered"
    any_failed = any(is_failed(item) for item in results)
    headers = ["HOSTNAME", *(["STATUS"] if status else []), *(name for name, _ in columns)]
    headers += ["ERROR"] if any_failed else []
    rows = []
    for item in sorted(results, key=_host):
        lead = [_host(item)]
        if is_failed(item):
            lead += [item.get("status")] if status else []
            rows.append([*lead, *("" for _ in columns), item.get("error") or "failed"])
        else:
            lead += [item.get("status") or "ok"] if status else []
            rows.append([*lead, *(fn(item) for _, fn in columns)] + ([""] if any_failed else []))
    return table(headers, rows)


def disk_rows(results: Sequence[dict], disks_of: Callable[[dict], Any]) -> str:
    """Every disk of every host in one table, with the host in the first column."""
    if not results:
        return "no host answered"
    any_failed = any(is_failed(item) for item in results)
    headers = ["HOSTNAME", "MOUNT", "DEVICE", "FSTYPE", "SIZE", "USED", "FREE", "USE%"]
    headers += ["ERROR"] if any_failed else []
    rows = []
    for item in sorted(results, key=_host):
        if is_failed(item):
            rows.append([_host(item), "", "", "", "", "", "", "", item.get("error") or "failed"])
            continue
        disks = disks_of(item) or []
        for disk in sorted(disks, key=lambda d: str(d.get("name", ""))):
            rows.append([
                _host(item), disk.get("name"), disk.get("device"), disk.get("fstype"),
                human_bytes(disk.get("total")), human_bytes(disk.get("used")), human_bytes(disk.get("free")),
                disk_percent(disk.get("used"), disk.get("free")),
            ] + ([""] if any_failed else []))
        if not disks:
            rows.append([_host(item), "(no readable disks)", "", "", "", "", "", ""] + ([""] if any_failed else []))
    return table(headers, rows)


def _since(item: dict) -> str:
    seconds = item.get("uptime_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return ""
    return dt.datetime.fromtimestamp(time.time() - seconds).strftime("%Y-%m-%d %H:%M:%S")


def _uptime(item: dict) -> str:
    return item.get("uptime") or human_duration(item.get("uptime_seconds"))


def _loads(load: Any) -> str:
    if not isinstance(load, dict):
        return ""
    return " ".join(number(load.get(k)) for k in ("1min", "5min", "15min"))


def _memory(mem: Any) -> str:
    if not isinstance(mem, dict):
        return ""
    return f"{human_bytes(mem.get('used'))} / {human_bytes(mem.get('total'))} ({percent(mem.get('used'), mem.get('total'))})"


def _os(info: Any) -> str:
    if not isinstance(info, dict):
        return ""
    return " ".join(str(v) for v in (info.get("distribution"), info.get("version")) if v)


def view_status(results: Sequence[dict]) -> str:
    hosts = host_table(results, [
        ("UPTIME", _uptime),
        ("LOAD 1/5/15", lambda r: _loads(r.get("load_average"))),
        ("MEMORY USED", lambda r: _memory(r.get("memory"))),
        ("OS", lambda r: _os(r.get("os_info"))),
    ])
    ok = [item for item in results if not is_failed(item)]
    if not ok:
        return hosts
    return hosts + "\n\n" + disk_rows(ok, lambda r: r.get("disks"))


def view_uptime(results: Sequence[dict]) -> str:
    return host_table(results, [("UPTIME", _uptime), ("UP SINCE", _since)])


def view_disk(results: Sequence[dict]) -> str:
    return disk_rows(results, lambda r: r.get("disks"))


def view_memory(results: Sequence[dict]) -> str:
    return host_table(results, [
        ("TOTAL", lambda r: human_bytes(r.get("total"))),
        ("USED", lambda r: human_bytes(r.get("used"))),
        ("FREE", lambda r: human_bytes(r.get("free"))),
        ("USE%", lambda r: percent(r.get("used"), r.get("total"))),
    ])


def _loss(value: Any) -> str:
    """``packet_loss`` is a percentage (0-100, osapi.provider.ping)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return f"{value:g}%"


def view_ping(results: Sequence[dict]) -> str:
    ms = "{:.3f}"
    return host_table(results, [
        ("SENT", lambda r: r.get("packets_sent")),
        ("RECEIVED", lambda r: r.get("packets_received")),
        ("LOSS", lambda r: _loss(r.get("packet_loss"))),
        ("MIN MS", lambda r: number(r.get("min_rtt_ms"), ms)),
        ("AVG MS", lambda r: number(r.get("avg_rtt_ms"), ms)),
        ("MAX MS", lambda r: number(r.get("max_rtt_ms"), ms)),
    ])


def view_generic(results: Sequence[dict]) -> str:
    return host_table(results, [("RESULT", lambda r: compact({k: v for k, v in r.items() if k != "hostname"}))])


# ---------------------------------------------------------------- views declared by the operations


def yes_no(value: Any) -> str:
    return "" if value is None else ("yes" if value else "no")


def up_down(value: Any) -> str:
    return "" if value is None else ("up" if value else "down")


# Column.format names of osapi.domain.operations -> value -> cell text
FORMATS: dict[str, Callable[[Any], Any]] = {
    "": lambda value: value,
    "bytes": human_bytes,
    "number": number,
    "number1": lambda value: number(value, "{:.1f}"),
    "join": join,
    "labels": labels,
    "yesno": yes_no,
    "updown": up_down,
    "time": local_time,
}


def _cell(column, item: dict) -> Any:
    value = item.get(column.field)
    if column.each:
        items = value if isinstance(value, list) else []
        return ", ".join(column.each.format_map(_Blank(v)) for v in items if isinstance(v, dict))
    return FORMATS[column.format](value)


class _Blank(dict):
    """``str.format_map`` mapping: a missing key is an empty string, not a KeyError."""

    def __missing__(self, key: str) -> str:
        return ""


def table_view(spec) -> Callable[[Sequence[dict]], str]:
    """The view of an ``osapi.domain.operations.Table``: one row per host, or per item of ``spec.rows``."""
    columns = [(column.header, lambda r, c=column: _cell(c, r)) for column in spec.columns]
    if not spec.rows:
        return lambda results: host_table(results, columns, status=spec.status)

    def view(results: Sequence[dict]) -> str:
        return item_rows(results, spec.rows, columns, spec.sort)

    return view


def item_rows(results: Sequence[dict], field_name: str, columns: Sequence[Column], sort: str = "") -> str:
    """Every item of the list ``field_name`` of every host in one table, the host first."""
    if not results:
        return "no host answered"
    any_failed = any(is_failed(item) for item in results)
    headers = ["HOSTNAME", *(name for name, _ in columns)] + (["ERROR"] if any_failed else [])
    rows = []
    for item in sorted(results, key=_host):
        if is_failed(item):
            rows.append([_host(item), *("" for _ in columns), item.get("error") or "failed"])
            continue
        entries = [e for e in item.get(field_name) or [] if isinstance(e, dict)]
        if sort:
            entries.sort(key=lambda e: str(e.get(sort, "")))
        for entry in entries:
            rows.append([_host(item), *(fn(entry) for _, fn in columns)] + ([""] if any_failed else []))
        if not entries:
            blank = ["" for _ in columns[1:]]
            rows.append([_host(item), f"(no {field_name})", *blank] + ([""] if any_failed else []))
    return table(headers, rows)


def _views() -> dict[str, Callable[[Sequence[dict]], str]]:
    from osapi.domain.operations import OPERATIONS

    views = {}
    for op in OPERATIONS.values():
        if isinstance(op.view, str):
            views[op.type] = globals()[f"view_{op.view}"] if op.view else view_generic
        else:
            views[op.type] = table_view(op.view)
    return views


VIEWS: dict[str, Callable[[Sequence[dict]], str]] = _views()


def view_for(op_type: Any) -> Callable[[Sequence[dict]], str]:
    return VIEWS.get(op_type, view_generic) if isinstance(op_type, str) else view_generic


def domain_results(body: Any) -> list[dict]:
    """``results`` of a synchronous domain answer ``{job_id, results}``."""
    results = body.get("results") if isinstance(body, dict) else None
    return [item for item in results if isinstance(item, dict)] if isinstance(results, list) else []


def settings(value: Any) -> str:
    """``{servers: [a, b], search_domains: [x]}`` -> ``search_domains: x; servers: a, b`` (sorted by name)."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {join(v) or '-'}" for k, v in sorted(value.items()))
    return "" if value is None else str(value)


def view_dry_run(results: Sequence[dict]) -> str:
    """A dry run's answers: whether each host would change, and its values before and after."""
    table_text = host_table(results, [("WOULD CHANGE", lambda r: yes_no(r.get("changed"))),
                                      ("BEFORE", lambda r: settings(r.get("before"))),
                                      ("AFTER", lambda r: settings(r.get("after")))], status=True)
    return "dry run: nothing was changed\n\n" + table_text


def results_view(op_type: Any, results: Sequence[dict]) -> str:
    """The operation's view of ``results``, or the dry-run view when the hosts answered a dry run."""
    if any(isinstance(item, dict) and item.get("dry_run") is True for item in results):
        return view_dry_run(results)
    return view_for(op_type)(results)


def domain_answer(body: Any, op_type: str) -> str:
    """The table for a synchronous endpoint's answer, under a line naming the job."""
    text = results_view(op_type, domain_results(body))
    job_id = body.get("job_id") if isinstance(body, dict) else None
    return f"job {job_id}\n\n{text}" if job_id else text


# ---------------------------------------------------------------- jobs


def job_results(job: dict) -> list[dict]:
    """A job's ``responses`` in the shape of a domain answer's ``results``."""
    responses = job.get("responses") if isinstance(job, dict) else None
    out = []
    for host, response in sorted((responses or {}).items()) if isinstance(responses, dict) else []:
        response = response if isinstance(response, dict) else {}
        if response.get("status") == "no_response":
            out.append({"hostname": host, "status": "no_response", "error": response.get("error") or "no answer"})
        elif response.get("status") == "failed" or (response.get("error") and not response.get("data")):
            out.append({"hostname": host, "status": "failed", "error": response.get("error") or "failed"})
        else:
            data = response.get("data")
            out.append({"hostname": host, **(data if isinstance(data, dict) else {"result": data})})
    return out


def _operation(job: dict) -> dict:
    op = job.get("operation")
    return op if isinstance(op, dict) else {}


def job_type(job: dict) -> str:
    return str(_operation(job).get("type") or "")


def job_detail(job: dict) -> str:
    """``job get``: the job's fields, its hosts, their results and its timeline."""
    op = _operation(job)
    pairs = [
        ("id", job.get("id")),
        ("status", job.get("status")),
        ("operation", op.get("type")),
        ("data", compact(op.get("data") if op.get("data") is not None else {})),
        ("target", job.get("target_hostname")),
        ("created", local_time(job.get("created"))),
        ("updated", local_time(job.get("updated_at"))),
    ]
    if job.get("hostname"):
        pairs.append(("hostname", job.get("hostname")))
    if job.get("retry_of"):
        pairs.append(("retry of", job.get("retry_of")))
    outcome = outcome_line(job.get("summary"))
    if outcome:
        pairs.append(("hosts", outcome))
    if job.get("error"):
        pairs.append(("error", job.get("error")))
    parts = [key_values(pairs)]
    states = job.get("worker_states")
    if isinstance(states, dict) and states:
        rows = []
        for host, state in sorted(states.items()):
            state = state if isinstance(state, dict) else {}
            rows.append([host, state.get("status"), _duration(state.get("duration")), state.get("error")])
        parts.append("workers:\n" + table(["HOSTNAME", "STATUS", "DURATION", "ERROR"], rows))
    results = job_results(job)
    if results:
        parts.append("results:\n" + view_for(op.get("type"))(results))
    timeline = job.get("timeline")
    if isinstance(timeline, list) and timeline:
        rows = [[local_time(e.get("timestamp")), e.get("event"), e.get("hostname")]
                for e in timeline if isinstance(e, dict)]
        parts.append("timeline:\n" + table(["TIME", "EVENT", "HOSTNAME"], rows))
    return "\n\n".join(parts)


def outcome_line(summary: Any) -> str:
    """``3 targeted: 1 ok, 1 failed, 1 no_response`` (the states with hosts in them)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("targeted"), int):
        return ""
    states = ("ok", "failed", "no_response", "skipped", "pending")
    counts = ", ".join(f"{summary[s]} {s}" for s in states if isinstance(summary.get(s), int) and summary[s])
    return f"{summary['targeted']} targeted" + (f": {counts}" if counts else "")


def _duration(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f}s" if value < 60 else human_duration(value)


def job_list(body: dict, offset: int = 0) -> str:
    items = [item for item in body.get("items") or [] if isinstance(item, dict)]
    total = body.get("total_items")
    if not items:
        return f"no jobs (total {total})" if total else "no jobs"
    rows = []
    for job in items:
        responses = job.get("responses")
        hosts = ", ".join(sorted(responses)) if isinstance(responses, dict) else ""
        rows.append([job.get("id"), job.get("status"), job_type(job), job.get("target_hostname"), hosts,
                     local_time(job.get("created"))])
    text = table(["ID", "STATUS", "OPERATION", "TARGET", "HOSTS", "CREATED"], rows)
    first, last = offset + 1, offset + len(items)
    footer = f"jobs {first}-{last} of {total}"
    if isinstance(total, int) and last < total:
        footer += f" (next page: --offset {last})"
    return text + "\n\n" + footer


def job_created(body: dict) -> str:
    return key_values([
        ("job id", body.get("job_id")),
        ("status", body.get("status")),
        ("revision", body.get("revision")),
        ("submitted", local_time(body.get("timestamp"))),
    ])


def job_retried(body: dict) -> str:
    hosts = body.get("hosts") if isinstance(body.get("hosts"), list) else []
    return key_values([
        ("job id", body.get("job_id")),
        ("retry of", body.get("retry_of")),
        ("hosts", ", ".join(printable(h) for h in hosts)),
    ])


def job_stats(body: dict) -> str:
    counts = body.get("status_counts") if isinstance(body.get("status_counts"), dict) else {}
    statuses = list(JOB_STATUSES) + sorted(set(counts) - set(JOB_STATUSES))
    parts = [
        key_values([("total jobs", body.get("total_jobs")), ("dead letters", body.get("dlq_count"))]),
        table(["STATUS", "JOBS"], [[s, counts.get(s, 0)] for s in statuses]),
    ]
    ops = body.get("operation_counts")
    if isinstance(ops, dict) and ops:
        parts.append(table(["OPERATION", "JOBS"], sorted(ops.items())))
    return "\n\n".join(parts)


def workers(body: dict, now: float | None = None) -> str:
    items = [w for w in body.get("workers") or [] if isinstance(w, dict)]
    if not items:
        return "no workers registered"
    # one row per host; PROCESSES: its live worker processes ("-" from an API that does not say)
    rows = [[w.get("hostname"), labels(w.get("labels")), w.get("version"), local_time(w.get("started_at")),
             ago(w.get("last_seen"), now), w.get("processes", "-")]
            for w in sorted(items, key=lambda w: str(w.get("hostname")))]
    return table(["HOSTNAME", "LABELS", "VERSION", "STARTED", "LAST SEEN", "PROCESSES"], rows)


def printable(value: Any) -> str:
    """A value from a request, safe on a terminal: control characters as escapes (``\\n``, ``\\x1b``)."""
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def audit_list(body: dict) -> str:
    """``GET /audit``: one row per request, newest first."""
    items = [item for item in body.get("items") or [] if isinstance(item, dict)]
    total = body.get("total_items")
    if not items:
        return f"no audit entries (total {total})" if total else "no audit entries"
    rows = []
    for item in items:
        subject = item.get("subject")
        rows.append([local_time(item.get("timestamp")), "-" if subject is None else printable(subject),
                     printable(item.get("source_ip")), printable(item.get("method")), printable(item.get("path")),
                     item.get("status"),
                     number(item.get("duration_ms"), "{:.1f}"), item.get("job_id") or ""])
    text = table(["TIME", "SUBJECT", "SOURCE", "METHOD", "PATH", "STATUS", "MS", "JOB"], rows)
    return text + f"\n\n{len(items)} of {total} entries"


def progress_line(event: str, data: dict) -> str:
    """One event of a job's stream (``GET /jobs/{id}/events``) as ``client job run`` shows it."""
    host = printable(data.get("hostname") or "-")
    stamp = printable(local_time(data.get("timestamp")))
    if event == "submitted":
        return f"{stamp}  submitted to {host}"
    line = f"{stamp}  {host}: {printable(event)}"
    if data.get("error"):
        line += f": {printable(data['error'])}"
    return line
