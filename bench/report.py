"""The report: figures next to their references, machine, versions, date -> Markdown.

A benchmark returns a ``Section`` of ``Row``s. A row holds one measured figure,
the reference it is compared with (measured in the same run), the goal and
whether it was met. The writer only formats; it never judges twice.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import fmt


@dataclass
class Row:
    measure: str
    value: float | None
    unit: str
    reference: str = ""              # what the figure is compared with
    reference_value: float | None = None
    goal: str = ""
    met: bool | None = None          # None: no goal, or not measurable
    ratio_of: str = "reference"      # words for the ratio column ("floor", "python3 -c pass")

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference_value:
            return None
        return self.value / self.reference_value


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None         # the benchmark could not run (what is missing)
    seconds: float = 0.0

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)


def _met(row: Row) -> str:
    if row.met is None:
        return ""
    return "yes" if row.met else "**no**"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return ""
    return f"{ratio:.3f}×" if ratio < 0.1 else f"{ratio:.2f}×"


def _reference(row: Row) -> str:
    if not row.reference:
        return ""
    if row.reference_value is None:
        return row.reference
    return f"{fmt(row.reference_value, row.unit)} ({row.reference})"


def render(sections: list[Section], machine: dict, versions: dict, mode: str, quick: bool,
           started: _dt.datetime, seconds: float) -> str:
    lines = [
        "# osapi benchmark results",
        "",
        f"Written by `python3 bench/run.py{' --quick' if quick else ''}` on "
        f"{started.strftime('%Y-%m-%d %H:%M:%S UTC')} in {seconds:.0f} s"
        + (" — **quick run: small counts, not for quoting**" if quick else "")
        + ".",
        f"Appliance under test: {mode}. Everything on loopback; every reference measured in the same run.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "| version | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in versions.items()]
    lines += [
        "",
        "## Summary",
        "",
        "| benchmark | figure | measured | reference (same run) | ratio | goal | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for section in sections:
        if section.error and not section.rows:
            lines.append(f"| {section.title} | not measured | — | | | | {section.error} |")
            continue
        for row in section.rows:
            lines.append(
                f"| {section.title} | {row.measure} | {fmt(row.value, row.unit)} | {_reference(row)} | "
                f"{_ratio(row)} | {row.goal} | {_met(row)} |"
            )
    lines.append("")
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.error:
            lines += [f"Not (fully) measured: {section.error}", ""]
        for note in section.notes:
            lines.append(f"- {note}")
        if section.notes:
            lines.append("")
        lines.append(f"_{section.seconds:.1f} s_")
        lines.append("")
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
