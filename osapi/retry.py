"""One way to try again: a back-off schedule and an asyncio retry loop.

Every "NATS is away, wait a little longer each time and try again" in osapi goes
through here: the worker connecting and setting up, its pull, dead-letter and
heartbeat loops, the API's bridge connecting, a failed submission being marked and its idempotency
key being given up.

``Backoff`` is the schedule and the count of failures in a row: ``failed()``
counts one and answers the pause before the next try (``first``, then grown by
``factor`` and ``step``, at most ``cap``); ``succeeded()`` starts over. A loop
that runs for ever (a pull loop) keeps one and asks it at each failure.

``retry(fn, ...)`` calls ``fn()`` until it returns: the exceptions in ``on``
are tried again after the schedule's pause, every other exception passes through
at once; ``attempts`` bounds the tries, ``within`` the seconds (no pause is
started that would end after it), and ``stop`` (an ``asyncio.Event``, or a
function answering True to stop) ends the waiting early. When it gives up it
raises ``GaveUp`` (``reason``: ``attempts``, ``deadline`` or ``stopped``; the
last error is its ``__cause__`` and ``last``). ``notify(attempt, exc, pause)``
is called after each failure that will be tried again (to log it);
``sampled(attempt, n)`` says whether to log that one (the first, then every
``n``-th).

Only the standard library: the client side imports it too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar, Union

T = TypeVar("T")
Stop = Union[asyncio.Event, Callable[[], bool], None]


class GaveUp(Exception):
    """``retry`` stopped trying: ``reason`` is ``attempts``, ``deadline`` or ``stopped``."""

    def __init__(self, reason: str, attempts: int, last: BaseException | None):
        super().__init__(f"gave up after {attempts} attempt(s) ({reason})"
                         + (f": {last}" if last is not None else ""))
        self.reason = reason
        self.attempts = attempts
        self.last = last


class Backoff:
    """Pauses between tries: ``first``, then ``× factor + step`` each time, at most ``cap``."""

    def __init__(self, first: float, cap: float, factor: float = 2.0, step: float = 0.0):
        if first < 0 or cap < 0 or factor < 1 or step < 0:
            raise ValueError("a back-off needs first >= 0, cap >= 0, factor >= 1 and step >= 0")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.step = step
        self.failures = 0

    @classmethod
    def linear(cls, step: float, cap: float) -> "Backoff":
        """``step``, ``2 × step``, ``3 × step`` … at most ``cap``."""
        return cls(step, cap, factor=1.0, step=step)

    def pause(self, failures: int) -> float:
        """The pause after ``failures`` failures in a row (1: the first)."""
        grown, n = self.first, max(failures, 1) - 1
        if self.factor == 1:
            return min(self.first + self.step * n, self.cap)
        while n and grown < self.cap:  # grows at least by the factor: a few rounds reach the cap
            grown, n = grown * self.factor + self.step, n - 1
            if grown == 0:
                break
        return min(grown, self.cap)

    def failed(self) -> float:
        """Count one failure; the pause before the next try."""
        self.failures += 1
        return self.pause(self.failures)

    def succeeded(self) -> None:
        self.failures = 0


def sampled(attempt: int, every: int) -> bool:
    """Log this failure? The first, then every ``every``-th (a long outage is not a flood)."""
    return attempt == 1 or attempt % every == 0


def stopped(stop: Stop) -> bool:
    if stop is None:
        return False
    if isinstance(stop, asyncio.Event):
        return stop.is_set()
    return bool(stop())


async def pause(seconds: float, stop: Stop = None) -> None:
    """Sleep ``seconds``; sooner when ``stop`` (an ``asyncio.Event``) is set meanwhile."""
    if isinstance(stop, asyncio.Event):
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            pass
    else:
        await asyncio.sleep(max(0.0, seconds))


async def retry(fn: Callable[[], Awaitable[T]], backoff: Backoff, *,
                on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                attempts: int | None = None, within: float | None = None, stop: Stop = None,
                notify: Callable[[int, BaseException, float], None] | None = None,
                clock: Callable[[], float] = time.monotonic) -> T:
    """``await fn()`` until it returns; see the module's text for the rest."""
    deadline = None if within is None else clock() + within
    backoff.succeeded()
    last: BaseException | None = None
    while True:
        if stopped(stop):
            raise GaveUp("stopped", backoff.failures, last) from last
        try:
            result = await fn()
        except on as exc:
            last = exc
            wait = backoff.failed()
            if attempts is not None and backoff.failures >= attempts:
                raise GaveUp("attempts", backoff.failures, exc) from exc
            if deadline is not None and clock() + wait > deadline:
                raise GaveUp("deadline", backoff.failures, exc) from exc
            if notify is not None:
                notify(backoff.failures, exc, wait)
            await pause(wait, stop)
            continue
        backoff.succeeded()
        return result
