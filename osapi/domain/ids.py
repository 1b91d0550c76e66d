"""Job ids: UUIDv7 (RFC 9562), whose text sorts by creation time.

The first 48 bits are the Unix time in milliseconds, so the job keys
``jobs.<id>`` come back from JetStream (which sorts subjects) oldest first:
listing newest first is a slice from the end, without reading the jobs. Within
one millisecond the 12 ``rand_a`` bits count up (RFC 9562 method 1), so ids made
by one process are strictly increasing.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"  # also the OpenAPI pattern
JOB_ID_RE = re.compile(JOB_ID_PATTERN.replace("$", r"\Z"))

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_job_id(now_ms: int | None = None) -> str:
    """A fresh UUIDv7 string, later (in text order) than every id this process made before."""
    global _last_ms, _counter
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms += 1
                _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave room to count up
        _last_ms = ms
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _counter << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def is_job_id(value: object) -> bool:
    """True for a lower-case canonical UUID (what ``new_job_id`` makes)."""
    return isinstance(value, str) and bool(JOB_ID_RE.fullmatch(value))


def created_ms(job_id: str) -> int:
    """The millisecond timestamp inside a UUIDv7."""
    return int(job_id.replace("-", "")[:12], 16)
