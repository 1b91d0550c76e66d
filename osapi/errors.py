"""The exceptions that reach the CLI's error funnel, each with its exit status.

Every failure a user can cause ends as one of these; ``osapi.cli.main`` turns it
into one line on stderr and the exit status below (README "Commands"):
0 success, 1 the operation failed, 2 usage or configuration error, 3 no host
failed but some did not answer.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    SUCCESS = 0
    ERROR = 1          # the operation failed: API error, job failed, timeout, invalid token
    USAGE = 2          # bad command line or configuration
    NO_RESPONSE = 3    # no host failed, but some did not answer
    INTERRUPTED = 130  # Ctrl-C


class OsapiError(Exception):
    """Base of every expected failure. ``hint`` is an optional 'what to do' line."""

    exit_status = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(OsapiError):
    """The command line is wrong."""

    exit_status = ExitStatus.USAGE


class ConfigError(OsapiError):
    """The configuration (file, environment or flag) is wrong."""

    exit_status = ExitStatus.USAGE


class OperationError(OsapiError):
    """The operation was understood but failed."""

    exit_status = ExitStatus.ERROR


class NoResponseError(OsapiError):
    """No host failed, but some hosts the job was meant for did not answer."""

    exit_status = ExitStatus.NO_RESPONSE
