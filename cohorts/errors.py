"""The cohorts package's exception family: every error it raises is a CohortError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


class CohortError(Exception):
    """Base of every error the cohorts package raises."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a cohort set, with the field it is in (e.g. ``rules[1].ring``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


UNKNOWN: Any = object()  # the data a location is in, when it is not at hand


def field_path(location: Sequence[int | str], data: Any = UNKNOWN, *, missing: bool = False) -> str:
    """('rules', 0, 'when', 'AttributeCondition', 'value') -> 'rules[0].when.value'.

    pydantic's locations hold the tags of union members ('AttributeCondition', 'str', 'list[str]') among the
    fields. Walking the `data` the location points into tells them apart: a name is a field where the data has
    it, or where an error says it is `missing`. Without the data, names that start with a capital letter or
    'function-' are taken for tags (the fields of Ringmaster's own models never do).
    """
    path = ""
    node = data
    for index, part in enumerate(location):
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else UNKNOWN
            continue
        if node is UNKNOWN:
            is_field = not (part[:1].isupper() or part.startswith("function-"))
        else:
            is_field = isinstance(node, dict) and (part in node or (missing and index == len(location) - 1))
        if is_field:
            path += f".{part}" if path else part
            node = node.get(part, UNKNOWN) if isinstance(node, dict) else UNKNOWN
    return path


def spec_problems(error: ValidationError, document: str, docs: str, data: Any = UNKNOWN) -> list[SpecProblem]:
    """pydantic's complaints about a `document` (e.g. 'cohort set') as SpecProblems, one per field at fault;
    a field the document does not have points at `docs`, the page that lists those it has. `data`: what was
    validated, which tells fields from pydantic's tags."""
    problems: dict[str, SpecProblem] = {}
    for item in error.errors():
        field = field_path(item["loc"], data, missing=item["type"] == "missing") or document
        if item["type"] == "extra_forbidden":
            message = f"is not a field of a {document}; {docs} lists them"
        elif item["type"] == "missing":
            message = "is required"
        else:
            message = item["msg"].removeprefix("Value error, ")
        # A value refused by every member of a union is reported by each; say it once.
        problems.setdefault(field, SpecProblem(field, message))
    return list(problems.values())


class InvalidCohortSet(CohortError):
    """A cohort set that does not hold together; ``problems`` names each field and the fix."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(problem) for problem in problems))


class CohortSetNotFound(CohortError):
    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        which = f"cohort set {name!r}" if version is None else f"version {version} of cohort set {name!r}"
        super().__init__(f"{which} does not exist; list them with GET /api/v1/cohort-sets")


class CohortSetExists(CohortError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"cohort set {name!r} already exists; update it with PUT instead")


class VersionConflict(CohortError):
    """An update was based on a version that is no longer the current one."""

    def __init__(self, name: str, expected: int, current: int) -> None:
        self.name = name
        self.expected = expected
        self.current = current
        super().__init__(
            f"cohort set {name!r} is at version {current}, not {expected}; "
            "read it again and reapply your change"
        )


class OptNotOffered(CohortError):
    """An opt-in or opt-out for a cohort set that names no ring for it."""

    def __init__(self, cohort_set: str, choice: str) -> None:
        self.cohort_set = cohort_set
        self.choice = choice
        field = "optInRing" if choice == "in" else "optOutRing"
        super().__init__(
            f"cohort set {cohort_set!r} has no {field}, so opting {choice} would change nothing; "
            f"set {field} in the cohort set first"
        )


class MaterializationLimitExceeded(CohortError):
    """Compiling would put more targeting keys into the flagd document than allowed."""

    def __init__(self, cohort_set: str, key_count: int, limit: int, largest: str) -> None:
        self.cohort_set = cohort_set
        self.key_count = key_count
        self.limit = limit
        super().__init__(
            f"cohort set {cohort_set!r} would materialize {key_count:,} targeting keys "
            f"(largest list: {largest}); the limit is {limit:,} per set. Narrow the usage "
            "rules, or raise RINGMASTER_MAX_MATERIALIZED_KEYS"
        )


class InvalidUsage(CohortError):
    """A usage batch that cannot be stored; ``problems`` names each row and field."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(problem) for problem in problems))
