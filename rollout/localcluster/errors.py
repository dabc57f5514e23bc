"""The local control plane's one exception, apart so that every module of the package can raise it."""

from __future__ import annotations


class LocalClusterError(RuntimeError):
    """The local control plane cannot start, or is not in the state asked for; the message says what to do."""
