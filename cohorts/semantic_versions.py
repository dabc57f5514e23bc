"""flagd's `sem_ver` operator: version normalisation and the comparisons it defines.

flagd strips one leading 'v', pads partial versions ('1.2' -> '1.2.0') and compares by SemVer 2.0
precedence; '^' means the same major version and '~' the same major and minor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import semver

SEMVER_OPERATORS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "=": lambda left, right: left == right,
    "!=": lambda left, right: left != right,
    "<": lambda left, right: left < right,
    "<=": lambda left, right: left <= right,
    ">": lambda left, right: left > right,
    ">=": lambda left, right: left >= right,
    "^": lambda left, right: left.major == right.major,
    "~": lambda left, right: left.major == right.major and left.minor == right.minor,
}


def parse_version(text: str) -> semver.Version:
    """Parse as flagd does; raises ValueError naming the accepted form."""
    version = text[1:] if text.startswith(("v", "V")) else text
    numeric_part = version.split("-")[0].split("+")[0]
    dots = numeric_part.count(".")
    if dots < 2:
        version = numeric_part + ".0" * (2 - dots) + version[len(numeric_part):]
    try:
        return semver.Version.parse(version)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{text!r} is not a semantic version; use e.g. '2.1.0' or 'v2.1'") from error


@functools.lru_cache(maxsize=4096)
def _parsed_or_none(text: str) -> semver.Version | None:
    # Apps report a handful of versions, each parsed once instead of on every evaluation.
    try:
        return parse_version(text)
    except ValueError:
        return None


def compare(actual: object, semver_operator: str, target: semver.Version) -> bool:
    """What `{"sem_ver": [actual, op, target]}` decides; anything unparsable is no match."""
    version = _parsed_or_none(str(actual))
    return version is not None and SEMVER_OPERATORS[semver_operator](version, target)
