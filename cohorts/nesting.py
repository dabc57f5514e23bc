"""How deep JSON data nests, measured without recursion.

Specs hold free-form JSON in places (a flag's variant values and raw targeting, a Rollout's pod template,
a cohort set's conditions). Everything that later walks them (checks, compilers, `json.dumps`, evaluators)
recurses, so data nested thousands of levels deep would end in a RecursionError far from where it came
in. Specs refuse it where it comes in instead, naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import AfterValidator

# Far deeper than any real rule, template or condition, and far from Python's recursion limit.
MAX_NESTING = 64


def nesting_depth(value: Any, stop_at: int = MAX_NESTING + 1) -> int:
    """The levels of objects and arrays in `value` (0 for a scalar), counted up to `stop_at` at most."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list | tuple):
            children = current
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest >= stop_at:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def shallow(value: Any) -> Any:
    """`value`, if it nests at most MAX_NESTING levels deep; else ValueError saying so (a pydantic validator)."""
    if nesting_depth(value) > MAX_NESTING:
        raise ValueError(f"nests more than {MAX_NESTING} levels of objects and arrays deep; flatten it")
    return value


# For a field of free-form JSON: `variants: dict[str, Annotated[Any, Shallow]]`.
Shallow = AfterValidator(shallow)
