"""Pulling: the worker's two pull loops (the fleet's ``_any`` consumer and this
host's consumer), each waiting for a free slot (``Slots``, ``max_jobs``) before it
pulls one job, handing each delivery to ``Execution._process``; at stop the
deliveries nobody will read are negatively acked (``_nak_queued``).
A pending pull is given up and sent again at once (``repull``) when the connection
was re-established or a consumer of the job stream elected a new leader: a pull
held by a server that died, or by a consumer leader that is gone, would otherwise
only be re-issued when it expires (``poll``, 10 s), and jobs submitted meanwhile
(synchronous calls among them) would wait for it.
docs/jobs.md, "Workers and delivery".
"""

from __future__ import annotations

import asyncio

from osapi.job import natsadapter
from osapi.retry import Backoff, pause, sampled
from osapi.worker.common import MAX_PAUSE, describe as _describe, log, quiet as _quiet


class Slots:
    """``max_jobs`` slots; a pull loop waits for a free one without taking it (``wait_free``)."""

    def __init__(self, count: int):
        self.free = count
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_free(self, stopping: asyncio.Event) -> None:
        while self.free <= 0 and not stopping.is_set():
            await self._changed.wait()

    async def take(self) -> None:
        while self.free <= 0:
            await self._changed.wait()
        self.free -= 1

    def give(self) -> None:
        self.free += 1
        self._notify()

    def wake(self) -> None:
        self._notify()



def leader_elected_subject(stream: str) -> str:
    """JetStream's advisory that a consumer of ``stream`` has a new leader (after a failover or a step-down)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.*"


class Consumer:
    """The pull loops of a ``Worker`` (a part of it: it reads the worker's state)."""

    _repull_now: asyncio.Event | None = None

    def repull(self) -> None:
        """Give up the pending pulls and send them again now (see the module docstring)."""
        if self._repull_now is not None:
            self._repull_now.set()
        self._repull_now = asyncio.Event()

    async def _leader_elected(self, _msg) -> None:
        self.repull()

    async def _bind_any(self):
        return await self.store.js.pull_subscribe_bind(self.names.any_consumer, self.names.stream)

    async def _bind_host(self):
        return await self.store.js.pull_subscribe_bind(self.names.host_consumer(self.hostname), self.names.stream)

    async def _pull_loop(self, label: str, bind) -> None:
        import nats.errors

        sub = None
        trouble = Backoff.linear(0.25, MAX_PAUSE)  # failures in a row: the pause grows
        try:
            while not self.stopping.is_set():
                await self.slots.wait_free(self.stopping)  # pull only while a slot is free, without taking it
                if self.stopping.is_set():
                    break
                try:
                    if sub is None:
                        sub = await bind()
                        self._subs.append(sub)
                    try:
                        msgs = await self._fetch(sub)
                    except nats.errors.TimeoutError:
                        trouble.succeeded()
                        continue
                    trouble.succeeded()
                    for msg in msgs:
                        if self.stopping.is_set():
                            await _quiet(msg.nak())  # someone else (or our next start) takes it at once
                            continue
                        task = asyncio.create_task(self._process(msg))
                        self.running.add(task)
                        task.add_done_callback(self._finished)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS away or consumer gone
                    wait = trouble.failed()
                    if sampled(trouble.failures, 20):
                        log.warning("pulling %s jobs failed: %s; retrying", label, _describe(exc))
                    if trouble.failures >= 3:
                        # the server may have lost the consumer (a wiped store): create it again
                        if sub is not None:
                            await self._nak_queued(sub)
                            self._subs.remove(sub)
                        sub = await self._rebind(sub)
                    await pause(wait, self.stopping)
        finally:
            if sub is not None:
                await self._nak_queued(sub)

    async def _fetch(self, sub) -> list:
        """One pull of at most one job (``poll`` s); ``[]`` at once when the worker stops meanwhile.

        An idle pull holds no job: giving it up lets a stopping worker exit
        without sitting out ``poll``. A job that the server delivers for the
        abandoned pull lands in the subscription's queue and is negatively acked
        at stop (``_nak_queued``), so another process takes it at once.
        """
        if self.stopping.is_set():
            return []
        if self._repull_now is None:
            self._repull_now = asyncio.Event()
        repull = self._repull_now
        fetch = asyncio.ensure_future(sub.fetch(1, timeout=self.poll))
        stopped = asyncio.ensure_future(self.stopping.wait())
        again = asyncio.ensure_future(repull.wait())
        try:
            await asyncio.wait({fetch, stopped, again}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            again.cancel()
            if not fetch.done():
                fetch.cancel()
        try:
            return await fetch
        except asyncio.CancelledError:
            # given up for a stop, or to pull again at once (``repull``): a job the server delivers
            # for the old pull waits in the subscription's queue, where the next fetch takes it first
            if fetch.cancelled() and (self.stopping.is_set() or repull.is_set()):
                return []
            raise

    async def _nak_queued(self, sub) -> None:
        """Negative-ack jobs delivered after the last pull gave up waiting (nobody will read them).

        nats-py keeps such late deliveries in the subscription's queue for the next
        pull; at stop there is none, and they would wait ``ack_wait`` for redelivery.
        """
        for msg in natsadapter.queued_messages(sub):
            if msg.reply and msg.reply.startswith("$JS.ACK."):
                await _quiet(msg.nak())

    async def _rebind(self, sub):
        try:
            if sub is not None:
                await sub.unsubscribe()
        except Exception:  # noqa: BLE001
            pass
        try:
            await self._setup()
        except Exception as exc:  # noqa: BLE001
            log.debug("setup while NATS is away: %s", _describe(exc))
        return None

    def _finished(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job handling crashed: %s", task.exception(), exc_info=task.exception())
