"""Memory in bytes.

``total`` is the physical memory the kernel manages (MemTotal). ``free`` is what
programs can still get without swapping: the kernel's MemAvailable (psutil's
``available``), which counts reclaimable page cache; it is what ``free -b``
shows in its *available* column and what an operator means by "free memory".
The kernel's own MemFree (never-used pages) would call a healthy host with a
warm cache "full". ``used`` is ``total - free``, so ``used + free == total``.
"""

from __future__ import annotations


def read_memory() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    free = min(int(vm.available), int(vm.total))
    return {"total": int(vm.total), "free": free, "used": int(vm.total) - free}


def memory(data: dict, host) -> dict:
    return read_memory()
