"""The project's one root error type.

Every error raised on purpose derives from :class:`ECGScreenError` and carries a
``reason`` a person (or a dead-letter consumer) can act on. Subclasses live next
to the code that raises them (``DecodeError`` in :mod:`schemas.codec`,
``BundleError`` in :mod:`models.bundle`, ...).
"""

from __future__ import annotations


class ECGScreenError(Exception):
    """Root of every deliberate error in ecgscreen.

    ``reason`` is a stable machine-readable code; ``detail`` says what to do about it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(ECGScreenError):
    """A setting from the environment is missing or malformed."""

    def __init__(self, detail: str) -> None:
        super().__init__("config_invalid", detail)


class StackError(ECGScreenError):
    """The embedded broker or Redis could not be started, reached or stopped."""

    def __init__(self, detail: str) -> None:
        super().__init__("stack_unavailable", detail)
