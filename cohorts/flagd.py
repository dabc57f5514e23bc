"""Compilation of a cohort set to a flagd flag-definition document.

The document holds one evaluator, `$evaluators["ring-<set>"]`, whose value is the user's ring, and
one string flag `ring-<set>` that returns it. It uses standard flagd operators only (`if`, `in`,
`===`, `sem_ver`, `starts_with`, `ends_with`, `fractional` with v3 bucketing), so every flagd
evaluator, in any language, places a user in the ring `cohorts.assign.assign` gives.
"""

from __future__ import annotations

from typing import Any

from cohorts.assign import CompiledCohortSet, CompiledSplit
from cohorts.matchers import JsonLogic, logic_of, targeting_key_in

FLAGD_SCHEMA_URL = "https://flagd.dev/schema/v0/flags.json"


def ring_flag_key(cohort_set: str) -> str:
    """The flag (and evaluator) that returns a user's ring in this cohort set."""
    return f"ring-{cohort_set}"


def _bucketing_value(split: CompiledSplit, prefix: str) -> JsonLogic:
    return {"cat": [prefix, {"var": split.bucket_by}]}


def _static_logic(split: CompiledSplit) -> JsonLogic | str:
    if len(split.static) == 1:
        return split.static[0][0]
    return {
        "fractional": [
            _bucketing_value(split, split.static_prefix),
            *([ring, weight] for ring, weight in split.static),
        ]
    }


def _split_logic(split: CompiledSplit, epoch: int) -> JsonLogic | str:
    if not split.rotating:
        return _static_logic(split)
    entries: list[list[Any]] = [[ring, weight] for ring, weight in split.rotating]
    if split.static:
        # flagd evaluates a distribution's variant expressions, so the non-rotating stage nests here.
        entries.append([_static_logic(split), split.static_total])
    return {"fractional": [_bucketing_value(split, split.rotating_prefix(epoch)), *entries]}


def _is_non_empty_string(path: str) -> JsonLogic:
    # starts_with is null for anything but a string; the split needs a non-empty string to hash.
    return {"and": [{"starts_with": [{"var": path}, ""]}, {"!==": [{"var": path}, ""]}]}


def ring_logic(compiled: CompiledCohortSet, epoch: int) -> JsonLogic:
    """The JsonLogic whose value is the user's ring: pins, opt-in/out, rules, split, default."""
    branches: list[Any] = []
    for ring in compiled.rings:
        pinned = frozenset(key for key, pinned_ring in compiled.pins.items() if pinned_ring == ring)
        if pinned:
            branches += [targeting_key_in(pinned), ring]
    if compiled.opted_in:
        branches += [targeting_key_in(compiled.opted_in), compiled.opt_in_ring]
    if compiled.opted_out:
        branches += [targeting_key_in(compiled.opted_out), compiled.opt_out_ring]
    for rule in compiled.rules:
        branches += [logic_of(rule.match), rule.ring]
    if compiled.split is not None:
        branches += [_is_non_empty_string(compiled.split.bucket_by), _split_logic(compiled.split, epoch)]
    return {"if": [*branches, compiled.fallback_ring]}


def flagd_document(compiled: CompiledCohortSet, epoch: int) -> dict[str, Any]:
    """A flagd document (valid against flagd's flags.json schema) with the ring flag and evaluator.

    It is a function of what evaluates and nothing else (no compile time), so equal documents mean
    equal behaviour and a hash of it serves as an ETag.
    """
    key = ring_flag_key(compiled.name)
    return {
        "$schema": FLAGD_SCHEMA_URL,
        "metadata": {
            "flagSetId": f"ringmaster/cohort-set/{compiled.name}",
            "version": str(compiled.version),
        },
        "$evaluators": {key: ring_logic(compiled, epoch)},
        "flags": {
            key: {
                "state": "ENABLED",
                "variants": {ring: ring for ring in compiled.rings},
                "defaultVariant": compiled.fallback_ring,
                # flagd's schema takes a reference as an operand, not as the whole rule.
                "targeting": {"if": [{"$ref": key}]},
                "metadata": {
                    "cohortSet": compiled.name,
                    "cohortSetVersion": compiled.version,
                    "rotationEpoch": epoch,
                },
            }
        },
    }
