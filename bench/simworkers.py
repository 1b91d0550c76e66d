"""500 simulated worker hosts in one asyncio process (filled in when the worker lands)."""

from bench.appliance import NotAvailable


def run(ctx, section) -> None:
    raise NotAvailable("the job worker (osapi/job/worker.py) has not landed yet")
