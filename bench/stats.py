"""Small statistics and formatting helpers shared by every benchmark."""

from __future__ import annotations

import math
import statistics
import time
from typing import Iterable


def percentile(values: Iterable[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank, 0 < pct <= 100) of ``values``."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(pct / 100.0 * len(data)))
    return data[min(rank, len(data)) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ms(seconds: float) -> float:
    return seconds * 1000.0


def mib(nbytes: float) -> float:
    return nbytes / (1024.0 * 1024.0)


def fmt(value: float | None, unit: str = "") -> str:
    """A number with 3 significant-ish digits and its unit; ``—`` for none."""
    if value is None:
        return "—"
    if isinstance(value, int):
        text = f"{value:,}"  # a count
    elif value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
