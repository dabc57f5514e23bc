"""flagd's own JsonLogic operators: `fractional` (bucketing v3), `sem_ver`, `starts_with`, `ends_with`.

Each receives its arguments already evaluated, as flagd's do, and answers null (never false) when
its input is unusable, so a rule falls through to the flag's default variant. The semantics follow
flagd's specifications and, where they leave room, the Python reference (openfeature-flagd-core
2.x), which the conformance and differential tests hold this package to.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import mmh3
import semver

from ringmaster_flagd.cbor import SHORT_TEXT_HEADERS, UnencodableError, encode, encode_text, text_header

MAX_TOTAL_WEIGHT = 2_147_483_647  # flagd caps the sum of weights at MaxInt32


class Distribution:
    """Parsed `fractional` buckets: cumulative weight ends, checked once when the weights are constant."""

    __slots__ = ("ends", "total")

    def __init__(self, ends: list[int], total: int) -> None:
        self.ends = ends
        self.total = total

    @classmethod
    def of(cls, entries: Sequence[Any]) -> Distribution | None:
        """The distribution of `[variant, weight?]` entries, or None where flagd's would be null."""
        ends: list[int] = []
        total = 0
        for entry in entries:
            if not isinstance(entry, list | tuple) or not entry or len(entry) > 2:
                return None
            weight = 1
            if len(entry) == 2:
                declared = entry[1]
                if isinstance(declared, bool) or not isinstance(declared, int):
                    return None
                # Negative weights come from ramps computed from the clock; they mean "no share yet".
                weight = max(0, declared)
            total += weight
            ends.append(total)
        if total > MAX_TOTAL_WEIGHT or total <= 0:
            return None
        return cls(ends, total)

    def index_of(self, position: int) -> int:
        """The entry whose cumulative range holds an unsigned 32-bit hash position."""
        return bisect_right(self.ends, (position * self.total) >> 32)


def text_position(text: str) -> int | None:
    """hash_position of a string, the common bucketing value, without the general encoder's dispatch."""
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    length = len(encoded)
    header = SHORT_TEXT_HEADERS[length] if length < 24 else text_header(length)
    position: int = mmh3.hash(header + encoded, 0, False)
    return position


def hash_position(bucketing_value: Any) -> int | None:
    """Where MurmurHash3 (x86_32, seed 0, unsigned) puts the value's CBOR encoding; None if it has none."""
    if type(bucketing_value) is str:
        return text_position(bucketing_value)
    try:
        encoded = encode(bucketing_value)
    except (UnencodableError, RecursionError):
        return None
    position: int = mmh3.hash(encoded, 0, False)
    return position


def shorthand_bucketing_value(data: Any) -> list[Any] | None:
    """`[flagKey, targetingKey]`, what the shorthand form buckets by, or None without a usable key.

    It reads `data` the way the reference does, so a shorthand used where the data is not an
    object (inside `map`, say) fails as it fails there.
    """
    targeting_key = data.get("targetingKey")
    if not isinstance(targeting_key, str) or not targeting_key:
        return None
    return [data.get("$flagd", {}).get("flagKey", ""), targeting_key]


def shorthand_position(data: Any) -> int | None:
    """The hash position of the shorthand form's `[flagKey, targetingKey]`, or None without one."""
    bucketing_value = shorthand_bucketing_value(data)
    if bucketing_value is None:
        return None
    flag_key, targeting_key = bucketing_value
    if type(flag_key) is not str:
        return hash_position(bucketing_value)
    try:
        # A two-element array: its header, then the two texts.
        encoded = b"\x82" + encode_text(flag_key) + encode_text(targeting_key)
    except UnencodableError:
        return None
    position: int = mmh3.hash(encoded, 0, False)
    return position


def fractional(data: Any, args: Sequence[Any]) -> Any:
    """`{"fractional": [bucketBy?, [variant, weight?], ...]}` with every argument evaluated."""
    if not args:
        return None
    bucketing_value: Any
    if isinstance(args[0], list | tuple):
        bucketing_value, entries = shorthand_bucketing_value(data), args
    else:
        bucketing_value, entries = args[0], args[1:]
    if bucketing_value is None:
        return None
    position = hash_position(bucketing_value)
    if position is None:
        return None
    distribution = Distribution.of(entries)
    if distribution is None:
        return None
    return entries[distribution.index_of(position)][0]


def starts_with(data: Any, *args: Any) -> bool | None:
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].startswith(args[1])


def ends_with(data: Any, *args: Any) -> bool | None:
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].endswith(args[1])


@lru_cache(maxsize=4096)
def parse_version(text: str) -> semver.Version | None:
    """A version as flagd reads it: one leading v/V dropped, `1` and `1.2` padded to `1.0.0`/`1.2.0`."""
    version = text[1:] if text.startswith(("v", "V")) else text
    numeric_part = version.split("-")[0].split("+")[0]
    dots = numeric_part.count(".")
    if dots < 2:
        version = numeric_part + ".0" * (2 - dots) + version[len(numeric_part) :]
    try:
        return semver.Version.parse(version)
    except ValueError:
        return None


_SEMVER_COMPARISONS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "=": lambda version, target: version == target,
    "!=": lambda version, target: version != target,
    "<": lambda version, target: version < target,
    "<=": lambda version, target: version <= target,
    ">": lambda version, target: version > target,
    ">=": lambda version, target: version >= target,
    "^": lambda version, target: version.major == target.major,
    "~": lambda version, target: version.major == target.major and version.minor == target.minor,
}


def sem_ver(data: Any, *args: Any) -> bool | None:
    """`{"sem_ver": [version, op, target]}`: SemVer precedence, `^` same major, `~` same minor."""
    if len(args) != 3:
        return None
    version, operator, target = args
    try:
        # Numbers count as versions (1.2 is "1.2", so 1.2.0), as str() makes them for the reference too.
        parsed_version = parse_version(str(version))
        parsed_target = parse_version(str(target))
    except ValueError:  # str() of an integer longer than Python prints
        return None
    if parsed_version is None or parsed_target is None:
        return None
    try:
        compare = _SEMVER_COMPARISONS[operator]
    except (KeyError, TypeError):
        return None
    return compare(parsed_version, parsed_target)
