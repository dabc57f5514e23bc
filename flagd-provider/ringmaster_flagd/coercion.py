"""JsonLogic's value coercions, exactly as flagd's Python reference evaluates them.

FlagdCore runs targeting through panzi-json-logic 1.0.1, which imitates JavaScript: `"30" > 20`,
`1 == "1"`, `cat(true)` is "True", `{}` is truthy, a date counts as milliseconds. Each function here
decides what its panzi-json-logic counterpart decides, raising where it raises, so a rule gives the
same answer, or the same error, in this provider as in every flagd provider built on FlagdCore.
The order of the isinstance tests is part of the behaviour (bool is an int, so `to_string(True)` is
"True"); keep it when editing.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time
from time import mktime
from typing import Any
from wsgiref.handlers import format_date_time

NAN = float("nan")
NUMERIC = (int, float)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JS_REJECTED_INFINITIES = ("inf", "-inf", "+inf")


def to_number(value: Any) -> int | float:
    """JavaScript's Number(value): numeric strings count, null and [] are 0, the rest is NaN."""
    if isinstance(value, NUMERIC):
        return value
    if value is None:
        return 0
    if isinstance(value, list):
        if not value:
            return 0
        if len(value) > 1:
            return NAN
        return to_number(value[0])
    if isinstance(value, dict):
        return NAN
    if isinstance(value, str) and value.strip().lower() in _JS_REJECTED_INFINITIES:
        # Python's float() reads these; JavaScript does not.
        return NAN
    if isinstance(value, datetime):
        return (value - EPOCH).total_seconds() * 1000.0
    if isinstance(value, date):
        return (datetime.combine(value, time()) - EPOCH).total_seconds() * 1000.0
    try:
        return float(value)
    except ValueError:
        return NAN


def to_string(value: Any) -> str:
    """JavaScript's String(value), as far as panzi-json-logic imitates it."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(to_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, date):
        return format_date_time(mktime(value.timetuple()))
    return str(value)


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: NaN, 0, "", [] and null are false; every object is true."""
    if value is None:
        return False
    if type(value) is bool:
        return value
    if isinstance(value, float):
        return not math.isnan(value) and bool(value)
    if isinstance(value, str | int | list):
        return bool(value)
    return True


def loose_equals(left: Any, right: Any) -> bool:
    """JsonLogic `==`: numbers against anything by to_number, lists and objects by identity."""
    left_type = type(left)
    if left_type is type(right):
        if left_type in (list, dict):
            return left is right
        return bool(left == right)
    if isinstance(left, NUMERIC):
        if isinstance(right, NUMERIC):
            return left == right
        return left == to_number(right)
    if isinstance(right, NUMERIC):
        return to_number(left) == right
    if left is None or right is None:
        return False
    if isinstance(left, str):
        if isinstance(right, list | dict):
            return left == to_string(right)
        raise TypeError(f"cannot compare {left_type.__name__} with {type(right).__name__}")
    if isinstance(left, list | dict):
        if isinstance(right, list | dict):
            return False
        if isinstance(right, str):
            return to_string(left) == right
    raise TypeError(f"cannot compare {left_type.__name__} with {type(right).__name__}")


def less_than(left: Any, right: Any) -> bool:
    if isinstance(left, NUMERIC):
        return left < to_number(right)
    if isinstance(right, NUMERIC):
        return to_number(left) < right
    if isinstance(left, str):
        return left < to_string(right)
    if isinstance(right, str):
        return to_string(left) < right
    return to_number(left) < to_number(right)


def less_or_equal(left: Any, right: Any) -> bool:
    if isinstance(left, NUMERIC):
        return left <= to_number(right)
    if isinstance(right, NUMERIC):
        return to_number(left) <= right
    if isinstance(left, str):
        return left <= to_string(right)
    if isinstance(right, str):
        return to_string(left) <= right
    return to_number(left) <= to_number(right)


def greater_than(left: Any, right: Any) -> bool:
    if isinstance(left, NUMERIC):
        return left > to_number(right)
    if isinstance(right, NUMERIC):
        return to_number(left) > right
    if isinstance(left, str):
        return left > to_string(right)
    if isinstance(right, str):
        return to_string(left) > right
    return to_number(left) > to_number(right)


def greater_or_equal(left: Any, right: Any) -> bool:
    if isinstance(left, NUMERIC):
        return left >= to_number(right)
    if isinstance(right, NUMERIC):
        return to_number(left) >= right
    if isinstance(left, str):
        return left >= to_string(right)
    if isinstance(right, str):
        return to_string(left) >= right
    return to_number(left) >= to_number(right)
