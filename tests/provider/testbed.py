"""The flagd testbed as this package's conformance suites use it: its files, its cells, its exclusions.

The testbed (../shared/flagd-testbed, version 3.9.0; see tests/shared_data.py) is flagd's shared
contract: Gherkin features plus the flag files they evaluate. Rows are left out only by these
tags, each for the reason given, which pytest prints with every skip:

* `@fractional-v1`: vectors of fractional bucketing v1 (float arithmetic on a signed hash, flagd
  before PR #1909). This provider buckets with v3, as flagd-core 2.x and testbed 3.9.0 do.
* `@fractional-v2`: vectors of fractional bucketing v2 (MurmurHash3 of the raw string, as the Go
  daemon does). v3 hashes the CBOR encoding of the value, so these users land elsewhere by design;
  the v3 rows (`@fractional-v3`, 132 in targeting.feature) cover the same ground.
* `@deprecated`: the superseded rule that a flag without a default variant answers FLAG_NOT_FOUND.
  The same file's `@no-default-variant` rows test the current rule (the caller's default, reason
  DEFAULT), and they run.

Nothing else is left out. The provider suite's `selector` option picks a flag set by its flagd
sync source, which in the testbed is a file (`flags/allFlags.json` is the merged file,
`rawflags/<name>` one of the raw ones); file mode has exactly that choice, the file the provider
reads, so those rows run against a provider reading the selected file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.shared_data import shared_dir

EXCLUDED_TAGS: dict[str, str] = {
    "fractional-v1": "fractional bucketing v1 (legacy float arithmetic); this provider implements v3",
    "fractional-v2": "fractional bucketing v2 (hash of the raw string, the Go daemon); this provider implements v3",
    "deprecated": "superseded rule (no default variant: FLAG_NOT_FOUND); @no-default-variant rows test the new one",
}

_ESCAPED_QUOTE = re.compile(r"""\\(["'])""")


def flagd_testbed() -> Path:
    return shared_dir() / "flagd-testbed"


def feature_tags(feature_files: list[Path]) -> set[str]:
    """Every tag the features use: pytest-bdd turns them into marks, which must be registered."""
    return {tag for path in feature_files for tag in re.findall(r"(?<!\S)@([\w-]+)", path.read_text(encoding="utf-8"))}


def merged_testbed_flags() -> dict[str, Any]:
    """flags/*.json merged as the testbed's launchpad builds allFlags.json: deep merge, selector files left out."""
    merged: dict[str, Any] = {}
    for path in sorted((flagd_testbed() / "flags").glob("*.json")):
        if not path.name.startswith("selector-"):
            merged = _deep_merge(merged, json.loads(path.read_text(encoding="utf-8")))
    return merged


def _deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def unescape(cell: str) -> str:
    """A quoted step parameter as Cucumber's `{string}` reads it: `\\"` is a quote, other backslashes stay.

    The testbed writes JSON inside quoted parameters with escaped quotes (`"{\\"a\\": 1}"`), and
    means `A\\u0000B` literally, backslash and all (its fractional vectors hash those 8 characters).
    """
    return _ESCAPED_QUOTE.sub(r"\1", cell)


def typed(type_name: str, cell: str) -> Any:
    """A table cell as a value of the named testbed type (Boolean, Integer, Float, String, Object)."""
    if type_name == "Boolean":
        assert cell in ("true", "false"), f"{cell!r} is not a Boolean cell"
        return cell == "true"
    if type_name == "Integer":
        return int(cell)
    if type_name == "Float":
        return float(cell)
    if type_name == "String":
        return unescape(cell)
    if type_name == "Object":
        return json.loads(unescape(cell))
    raise AssertionError(f"unknown testbed type {type_name!r}")
