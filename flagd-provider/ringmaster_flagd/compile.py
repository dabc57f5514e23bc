"""Targeting compiled once, when a document loads, from JsonLogic into nested Python closures.

A compiled rule is a function of the evaluation data; evaluating it walks no JSON and looks up no
operator names. It answers what flagd's Python reference (FlagdCore over panzi-json-logic)
answers for the same rule and data, including which arguments are evaluated (every argument of
an ordinary operation, in order; only the taken branches of `if`, `and`, `or` and the iterating
operations) and which errors are raised: an unknown operator raises `RuleError` (flagd's
PARSE_ERROR) when it is reached, and never earlier, as in flagd.

The shapes rules take in practice (`var` of a fixed path, `in` against a fixed list, `fractional`
with fixed weights, `sem_ver` against a fixed version, `if` chains) get closures specialised at
compile time; every other shape goes through the general operation with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ringmaster_flagd import operators
from ringmaster_flagd.coercion import loose_equals, to_string, truthy
from ringmaster_flagd.jsonlogic import OPERATIONS, var, walk

Node = Callable[[Any], Any]
Compiler = Callable[[list[Any], list[Node]], Node | None]


class RuleError(Exception):
    """The targeting is not valid JsonLogic for flagd (an unknown operator, say): evaluating it is a PARSE_ERROR."""


def compile_targeting(targeting: Any) -> Node:
    """The rule of a flag whose `targeting` is not empty: a JsonLogic object, or an error when reached."""
    if not isinstance(targeting, dict):
        message = f"targeting must be a JsonLogic object, not {type(targeting).__name__}"

        def invalid(data: Any) -> Any:
            raise RuleError(message)

        return invalid
    return compile_logic(targeting)


def reads_flagd(logic: Any) -> bool:
    """Whether evaluating `logic` may read `$flagd` (directly, or through the whole data object).

    Conservative: when it says no, the evaluator leaves `$flagd` (its clock reading and an object)
    out of the data, which the rule then cannot tell.
    """
    if isinstance(logic, list):
        return any(reads_flagd(item) for item in logic)
    if not isinstance(logic, dict) or len(logic) != 1:
        return False
    ((operator, raw_args),) = logic.items()
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    if operator == "var":
        key = args[0] if args else None
        return not isinstance(key, str) or key == "" or key.startswith("$flagd") or reads_flagd(args[1:])
    if operator in ("missing", "missing_some"):
        return True
    if operator == "fractional" and args:
        first = args[0]
        # Any bucketing expression that might give a list makes it the shorthand, which reads $flagd.flagKey.
        if not (_is_literal(first) or (isinstance(first, dict) and "cat" in first)):
            return True
    return reads_flagd(args)


def _is_literal(logic: Any) -> bool:
    """Logic that evaluates to itself: anything but a list or a one-key object (an operation)."""
    return not isinstance(logic, list) and not (isinstance(logic, dict) and len(logic) == 1)


def _is_constant(logic: Any) -> bool:
    return _is_literal(logic) or (isinstance(logic, list) and all(_is_constant(item) for item in logic))


def _fresh(value: Any) -> Any:
    # A list in a rule evaluates to a new list each time (its objects stay the same), and `==`
    # compares lists by identity, so constant lists are copied rather than shared.
    return [_fresh(item) for item in value] if isinstance(value, list) else value


def _constant(value: Any) -> Node:
    if isinstance(value, list):
        return lambda data: _fresh(value)
    return lambda data: value


def compile_logic(logic: Any) -> Node:
    if isinstance(logic, list):
        if _is_constant(logic):
            return _constant(logic)
        items = [compile_logic(item) for item in logic]
        return lambda data: [item(data) for item in items]
    if _is_literal(logic):
        return _constant(logic)
    operator, raw_args = next(iter(logic.items()))
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    lazy = _LAZY_OPERATIONS.get(operator)
    if lazy is not None:
        return lazy(args)
    nodes = [compile_logic(arg) for arg in args]
    specialise = _SPECIALISED.get(operator)
    if specialise is not None and (node := specialise(args, nodes)) is not None:
        return node
    operation = OPERATIONS.get(operator)
    if operation is None:
        return _unknown_operator(operator, nodes)
    return _call(operation, nodes)


def _call(operation: Callable[..., Any], nodes: Sequence[Node]) -> Node:
    if not nodes:
        return lambda data: operation(data)
    if len(nodes) == 1:
        (only,) = nodes
        return lambda data: operation(data, only(data))
    if len(nodes) == 2:
        first, second = nodes
        return lambda data: operation(data, first(data), second(data))
    return lambda data: operation(data, *[node(data) for node in nodes])


def _unknown_operator(operator: str, nodes: Sequence[Node]) -> Node:
    # flagd reads "a.b" as a path into its operator table: through a known operation it is a
    # type error (GENERAL), otherwise an unknown operation (PARSE_ERROR).
    through_known = "." in operator and operator.split(".")[0] in OPERATIONS

    def unknown(data: Any) -> Any:
        for node in nodes:
            node(data)
        if through_known:
            raise TypeError(f"operator {operator!r} names a path through an operation, which has no members")
        raise RuleError(f"unknown JsonLogic operator {operator!r}")

    return unknown


# The lazy operations: they decide which of their arguments to evaluate.


def _if(args: list[Any]) -> Node:
    if not args:
        return _constant(None)
    if len(args) == 1:
        return compile_logic(args[0])
    pairs = tuple((compile_logic(args[index]), compile_logic(args[index + 1])) for index in range(0, len(args) - 1, 2))
    otherwise = compile_logic(args[-1]) if len(args) % 2 else _constant(None)
    if len(pairs) == 1:
        ((condition, then),) = pairs

        def if_then_else(data: Any) -> Any:
            decided = condition(data)
            if decided is True or (decided is not False and decided is not None and truthy(decided)):
                return then(data)
            return otherwise(data)

        return if_then_else

    def if_chain(data: Any) -> Any:
        for condition, then in pairs:
            decided = condition(data)
            if decided is True or (decided is not False and decided is not None and truthy(decided)):
                return then(data)
        return otherwise(data)

    return if_chain


def _and(args: list[Any]) -> Node:
    nodes = [compile_logic(arg) for arg in args]

    def and_(data: Any) -> Any:
        current = None
        for node in nodes:
            current = node(data)
            if current is not True and not truthy(current):
                return current
        return current

    return and_


def _or(args: list[Any]) -> Node:
    nodes = [compile_logic(arg) for arg in args]

    def or_(data: Any) -> Any:
        current = None
        for node in nodes:
            current = node(data)
            if current is True or truthy(current):
                return current
        return current

    return or_


def _filter(args: list[Any]) -> Node:
    if len(args) < 2:
        return _constant([])
    items_of, keep = compile_logic(args[0]), compile_logic(args[1])

    def filter_(data: Any) -> Any:
        items = items_of(data)
        if not isinstance(items, list):
            return []
        return [item for item in items if truthy(keep(item))]

    return filter_


def _map(args: list[Any]) -> Node:
    if not args:
        return _constant([])
    items_of = compile_logic(args[0])
    transform = compile_logic(args[1] if len(args) > 1 else None)

    def map_(data: Any) -> Any:
        items = items_of(data)
        if not isinstance(items, list):
            return []
        return [transform(item) for item in items]

    return map_


def _reduce(args: list[Any]) -> Node:
    if not args:
        return _constant(None)
    items_of = compile_logic(args[0])
    step = compile_logic(args[1] if len(args) > 1 else None)
    # The initial accumulator is taken as written, not evaluated, as flagd's engine does.
    initial = args[2] if len(args) > 2 else None

    def reduce_(data: Any) -> Any:
        items = items_of(data)
        if not isinstance(items, list):
            return initial
        scope: dict[str, Any] = {"accumulator": initial}
        for item in items:
            scope["current"] = item
            scope["accumulator"] = step(scope)
        return scope["accumulator"]

    return reduce_


def _all(args: list[Any]) -> Node:
    if len(args) < 2:
        return _constant(False)
    items_of, test = compile_logic(args[0]), compile_logic(args[1])

    def all_(data: Any) -> bool:
        items = items_of(data)
        if not isinstance(items, list) or not items:
            return False
        return all(truthy(test(item)) for item in items)

    return all_


def _some(args: list[Any]) -> Node:
    if len(args) < 2:
        return _constant(False)
    items_of, test = compile_logic(args[0]), compile_logic(args[1])

    def some(data: Any) -> bool:
        items = items_of(data)
        if not isinstance(items, list):
            return False
        return any(truthy(test(item)) for item in items)

    return some


def _none(args: list[Any]) -> Node:
    if len(args) < 2:
        return _constant(True)
    items_of, test = compile_logic(args[0]), compile_logic(args[1])

    def none(data: Any) -> bool:
        items = items_of(data)
        if not isinstance(items, list):
            return True
        return not any(truthy(test(item)) for item in items)

    return none


_LAZY_OPERATIONS: dict[str, Callable[[list[Any]], Node]] = {
    "if": _if,
    "?:": _if,
    "and": _and,
    "or": _or,
    "filter": _filter,
    "map": _map,
    "reduce": _reduce,
    "all": _all,
    "some": _some,
    "none": _none,
}


# Specialised closures for the common shapes; None means "use the general operation".


def _var(args: list[Any], nodes: list[Node]) -> Node | None:
    if not args:
        return lambda data: data
    if len(args) > 2 or not all(_is_literal(arg) for arg in args):
        return None
    key = args[0]
    default = args[1] if len(args) == 2 else None
    if type(key) is not str or key == "":
        return lambda data: var(data, key, default)
    props = key.split(".")
    if len(props) == 2:
        outer, inner = props

        def nested(data: Any) -> Any:
            if type(data) is dict:
                parent = data.get(outer)
                if type(parent) is dict:
                    value = parent.get(inner)
                    return default if value is None else value
            return walk(data, props, default)

        return nested
    if len(props) > 2:
        return lambda data: walk(data, props, default)

    def attribute(data: Any) -> Any:
        if type(data) is dict:
            value = data.get(key)
            return default if value is None else value
        return var(data, key, default)

    return attribute


def _in(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(args) != 2 or not _is_constant(args[1]):
        return None
    needle_of, haystack = nodes[0], args[1]
    if isinstance(haystack, str):
        return lambda data: to_string(needle_of(data)) in haystack
    if not isinstance(haystack, list):

        def never(data: Any) -> bool:
            needle_of(data)
            return False

        return never
    try:
        members = frozenset(haystack)
    except TypeError:
        return lambda data: needle_of(data) in haystack

    def member(data: Any) -> bool:
        needle = needle_of(data)
        try:
            return needle in members
        except TypeError:  # a list or an object needle equals no scalar member
            return False

    return member


def _strict_equals(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(nodes) != 2:
        return None
    left, right = nodes
    if _is_literal(args[1]):
        expected = args[1]
        return lambda data: left(data) == expected
    return lambda data: left(data) == right(data)


def _strict_not_equals(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(nodes) != 2:
        return None
    left, right = nodes
    if _is_literal(args[1]):
        unexpected = args[1]
        return lambda data: left(data) != unexpected
    return lambda data: left(data) != right(data)


def _equals(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(nodes) != 2:
        return None
    left, right = nodes
    return lambda data: loose_equals(left(data), right(data))


def _text(value: Any) -> str:
    return value if type(value) is str else to_string(value)


def _cat(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(nodes) == 2:
        first, second = nodes
        if type(args[0]) is str:
            prefix = args[0]

            def prefixed(data: Any) -> str:
                value = second(data)
                return prefix + (value if type(value) is str else to_string(value))

            return prefixed

        def pair(data: Any) -> str:
            left, right = first(data), second(data)
            return (left if type(left) is str else to_string(left)) + (
                right if type(right) is str else to_string(right)
            )

        return pair
    return lambda data: "".join([_text(node(data)) for node in nodes])


def _fractional(args: list[Any], nodes: list[Node]) -> Node | None:
    if not args:
        return None
    shorthand = isinstance(args[0], list)
    entries = args if shorthand else args[1:]
    fixed_weights = all(
        isinstance(entry, list) and 1 <= len(entry) <= 2 and (len(entry) == 1 or _is_literal(entry[-1]))
        for entry in entries
    )
    if not fixed_weights:
        return None
    distribution = operators.Distribution.of(entries)
    variant_nodes = tuple(compile_logic(entry[0]) for entry in entries)
    # Variants written as plain values (the usual case) need no evaluating; lists do (they are copied).
    fixed_variants = [entry[0] for entry in entries] if all(_is_literal(entry[0]) for entry in entries) else None

    def as_entries(variants: list[Any]) -> list[list[Any]]:
        return [[variant, *entry[1:]] for variant, entry in zip(variants, entries, strict=True)]

    if shorthand:

        def by_targeting_key(data: Any) -> Any:
            variants = [variant(data) for variant in variant_nodes]
            position = operators.shorthand_position(data)
            if position is None or distribution is None:
                return None
            return variants[distribution.index_of(position)]

        return by_targeting_key

    bucket_by = nodes[0]
    if fixed_variants is not None and distribution is not None:
        chosen_by = fixed_variants.__getitem__
        bucket_of = distribution.index_of

        def fixed(data: Any) -> Any:
            bucketing_value = bucket_by(data)
            if type(bucketing_value) is str:
                position = operators.text_position(bucketing_value)
            elif isinstance(bucketing_value, list | tuple):
                return operators.fractional(data, [bucketing_value, *as_entries(fixed_variants)])
            elif bucketing_value is None:
                return None
            else:
                position = operators.hash_position(bucketing_value)
            return None if position is None else chosen_by(bucket_of(position))

        return fixed

    def by_expression(data: Any) -> Any:
        bucketing_value = bucket_by(data)
        variants = [variant(data) for variant in variant_nodes]
        if isinstance(bucketing_value, list | tuple):
            # The expression gave a list: flagd then takes it as the first entry of a shorthand.
            return operators.fractional(data, [bucketing_value, *as_entries(variants)])
        if bucketing_value is None or distribution is None:
            return None
        position = operators.hash_position(bucketing_value)
        if position is None:
            return None
        return variants[distribution.index_of(position)]

    return by_expression


def _sem_ver(args: list[Any], nodes: list[Node]) -> Node | None:
    if len(args) != 3 or not (_is_literal(args[1]) and _is_literal(args[2])):
        return None
    version_of = nodes[0]
    operator, target = args[1], args[2]
    return lambda data: operators.sem_ver(data, version_of(data), operator, target)


_SPECIALISED: dict[str, Compiler] = {
    "var": _var,
    "in": _in,
    "===": _strict_equals,
    "!==": _strict_not_equals,
    "==": _equals,
    "cat": _cat,
    "fractional": _fractional,
    "sem_ver": _sem_ver,
}
