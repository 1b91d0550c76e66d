"""osapi.retry: the one back-off schedule and retry loop (attempts, deadline, stop, errors that pass through)."""

from __future__ import annotations

import asyncio

import pytest

from osapi.retry import Backoff, GaveUp, retry, sampled


class Flaky:
    """Fails with ``error`` ``failures`` times, then answers ``"done"``; counts its calls."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError):
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_exponential_schedule_grows_to_its_cap():
    assert [Backoff(0.5, 5.0).pause(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert Backoff(0.5, 30.0).pause(10_000) == 30.0


def test_linear_schedule_grows_by_its_step_to_its_cap():
    assert [Backoff.linear(0.5, 2.0).pause(n) for n in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [Backoff.linear(0.25, 5.0).pause(n) for n in (1, 2, 4, 20, 21, 10_000)] == [0.25, 0.5, 1.0, 5.0, 5.0, 5.0]


def test_failed_counts_failures_in_a_row_and_succeeded_starts_over():
    backoff = Backoff(1.0, 8.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.failures == 5
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.failed() == 1.0


@pytest.mark.parametrize("args", [(-1, 5), (1, -5), (1, 5, 0.5), (1, 5, 2.0, -1)])
def test_a_schedule_that_shrinks_or_is_negative_is_refused(args):
    with pytest.raises(ValueError):
        Backoff(*args)


def test_sampled_says_the_first_failure_then_every_nth():
    assert [n for n in range(1, 50) if sampled(n, 20)] == [1, 20, 40]


def test_retry_answers_once_fn_succeeds_and_notifies_each_failure_with_its_pause():
    fn, seen = Flaky(3), []
    answer = run(retry(fn, Backoff(0.001, 0.004), notify=lambda a, exc, p: seen.append((a, str(exc), p))))
    assert answer == "done"
    assert fn.calls == 4
    assert seen == [(1, "failure 1", 0.001), (2, "failure 2", 0.002), (3, "failure 3", 0.004)]


def test_retry_gives_up_after_its_attempts_with_the_last_error():
    fn = Flaky(10)
    with pytest.raises(GaveUp) as info:
        run(retry(fn, Backoff(0.001, 0.001), attempts=3))
    assert fn.calls == 3
    assert info.value.reason == "attempts" and info.value.attempts == 3
    assert str(info.value.last) == "failure 3" and info.value.__cause__ is info.value.last


def test_retry_gives_up_before_a_pause_that_would_end_after_its_deadline():
    now = [100.0]

    def slept(attempt: int, exc: BaseException, pause: float) -> None:
        now[0] += pause  # the clock of the test: the pause has passed

    fn = Flaky(10)
    with pytest.raises(GaveUp) as info:
        run(retry(fn, Backoff(0.001, 0.004), within=0.005, notify=slept, clock=lambda: now[0]))
    # pauses 0.001 and 0.002 fit in 0.005 s; the third (0.004) would end at 0.007: no third pause
    assert fn.calls == 3
    assert info.value.reason == "deadline" and str(info.value.last) == "failure 3"


@pytest.mark.parametrize("error", [ValueError, KeyError, asyncio.CancelledError])
def test_an_error_that_is_not_retried_passes_through_at_once(error):
    fn = Flaky(5, error)
    with pytest.raises(error):
        run(retry(fn, Backoff(0.001, 0.001), on=(ConnectionError, TimeoutError)))
    assert fn.calls == 1


def test_retry_stops_when_its_stop_event_is_set_even_in_a_long_pause():
    async def scenario():
        stop = asyncio.Event()
        fn = Flaky(10)
        with pytest.raises(GaveUp) as info:
            await retry(fn, Backoff(3600.0, 3600.0), stop=stop, notify=lambda *_: stop.set())
        return fn.calls, info.value

    calls, gave_up = run(scenario())
    assert calls == 1
    assert gave_up.reason == "stopped" and str(gave_up.last) == "failure 1"


def test_retry_with_a_stop_function_never_calls_fn_once_it_says_stop():
    fn = Flaky(0)
    with pytest.raises(GaveUp) as info:
        run(retry(fn, Backoff(0.001, 0.001), stop=lambda: True))
    assert fn.calls == 0
    assert info.value.reason == "stopped" and info.value.last is None
