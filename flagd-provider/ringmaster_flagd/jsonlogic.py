"""The standard JsonLogic operations flagd evaluates, with the semantics of its Python reference.

Each function takes the current data and the already evaluated arguments, with the same
signature as its panzi-json-logic 1.0.1 counterpart (the engine of openfeature-flagd-core), so
surplus or missing arguments behave alike too: missing ones are null, surplus ones are ignored,
except by `var`, which takes at most two and fails beyond. The lazy operations (`if`, `and`,
`map`, ...) are not here: they decide which arguments to evaluate, so `compile.py` builds them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from ringmaster_flagd import operators
from ringmaster_flagd.coercion import (
    NAN,
    NUMERIC,
    greater_or_equal,
    greater_than,
    less_or_equal,
    less_than,
    loose_equals,
    to_number,
    to_string,
    truthy,
)

logger = logging.getLogger("ringmaster_flagd.jsonlogic")


def walk(data: Any, props: Sequence[str], default: Any) -> Any:
    """Follow a dotted path: object keys, list and string indexes, and JavaScript's `length`."""
    for prop in props:
        if isinstance(data, list | str):
            if prop == "length":
                return len(data)
            try:
                index = int(prop, 10)
            except ValueError:
                return default
            if prop != str(index) or index < 0 or index >= len(data):
                return default
            data = data[index]
        elif isinstance(data, dict):
            data = data.get(prop)
        else:
            return default
    return default if data is None else data


def var(data: Any = None, key: Any = None, default: Any = None) -> Any:
    if key is None or key == "":
        return data
    if isinstance(key, NUMERIC):
        if isinstance(data, list | str):
            try:
                index = int(key)
            except ValueError:
                return default
            if index != key or index < 0 or index >= len(data):
                return default
            return data[index]
        if isinstance(data, dict):
            data = data.get(key)
            if data is None:
                return default
        else:
            return default
    return walk(data, to_string(key).split("."), default)


def missing(data: Any = None, *args: Any) -> list[Any]:
    keys: Sequence[Any] = args[0] if args and isinstance(args[0], list) else args
    return [key for key in keys if (value := var(data, key)) is None or value == ""]


def missing_some(data: Any = None, need_count: Any = 0, keys: Any = None, *_ignored: Any) -> list[Any]:
    if not isinstance(keys, list):
        return []
    needed = to_number(need_count)
    missing_keys = missing(data, keys)
    if len(keys) - len(missing_keys) >= needed:
        return []
    return missing_keys


def equals(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> bool:
    return loose_equals(left, right)


def not_equals(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> bool:
    return not loose_equals(left, right)


def strict_equals(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> Any:
    return left == right


def strict_not_equals(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> Any:
    return left != right


def _ordering(compare: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def operation(data: Any = None, left: Any = None, middle: Any = None, right: Any = None, *_ignored: Any) -> bool:
        # A third operand makes it the "between" form: left < middle < right.
        if right is None:
            return compare(left, middle)
        return compare(left, middle) and compare(middle, right)

    return operation


def not_(data: Any = None, value: Any = None, *_ignored: Any) -> bool:
    return not truthy(value)


def double_not(data: Any = None, value: Any = None, *_ignored: Any) -> bool:
    return truthy(value)


def add(data: Any = None, *args: Any) -> int | float:
    total: int | float = 0
    for arg in args:
        total += to_number(arg)
    return total


def multiply(data: Any = None, *args: Any) -> int | float:
    product: int | float = 1
    for arg in args:
        product *= to_number(arg)
    return product


def subtract(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> int | float:
    if right is None:
        return -to_number(left)
    return to_number(left) - to_number(right)


def divide(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> float:
    return to_number(left) / to_number(right)


def modulo(data: Any = None, left: Any = None, right: Any = None, *_ignored: Any) -> int | float:
    return to_number(left) % to_number(right)


def minimum(data: Any = None, *args: Any) -> int | float:
    return min(to_number(arg) for arg in args) if args else NAN


def maximum(data: Any = None, *args: Any) -> int | float:
    return max(to_number(arg) for arg in args) if args else NAN


def in_(data: Any = None, needle: Any = None, haystack: Any = None, *_ignored: Any) -> bool:
    if isinstance(haystack, list):
        return needle in haystack
    if isinstance(haystack, str):
        return to_string(needle) in haystack
    return False


def cat(data: Any = None, *args: Any) -> str:
    return "".join(to_string(arg) for arg in args)


def _slice_start(index: Any, length: int) -> int:
    position = to_number(index)
    if math.isnan(position):
        return 0
    if position < 0:
        position = -position
        return 0 if position >= length else length - int(position)
    return min(int(position), length)


def substr(data: Any = None, string: Any = None, index: Any = None, length: Any = None, *_ignored: Any) -> str:
    text = to_string(string)
    text_length = len(text)
    start = _slice_start(index, text_length)
    if length is None:
        end = text_length
    else:
        count = to_number(length)
        if math.isnan(count):
            end = start
        elif int(count) < 0:
            end = max(text_length + int(count), start)
        else:
            end = start + int(count)
    return text[start:end]


def merge(data: Any = None, *args: Any) -> list[Any]:
    items: list[Any] = []
    for arg in args:
        if isinstance(arg, list):
            items.extend(arg)
        else:
            items.append(arg)
    return items


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"unhandled type: {type(value).__module__}.{type(value).__name__}")


def log(data: Any = None, value: Any = None, *_ignored: Any) -> Any:
    # The reference prints to stdout; a library logs. Serialising either way fails on the same values.
    logger.info("%s", json.dumps(value, default=_json_default))
    return value


def fractional(data: Any = None, *args: Any) -> Any:
    return operators.fractional(data, args)


OPERATIONS: dict[str, Callable[..., Any]] = {
    "==": equals,
    "!=": not_equals,
    "===": strict_equals,
    "!==": strict_not_equals,
    "<": _ordering(less_than),
    ">": _ordering(greater_than),
    "<=": _ordering(less_or_equal),
    ">=": _ordering(greater_or_equal),
    "!": not_,
    "!!": double_not,
    "+": add,
    "*": multiply,
    "-": subtract,
    "/": divide,
    "%": modulo,
    "in": in_,
    "min": minimum,
    "max": maximum,
    "cat": cat,
    "log": log,
    "var": var,
    "substr": substr,
    "merge": merge,
    "missing": missing,
    "missing_some": missing_some,
    "fractional": fractional,
    "starts_with": operators.starts_with,
    "ends_with": operators.ends_with,
    "sem_ver": operators.sem_ver,
}
