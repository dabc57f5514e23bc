"""Assignments per second: `cohorts.assign.assign` beside flagd's reference evaluator (FlagdCore).

The cohort set is a realistic one: 1,000 pinned keys, three attribute rules, one usage rule
materialized to 20,000 keys, and the rotating percentage split. Both evaluators see the same
contexts; the script checks they agree before it times anything. Run: `python -m bench.assign`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from bench.timing import rate
from cohorts.assign import UsageQuery, assign, compile_cohort_set
from cohorts.flagd import flagd_document, ring_flag_key
from cohorts.rotation import epoch_at
from cohorts.spec import default_cohort_set, parse_cohort_set

PINNED = [f"pinned-{number}" for number in range(1000)]
POWER_USERS = frozenset(f"power-{number}" for number in range(20_000))

SPEC = {
    "name": "bench",
    "defaultRing": "stable",
    "pins": {"canary": PINNED[:600], "laggard": PINNED[600:]},
    "optInRing": "early-adopter",
    "optOutRing": "laggard",
    "rules": [
        {"name": "staff", "ring": "canary", "when": {"attribute": "team", "op": "equals", "value": "staff"}},
        {
            "name": "eu-beta",
            "ring": "early-adopter",
            "when": {"all": [{"attribute": "location", "op": "in", "value": ["eu-west", "eu-north"]},
                             {"attribute": "env", "op": "not_equals", "value": "prod"}]},
        },
        {"name": "old-clients", "ring": "laggard",
         "when": {"attribute": "app_version", "op": "sem_ver", "value": "<2.0.0"}},
        {"name": "power-users", "ring": "early-adopter",
         "when": {"metric": "active_days_30d", "op": "gte", "value": 20}},
    ],
    "split": {
        "shares": {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10},
        "rotation": {"period": "7d", "rings": ["canary"]},
    },
}


def contexts(count: int, seed: int) -> list[dict[str, Any]]:
    """A population in which most users fall through to the split, as in production."""
    chooser = random.Random(seed)
    made = []
    for number in range(count):
        roll = chooser.random()
        if roll < 0.02:
            key = chooser.choice(PINNED)
        elif roll < 0.12:
            key = f"power-{chooser.randrange(len(POWER_USERS))}"
        else:
            key = f"user-{number}"
        context: dict[str, Any] = {"targetingKey": key, "env": chooser.choice(["prod", "staging"]),
                                   "location": chooser.choice(["eu-west", "us-east", "ap-south", "eu-north"]),
                                   "app_version": chooser.choice(["1.9.3", "2.0.1", "2.4.0"])}
        if chooser.random() < 0.01:
            context["team"] = "staff"
        made.append(context)
    return made


def measure(title: str, spec_document: dict[str, Any], usage: frozenset[str],
            population: list[dict[str, Any]], repeats: int, seconds: float) -> None:
    now = datetime.now(UTC)
    spec = parse_cohort_set(spec_document)

    def usage_keys(query: UsageQuery) -> frozenset[str]:
        return usage

    started = time.perf_counter()
    compiled = compile_cohort_set(spec, version=1, compiled_at=now, usage_keys=usage_keys)
    assert spec.split is not None
    epoch = epoch_at(spec.split.rotation, now)
    document = json.dumps(flagd_document(compiled, epoch))
    compile_ms = (time.perf_counter() - started) * 1000
    core = FlagdCore()
    core.set_flags(document)
    flag = ring_flag_key(spec.name)
    wrapped = {
        id(context): EvaluationContext(
            context["targetingKey"], {name: value for name, value in context.items() if name != "targetingKey"}
        )
        for context in population
    }
    for context in population:
        ours = assign(compiled, context, epoch).ring
        theirs = core.resolve_string_value(flag, "none", wrapped[id(context)]).value
        assert ours == theirs, (context, ours, theirs)

    ours_rate = rate(lambda context: assign(compiled, context, epoch), population, repeats, seconds)
    core_rate = rate(lambda context: core.resolve_string_value(flag, "none", wrapped[id(context)]),
                     population, repeats, seconds)
    print(title)
    print(f"  compile + render: {compile_ms:.1f} ms; flagd document {len(document) / 1024:,.0f} KiB; "
          f"{len(population):,} contexts, every one placed alike by both")
    print(f"  assign():  {ours_rate:10,.0f} assignments/s ({1e6 / ours_rate:8.2f} µs each)")
    print(f"  FlagdCore: {core_rate:10,.0f} evaluations/s ({1e6 / core_rate:8.2f} µs each)")
    print(f"  ratio:     {ours_rate / core_rate:10,.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contexts", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per timed pass")
    arguments = parser.parse_args()
    population = contexts(arguments.contexts, seed=7)
    measure(
        f"realistic set: {len(PINNED):,} pins, 3 attribute rules, a usage rule of {len(POWER_USERS):,} keys, "
        "rotating split",
        SPEC, POWER_USERS, population, arguments.repeats, arguments.seconds,
    )
    measure(
        "the default set (one attribute rule, rotating split, no key lists), for scale",
        default_cohort_set().to_document(), frozenset(), population, arguments.repeats, arguments.seconds,
    )


if __name__ == "__main__":
    main()
