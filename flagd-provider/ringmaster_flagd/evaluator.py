"""The in-process flagd evaluator: a loaded document, compiled, answering `resolve` calls.

`Evaluator` holds one document at a time. `set_document` reads, checks and compiles a new one and
swaps it in whole, so concurrent `resolve` calls see the old document or the new one, never a mix,
and need no lock. Everything about a flag that does not depend on the call (its metadata merged
over the flag set's, the answer for each variant and each requested type) is worked out at load
time; a call runs the compiled rule, if any, and picks a prepared answer.

Results are what flagd's Python reference, FlagdCore, gives for the same document and call;
where it raises an OpenFeature error, this returns reason ERROR with that error code. Float flags
give floats (an integer variant is converted), and a flag type of None skips the type check, for
callers such as OFREP that do not know the type.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from ringmaster_flagd.compile import Node, RuleError, compile_targeting, reads_flagd
from ringmaster_flagd.document import FlagDefinition, FlagDocument, MetadataValue, read_document

FlagType = Literal["boolean", "string", "integer", "float", "object"]
Reason = Literal["STATIC", "TARGETING_MATCH", "DEFAULT", "DISABLED", "ERROR"]
ErrorCode = Literal["FLAG_NOT_FOUND", "TYPE_MISMATCH", "PARSE_ERROR", "GENERAL"]
FLAG_TYPES: Final[tuple[FlagType | None, ...]] = ("boolean", "string", "integer", "float", "object", None)
_NO_METADATA: Final[Mapping[str, MetadataValue]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Resolution:
    """One evaluation, in OpenFeature's terms. `value` is the caller's default where no variant applies."""

    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    flag_metadata: Mapping[str, MetadataValue] = field(default_factory=lambda: _NO_METADATA)


@dataclass(frozen=True, slots=True)
class _Failure:
    """An answer that is an error whatever the call: the value is then the caller's default."""

    error_code: ErrorCode
    error_message: str


class _CodeDefault:
    """The answer "the caller's default, reason DEFAULT", for flags without a default variant."""


_CODE_DEFAULT: Final = _CodeDefault()
Outcome = Resolution | _Failure | _CodeDefault


def _type_error(flag_type: FlagType | None, value: Any) -> str | None:
    """Why `value` cannot be returned as `flag_type`, or None when it can (bool counts as a float, as in flagd)."""
    if flag_type is None:
        return None
    if flag_type == "boolean":
        fits = isinstance(value, bool)
    elif flag_type == "string":
        fits = isinstance(value, str)
    elif flag_type == "integer":
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif flag_type == "float":
        fits = isinstance(value, int | float)
    else:
        fits = isinstance(value, dict | list)
    return None if fits else f"the flag's value is {type(value).__name__}, not {flag_type}"


def _typed(flag_type: FlagType | None, value: Any) -> Any:
    # Float flags answer floats even when a variant, or the caller's default, is an integer.
    if flag_type == "float" and isinstance(value, int):
        return float(value)
    return value


class _CompiledFlag:
    """A flag ready to evaluate: its rule and, per requested type, its prepared answers."""

    __slots__ = ("by_variant", "default", "enabled", "key", "metadata", "reads_flagd", "rule")

    def __init__(self, definition: FlagDefinition, flag_set_metadata: Mapping[str, MetadataValue]) -> None:
        self.key = definition.key
        self.enabled = definition.enabled
        self.metadata: Mapping[str, MetadataValue] = MappingProxyType({**flag_set_metadata, **definition.metadata})
        self.rule: Node | None = None if definition.targeting is None else compile_targeting(definition.targeting)
        self.reads_flagd = reads_flagd(definition.targeting)
        static_or_default: Reason = "STATIC" if self.rule is None else "DEFAULT"
        self.default: dict[FlagType | None, Outcome] = {
            flag_type: self._default_outcome(definition, flag_type, static_or_default) for flag_type in FLAG_TYPES
        }
        self.by_variant: dict[FlagType | None, dict[str, Outcome]] = {
            flag_type: {
                name: self._variant_outcome(definition, flag_type, name, "TARGETING_MATCH")
                for name in definition.variants
            }
            for flag_type in FLAG_TYPES
        }

    def _default_outcome(self, definition: FlagDefinition, flag_type: FlagType | None, reason: Reason) -> Outcome:
        name = definition.default_variant
        if name is None:
            return _CODE_DEFAULT
        if name not in definition.variants:
            return _Failure("GENERAL", f"default variant '{name}' is not one of its variants")
        return self._answer(flag_type, definition.variants[name], name, reason)

    def _variant_outcome(
        self, definition: FlagDefinition, flag_type: FlagType | None, name: str, reason: Reason
    ) -> Outcome:
        value = definition.variants[name]
        if not name or value is None:
            return _Failure("GENERAL", f"targeting chose variant '{name}', which has no value")
        return self._answer(flag_type, value, name, reason)

    def _answer(self, flag_type: FlagType | None, value: Any, name: str, reason: Reason) -> Outcome:
        mismatch = _type_error(flag_type, value)
        if mismatch is not None:
            return _Failure("TYPE_MISMATCH", mismatch)
        try:
            return Resolution(_typed(flag_type, value), name, reason, flag_metadata=self.metadata)
        except OverflowError:
            return _Failure("GENERAL", f"variant '{name}' is too large for a float")


@dataclass(frozen=True)
class _Loaded:
    flags: dict[str, _CompiledFlag]
    fingerprints: dict[str, str]
    metadata: Mapping[str, MetadataValue]
    metadata_fingerprint: str


_EMPTY: Final = _Loaded(flags={}, fingerprints={}, metadata=_NO_METADATA, metadata_fingerprint="{}")


class Evaluator:
    """Evaluates flags of one flagd document at a time; `clock` gives `$flagd.timestamp` (Unix seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._loaded = _EMPTY
        self._loading = threading.Lock()

    @property
    def flag_set_metadata(self) -> Mapping[str, MetadataValue]:
        return self._loaded.metadata

    @property
    def flag_keys(self) -> list[str]:
        return list(self._loaded.flags)

    def set_document(self, document: str | bytes | Mapping[str, Any]) -> list[str]:
        """Load a document in place of the current one; the keys of flags it adds, removes or changes.

        Raises DocumentError, keeping the current document, when the new one cannot be used. A
        change of flag-set metadata changes every flag, since every flag's metadata includes it.
        """
        loaded = _load(read_document(document))
        # Readers need no lock (they take the attribute once); concurrent loads do, to diff against the right one.
        with self._loading:
            previous, self._loaded = self._loaded, loaded
        metadata_changed = previous.metadata_fingerprint != loaded.metadata_fingerprint
        return [
            key
            for key in dict.fromkeys([*previous.fingerprints, *loaded.fingerprints])
            if metadata_changed or previous.fingerprints.get(key) != loaded.fingerprints.get(key)
        ]

    def resolve(
        self,
        flag_key: str,
        flag_type: FlagType | None,
        default_value: Any,
        context: Mapping[str, Any],
        targeting_key: str | None,
    ) -> Resolution:
        """Evaluate a flag for a context: attributes plus the OpenFeature targeting key."""
        flag = self._loaded.flags.get(flag_key)
        if flag is None:
            return Resolution(default_value, None, "ERROR", "FLAG_NOT_FOUND", f"flag '{flag_key}' is not defined")
        if not flag.enabled:
            return _caller_default(flag, flag_type, default_value, "DISABLED")
        rule = flag.rule
        if rule is None:
            outcome = flag.default[flag_type]
        else:
            data = dict(context)
            if flag.reads_flagd:
                data["$flagd"] = {"flagKey": flag_key, "timestamp": int(self._clock())}
            data["targetingKey"] = targeting_key
            try:
                chosen = rule(data)
                if chosen is None:
                    outcome = flag.default[flag_type]
                else:
                    name = chosen if type(chosen) is str else _variant_name(chosen)
                    outcome = flag.by_variant[flag_type].get(name) or _not_a_variant(name)
            except RuleError as error:
                return _error(flag, default_value, "PARSE_ERROR", str(error))
            except Exception as error:
                return _error(flag, default_value, "GENERAL", f"targeting failed: {error!r}")
        if type(outcome) is Resolution:
            return outcome
        if type(outcome) is _Failure:
            return _error(flag, default_value, outcome.error_code, outcome.error_message)
        return _caller_default(flag, flag_type, default_value, "DEFAULT")


def _not_a_variant(name: str) -> _Failure:
    return _Failure("GENERAL", f"targeting chose '{name}', which is not a variant")


def _variant_name(chosen: Any) -> str:
    """The variant a rule's result names, as flagd reads it: true/false, or the text of a number."""
    if type(chosen) is str:
        return chosen
    if type(chosen) is bool:
        return "true" if chosen else "false"
    return str(chosen)


def _error(flag: _CompiledFlag, default_value: Any, error_code: ErrorCode, message: str) -> Resolution:
    return Resolution(default_value, None, "ERROR", error_code, f"flag '{flag.key}': {message}", flag.metadata)


def _caller_default(flag: _CompiledFlag, flag_type: FlagType | None, default_value: Any, reason: Reason) -> Resolution:
    try:
        return Resolution(_typed(flag_type, default_value), None, reason, flag_metadata=flag.metadata)
    except OverflowError:
        return _error(flag, default_value, "GENERAL", "the default value is too large for a float")


def _load(document: FlagDocument) -> _Loaded:
    metadata = MappingProxyType(dict(document.metadata))
    return _Loaded(
        flags={key: _CompiledFlag(definition, metadata) for key, definition in document.flags.items()},
        fingerprints={key: definition.fingerprint() for key, definition in document.flags.items()},
        metadata=metadata,
        metadata_fingerprint=json.dumps(document.metadata, sort_keys=True),
    )
