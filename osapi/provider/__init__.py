"""Providers: the functions that really read and change a host, one module per domain.

Each function has the signature ``fn(data: dict, host: HostContext) -> dict`` and is
reached through ``osapi.domain.operations.OPERATIONS``. They raise ``ProviderError``
with a message fit for an operator when the operation cannot be done.
"""

from __future__ import annotations

from osapi.domain.operations import InvalidData  # light: the table imports providers only when run


class ProviderError(Exception):
    """The operation failed on this host; the message says why."""


def check_word(value: object, what: str) -> str:
    """``value`` if it is one plain word; else ``ProviderError``.

    Defence in depth for values that reach a file or a command line: the
    operations table refuses bad data at submission, but a job stored by an older
    API or published straight on NATS reaches the provider unchecked. A word here
    is a non-empty string without whitespace or control characters (a newline
    would add a line to resolv.conf) that does not start with ``-`` (a command
    would read it as an option).
    """
    if (not isinstance(value, str) or not value or not value.isprintable()
            or any(ch.isspace() for ch in value) or value.startswith("-")):
        raise ProviderError(
            f"refusing {what} {value!r}: it must be one word without whitespace or control characters, "
            "not starting with -"
        )
    return value


def checked_word(check, value: object, what: str) -> str:
    """``check(value, what)`` (a validator of ``osapi.domain.operations``) on a ``check_word``;
    ``ProviderError`` when either refuses."""
    check_word(value, what)
    try:
        return check(value, what)
    except InvalidData as exc:
        raise ProviderError(f"refusing {exc}") from None
