"""Providers: the functions that really read and change a host, one module per domain.

Each function has the signature ``fn(data: dict, host: HostContext) -> dict`` and is
reached through ``osapi.job.operations.OPERATIONS``. They raise ``ProviderError``
with a message fit for an operator when the operation cannot be done.
"""


class ProviderError(Exception):
    """The operation failed on this host; the message says why."""
