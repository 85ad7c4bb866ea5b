"""The project's one exception root and its stable error codes.

Alerts, the API and the ``up`` signals key on ``code``; the message is for a person and
says what was expected, what was found and how to fix it.
"""

from __future__ import annotations


class TillwatchError(Exception):
    """Root of every error tillwatch raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(TillwatchError):
    """The configuration is invalid; the message lists each key, problem and fix."""

    code = "config_invalid"


class InvalidSample(TillwatchError):
    """A record breaks the sample contract; ``code`` is the dead-letter reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class DecodeError(TillwatchError):
    """A stream message could not be decoded; ``code`` is the dead-letter reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class StreamError(TillwatchError):
    """The stream backend failed in a way the caller must handle."""

    code = "stream_unavailable"


class StreamFull(StreamError):
    """The bounded publish buffer stayed full past its timeout: backpressure."""

    code = "stream_full"


class StorageError(TillwatchError):
    """The storage backend failed in a way the caller must handle."""

    code = "storage_unavailable"


class SourceError(TillwatchError):
    """A collector could not scrape its target.

    ``code`` is one of ``auth_failed``, ``refused``, ``timeout``, ``permission_denied``,
    ``bad_response``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)
