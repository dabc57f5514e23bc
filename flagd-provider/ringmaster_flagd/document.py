"""A flagd flag-definition document, read and checked: its flags, its flag-set metadata, `$ref`s resolved.

What loads is what flagd's Python reference (FlagdCore) loads, with two refusals where it would
load a document and then fail or mislead at evaluation time: flag metadata that is not an object,
and a `defaultVariant` that is neither a variant name nor null. A flag's targeting is not judged
here: bad JsonLogic is an error of that flag when it is evaluated (PARSE_ERROR), as in flagd,
so one bad rule does not take every other flag down with it.

`$evaluators` are substituted the way flagd substitutes them, as text: every object that is
exactly `{"$ref": "<name>"}`, wherever it stands in `flags`, becomes that evaluator's rule. They
are applied in document order, so a rule may use evaluators defined after it, not before
(flagd's Python reference behaves so; flagd's documentation says refs do not nest at all).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ringmaster_flagd.errors import DocumentError

MetadataValue = str | int | float | bool
FLAG_FIELDS = ("state", "variants", "defaultVariant", "targeting", "metadata")
# Fields flagd's sync layer adds to each flag; they do not take part in evaluation.
SYNC_FIELDS = ("source", "selector")


@dataclass(frozen=True)
class FlagDefinition:
    key: str
    enabled: bool
    variants: dict[str, Any]
    default_variant: str | None
    targeting: Any
    """The JsonLogic rule, or None when the flag has none (or an empty one) and its value is static."""
    metadata: dict[str, MetadataValue]

    def fingerprint(self) -> str:
        """Everything that decides this flag's evaluations, as text that is equal only when they are."""
        return json.dumps(
            [self.enabled, self.variants, self.default_variant, self.targeting, self.metadata],
            sort_keys=True,
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class FlagDocument:
    flags: dict[str, FlagDefinition]
    metadata: dict[str, MetadataValue]


def read_document(document: str | bytes | Mapping[str, Any]) -> FlagDocument:
    """Parse and check a document (JSON text, or the already parsed object); DocumentError if unusable."""
    parsed = _parse(document)
    if not isinstance(parsed, dict):
        raise DocumentError(f"a flag document is a JSON object with a 'flags' object, not {_kind(parsed)}")
    flags = parsed.get("flags", {})
    if not isinstance(flags, dict):
        raise DocumentError(f"'flags' must be an object from flag key to flag, not {_kind(flags)}")
    metadata = _metadata("metadata", parsed.get("metadata", {}))
    evaluators = parsed.get("$evaluators")
    if evaluators is not None and not isinstance(evaluators, dict):
        raise DocumentError(f"'$evaluators' must be an object from name to JsonLogic rule, not {_kind(evaluators)}")
    if evaluators:
        flags = _substitute_refs(flags, list(evaluators.items()), start=0)
    return FlagDocument(flags={key: _flag(key, flag) for key, flag in flags.items()}, metadata=metadata)


def _parse(document: str | bytes | Mapping[str, Any]) -> Any:
    try:
        if isinstance(document, str | bytes):
            return json.loads(document)
        # A round trip copies the caller's object and leaves only JSON types in it.
        return json.loads(json.dumps(document))
    except (TypeError, ValueError, RecursionError) as error:
        raise DocumentError(f"the flag document is not valid JSON: {error}") from None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _substitute_refs(node: Any, evaluators: list[tuple[str, Any]], start: int) -> Any:
    """Replace `{"$ref": name}` objects by the named evaluator's rule.

    A rule put in place by evaluator i is itself searched only for evaluators after i, which is
    what flagd's successive text replacements in document order amount to.
    """
    if isinstance(node, dict):
        if len(node) == 1 and "$ref" in node:
            for index in range(start, len(evaluators)):
                name, rule = evaluators[index]
                if node["$ref"] == name:
                    return _substitute_refs(rule, evaluators, index + 1)
        return {key: _substitute_refs(value, evaluators, start) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute_refs(item, evaluators, start) for item in node]
    return node


def _metadata(where: str, metadata: Any) -> dict[str, MetadataValue]:
    if not isinstance(metadata, dict):
        raise DocumentError(f"{where} must be an object of strings, numbers and booleans, not {_kind(metadata)}")
    for key, value in metadata.items():
        if not key:
            raise DocumentError(f"{where}: a metadata key must not be empty")
        if value is None or not isinstance(value, str | int | float):
            raise DocumentError(f"{where}.{key}: metadata values are strings, numbers or booleans, not {_kind(value)}")
    return metadata


def _flag(key: str, flag: Any) -> FlagDefinition:
    where = f"flags.{key}"
    if not isinstance(flag, dict):
        raise DocumentError(f"{where}: a flag is an object with 'state' and 'variants', not {_kind(flag)}")
    unknown = sorted(set(flag) - set(FLAG_FIELDS) - set(SYNC_FIELDS))
    if unknown:
        raise DocumentError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; a flag has {', '.join(FLAG_FIELDS)}"
        )
    state = flag.get("state")
    if state not in ("ENABLED", "DISABLED"):
        raise DocumentError(f"{where}.state: {state!r} is not a state; use 'ENABLED' or 'DISABLED'")
    variants = flag.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise DocumentError(f"{where}.variants: a flag needs an object of at least one named variant")
    raw_metadata = flag.get("metadata")
    return FlagDefinition(
        key=key,
        enabled=state == "ENABLED",
        variants=variants,
        default_variant=_default_variant(where, flag.get("defaultVariant")),
        targeting=flag.get("targeting") or None,
        metadata={} if raw_metadata is None else _metadata(f"{where}.metadata", raw_metadata),
    )


def _default_variant(where: str, default_variant: Any) -> str | None:
    if default_variant is None or default_variant == "":
        return None
    if isinstance(default_variant, bool):
        # flagd names boolean variants "true" and "false".
        return "true" if default_variant else "false"
    if isinstance(default_variant, str):
        return default_variant
    raise DocumentError(
        f"{where}.defaultVariant: {default_variant!r} is not a variant name; use a name from 'variants' or null"
    )
