"""The flags package's exception family: every error it raises is a FlagError."""

from __future__ import annotations

from cohorts.errors import SpecProblem


class FlagError(Exception):
    """Base of every error the flags package raises."""


class InvalidFlag(FlagError):
    """A flag that does not hold together; ``problems`` names each field and the fix."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(problem) for problem in problems))


class FlagNotFound(FlagError):
    def __init__(self, key: str, version: int | None = None) -> None:
        self.key = key
        self.version = version
        which = f"flag {key!r}" if version is None else f"version {version} of flag {key!r}"
        super().__init__(f"{which} does not exist; list them with GET /api/v1/flags")


class FlagExists(FlagError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"flag {key!r} already exists; update it with PUT instead")


class FlagVersionConflict(FlagError):
    """A change was based on a version that is no longer the current one."""

    def __init__(self, key: str, expected: int, current: int) -> None:
        self.key = key
        self.expected = expected
        self.current = current
        super().__init__(
            f"flag {key!r} is at version {current}, not {expected}; read it again and reapply your change"
        )


class InvalidSelector(FlagError):
    """A flagd selector Ringmaster does not understand."""

    def __init__(self, selector: str) -> None:
        self.selector = selector
        super().__init__(
            f"selector {selector!r} is not understood; use 'flagSetId=<flag set>' (or 'flagSetId=' for "
            "flags in no set), or no selector for every flag"
        )
