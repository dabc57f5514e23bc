"""The provider's exceptions: one family, each message saying what was wrong and what to do."""

from __future__ import annotations


class RingmasterFlagdError(Exception):
    """Base of every error this package raises."""


class DocumentError(RingmasterFlagdError):
    """A flag document that cannot be loaded; the evaluator keeps serving the previous one."""


class SourceError(RingmasterFlagdError):
    """A flag source that cannot be used as given (unknown scheme, missing path)."""
