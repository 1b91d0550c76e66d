"""Load averages: runnable plus uninterruptible tasks over 1, 5 and 15 minutes,
as in ``/proc/loadavg``, rounded to two decimals like ``uptime`` prints them."""

from __future__ import annotations

import os


def read_load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def load(data: dict, host) -> dict:
    return read_load()
