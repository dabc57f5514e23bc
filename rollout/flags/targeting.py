"""flagd targeting JsonLogic checked as data, before it is stored and served to every flagd evaluator.

A mistake in raw targeting would otherwise surface only when some app evaluates the flag (as a
PARSE_ERROR, or worse, as a default value nobody notices). `targeting_problems` refuses what flagd's
`targeting.json` schema refuses: unknown operators, wrong argument counts, `sem_ver` ranges and
versions, `fractional` distributions with weights that are not whole numbers, `$flagd.*` names other
than `timestamp` and `flagKey`. It is stricter in two places where flagd evaluators would fail
anyway: elements of arrays are checked as rules too (json-logic evaluates them), and `fractional`
weights written as floats are refused (Python's flagd evaluator rejects them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from cohorts.errors import SpecProblem

# Argument counts (least, most) of the operators flagd's targeting schema lists; None is unbounded.
_ARITY: dict[str, tuple[int, int | None]] = {
    **dict.fromkeys(("substr", "<", "<="), (2, 3)),
    **dict.fromkeys(("==", "===", "!=", "!==", ">", ">=", "%", "/", "map", "filter", "all", "none", "some", "in"),
                    (2, 2)),
    **dict.fromkeys(("if", "or", "and", "+", "-", "max", "min", "merge", "cat"), (1, None)),
    "*": (2, None),
    "reduce": (3, 3),
}
_UNARY = ("!", "!!")
_SPECIAL = ("var", "missing", "missing_some", "starts_with", "ends_with", "sem_ver", "fractional")
OPERATORS = tuple(sorted((*_ARITY, *_UNARY, *_SPECIAL)))
FLAGD_PROPERTIES = ("$flagd.timestamp", "$flagd.flagKey")
SEMVER_RANGES = ("=", "!=", ">", "<", ">=", "<=", "~", "^")
# The strict SemVer 2.0 form flagd's schema asks for in literal sem_ver operands.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_EXAMPLE_RULE = '{"in": [{"var": "tier"}, ["beta"]]}'


def targeting_problems(logic: Any, field: str) -> list[SpecProblem]:
    """Every structural problem of a targeting rule, each named by its path under `field`."""
    problems: list[SpecProblem] = []
    if not isinstance(logic, dict):
        problems.append(SpecProblem(field, f"targeting is a JsonLogic object such as {_EXAMPLE_RULE}"))
    elif logic:
        _rule(logic, field, problems)
    return problems


def references(logic: Any) -> set[str]:
    """The names every `{"$ref": name}` in the rule points at."""
    if isinstance(logic, list):
        return set().union(*(references(item) for item in logic))
    if not isinstance(logic, dict):
        return set()
    if set(logic) == {"$ref"} and isinstance(logic["$ref"], str):
        return {logic["$ref"]}
    return set().union(*(references(value) for value in logic.values()))


def result_literals(logic: Any, field: str) -> Iterator[tuple[str, Any]]:
    """The literal values the rule can return as a variant name, with their paths.

    Follows `if` branches and `fractional` distributions, nested or not; what other operators
    compute cannot be known before evaluation and is left to the evaluator.
    """
    if not isinstance(logic, dict) or len(logic) != 1:
        return
    ((operator, arguments),) = logic.items()
    if not isinstance(arguments, list):
        return
    if operator == "if":
        count = len(arguments)
        for index, branch in enumerate(arguments):
            if index % 2 == 1 or (index == count - 1 and count % 2 == 1):
                yield from _result(branch, f"{field}.if[{index}]")
    elif operator == "fractional":
        for index, entry in enumerate(arguments):
            if isinstance(entry, list) and entry:
                yield from _result(entry[0], f"{field}.fractional[{index}][0]")


def _result(value: Any, field: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        yield from result_literals(value, field)
    elif not isinstance(value, list):
        yield field, value


def _arguments(node: Any, field: str, problems: list[SpecProblem]) -> None:
    """An operand: a reference, a rule, or a primitive (arrays are checked element by element)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            if not isinstance(node["$ref"], str) or not node["$ref"]:
                problems.append(SpecProblem(f"{field}.$ref", "a reference names an evaluator, e.g. 'ring-default'"))
            return
        _rule(node, field, problems)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _arguments(item, f"{field}[{index}]", problems)


def _rule(node: Any, field: str, problems: list[SpecProblem]) -> None:
    if not isinstance(node, dict):
        problems.append(SpecProblem(field, f"expected a rule such as {_EXAMPLE_RULE}, not {node!r}"))
        return
    if len(node) != 1:
        problems.append(SpecProblem(field, f"a rule has exactly one operator, this one has {sorted(node)}"))
        return
    ((operator, arguments),) = node.items()
    here = f"{field}.{operator}"
    if operator in _ARITY:
        least, most = _ARITY[operator]
        if _count_fits(arguments, least, most, here, problems):
            _arguments(arguments, here, problems)
    elif operator in _UNARY:
        _arguments(arguments, here, problems)
    elif operator == "var":
        _var(arguments, here, problems)
    elif operator == "missing":
        if not isinstance(arguments, list) or not all(isinstance(name, str) for name in arguments):
            problems.append(SpecProblem(here, 'expected a list of context names, e.g. ["email", "tier"]'))
    elif operator == "missing_some":
        _missing_some(arguments, here, problems)
    elif operator in ("starts_with", "ends_with"):
        _string_comparison(arguments, here, problems)
    elif operator == "sem_ver":
        _sem_ver(arguments, here, problems)
    elif operator == "fractional":
        _fractional(arguments, here, problems)
    elif operator == "$ref":
        problems.append(SpecProblem(here, 'flagd takes a reference as an operand, e.g. {"if": [{"$ref": "name"}]}'))
    else:
        problems.append(SpecProblem(here, f"{operator!r} is not a flagd operator; use one of {', '.join(OPERATORS)}"))


def _count_fits(arguments: Any, least: int, most: int | None, field: str, problems: list[SpecProblem]) -> bool:
    count = len(arguments) if isinstance(arguments, list) else None
    if count is not None and count >= least and (most is None or count <= most):
        return True
    wanted = f"{least}" if least == most else f"{least} or more" if most is None else f"{least} to {most}"
    found = f"{count}" if count is not None else f"{type(arguments).__name__} {arguments!r}"
    problems.append(SpecProblem(field, f"expected a list of {wanted} operands, found {found}"))
    return False


def _var(arguments: Any, field: str, problems: list[SpecProblem]) -> None:
    if isinstance(arguments, str):
        if arguments.startswith("$flagd.") and arguments not in FLAGD_PROPERTIES:
            problems.append(SpecProblem(field, f"{arguments!r} is not a flagd property; flagd provides "
                                               f"{' and '.join(FLAGD_PROPERTIES)}"))
    elif isinstance(arguments, list):
        if not arguments or not isinstance(arguments[0], str):
            problems.append(SpecProblem(field, 'expected a name and an optional default, e.g. ["tier", "free"]'))
        elif any(isinstance(default, dict | list) for default in arguments[1:]):
            problems.append(SpecProblem(field, "a default is a string, number, boolean or null"))
    else:
        _arguments(arguments, field, problems)


def _missing_some(arguments: Any, field: str, problems: list[SpecProblem]) -> None:
    if (
        isinstance(arguments, list)
        and len(arguments) == 2
        and isinstance(arguments[0], int | float)
        and not isinstance(arguments[0], bool)
        and isinstance(arguments[1], list)
        and all(isinstance(name, str) for name in arguments[1])
    ):
        return
    problems.append(SpecProblem(field, 'expected [a minimum count, a list of names], e.g. [1, ["email", "phone"]]'))


def _string_comparison(arguments: Any, field: str, problems: list[SpecProblem]) -> None:
    if not _count_fits(arguments, 2, 2, field, problems):
        return
    for index, operand in enumerate(arguments):
        if isinstance(operand, dict) and set(operand) != {"$ref"}:
            _rule(operand, f"{field}[{index}]", problems)
        elif not isinstance(operand, str):
            problems.append(SpecProblem(f"{field}[{index}]", f"expected a string or a rule, not {operand!r}"))


def _sem_ver(arguments: Any, field: str, problems: list[SpecProblem]) -> None:
    if not _count_fits(arguments, 3, 3, field, problems):
        return
    for index in (0, 2):
        operand = arguments[index]
        if isinstance(operand, dict) and set(operand) == {"var"}:
            _rule(operand, f"{field}[{index}]", problems)
        elif not (isinstance(operand, str) and _SEMVER.match(operand)):
            problems.append(SpecProblem(f"{field}[{index}]", f"{operand!r} is neither a full version such as "
                                                             '"2.1.0" nor {"var": "appVersion"}'))
    if arguments[1] not in SEMVER_RANGES:
        problems.append(SpecProblem(f"{field}[1]", f"{arguments[1]!r} is not a sem_ver range; use one of "
                                                   f"{' '.join(SEMVER_RANGES)}"))


def _fractional(arguments: Any, field: str, problems: list[SpecProblem]) -> None:
    if not isinstance(arguments, list) or not arguments:
        problems.append(SpecProblem(field, 'expected [bucketing rule?, ["variant", weight], ...]'))
        return
    entries = list(enumerate(arguments))
    if isinstance(arguments[0], dict) and set(arguments[0]) != {"$ref"}:
        _rule(arguments[0], f"{field}[0]", problems)
        entries = entries[1:]
    for index, entry in entries:
        here = f"{field}[{index}]"
        if not isinstance(entry, list) or not 1 <= len(entry) <= 2:
            what = "the bucketing rule comes first; " if index == 0 else ""
            problems.append(SpecProblem(here, f"{what}expected a distribution entry [variant, weight], not {entry!r}"))
            continue
        _arguments(entry[0], f"{here}[0]", problems)
        if len(entry) == 2:
            weight = entry[1]
            if isinstance(weight, dict):
                _rule(weight, f"{here}[1]", problems)
            elif isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                problems.append(SpecProblem(f"{here}[1]", f"a weight is a whole number of 0 or more (or a rule), "
                                                          f"not {weight!r}"))
