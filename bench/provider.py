"""Flag resolutions per second: RingmasterProvider beside flagd's reference evaluator, FlagdCore.

Four flags, each in a document of its own: a static flag, a `fractional` rule, an `in` rule on an
attribute, and the ring flag of the `default` cohort set (cohorts.flagd's document). For each:

* provider level: `RingmasterProvider.resolve_*_details`, and `FlagdCore.resolve_*_value` on the
  same document and contexts (what flagd's own in-process Python provider calls), with the ratio;
* through the OpenFeature client: `client.get_*_details` with RingmasterProvider, and with the
  stock `FlagdProvider` in file mode (FlagdCore behind it), with the ratio.

Every context is checked to get the same value from both before anything is timed. Rates are
medians of timed passes over the whole population, in one process, so the ratios compare like
with like. Run: `python -m bench.provider` (options: --contexts, --repeats, --seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from ringmaster_flagd import RingmasterProvider

from bench.timing import rate
from cohorts.assign import compile_cohort_set
from cohorts.flagd import flagd_document, ring_flag_key
from cohorts.spec import default_cohort_set

RING_EPOCH = 3


@dataclass(frozen=True)
class Case:
    title: str
    document: dict[str, Any]
    flag_key: str
    flag_type: str
    default: Any


def one_flag(key: str, variants: dict[str, Any], default: str, targeting: Any = None) -> dict[str, Any]:
    flag: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": default}
    if targeting is not None:
        flag["targeting"] = targeting
    return {"flags": {key: flag}}


def cases() -> list[Case]:
    rings = {name: name for name in ("canary", "early", "stable", "laggard")}
    fractional = {
        "fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
            ["canary", 1],
            ["early", 9],
            ["stable", 80],
            ["laggard", 10],
        ]
    }
    beta = {"if": [{"in": [{"var": "tier"}, ["beta", "insider"]]}, "on", "off"]}
    compiled = compile_cohort_set(default_cohort_set(), version=1, compiled_at=datetime(2026, 11, 27, tzinfo=UTC))
    return [
        Case("static flag", one_flag("static", {"on": True, "off": False}, "on"), "static", "boolean", False),
        Case("fractional rule", one_flag("rollout", rings, "stable", fractional), "rollout", "string", "none"),
        Case(
            "`in` rule on an attribute",
            one_flag("beta", {"on": True, "off": False}, "off", beta),
            "beta",
            "boolean",
            False,
        ),
        Case(
            "ring flag, `default` cohort set",
            flagd_document(compiled, RING_EPOCH),
            ring_flag_key("default"),
            "string",
            "none",
        ),
    ]


def contexts(count: int, seed: int) -> list[EvaluationContext]:
    chooser = random.Random(seed)
    made = []
    for number in range(count):
        attributes: dict[str, Any] = {
            "tier": chooser.choice(["free", "pro", "beta", "insider"]),
            "email": f"user-{number}@example.com",
            "app_version": chooser.choice(["1.9.3", "2.0.1", "2.4.0"]),
        }
        if chooser.random() < 0.01:
            attributes["team"] = "staff"
        made.append(EvaluationContext(f"user-{number:06d}", attributes))
    return made


def line(label: str, per_second: float, baseline: float | None = None) -> str:
    ratio = "" if baseline is None else f"   {per_second / baseline:6.1f} x"
    return f"  {label:<44}{per_second:>12,.0f}/s  ({1e6 / per_second:7.2f} µs){ratio}"


def measure(case: Case, population: list[EvaluationContext], repeats: int, seconds: float, folder: Path) -> None:
    path = folder / f"{case.flag_key}.json"
    path.write_text(json.dumps(case.document), encoding="utf-8")
    ours = RingmasterProvider(f"file:{path}")
    stock = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    api.set_provider_and_wait(ours, "ringmaster")
    api.set_provider_and_wait(stock, "flagd")
    core = FlagdCore()
    core.set_flags(json.dumps(case.document))
    resolve = getattr(ours, f"resolve_{case.flag_type}_details")
    core_resolve = getattr(core, f"resolve_{case.flag_type}_value")
    ours_client = getattr(api.get_client("ringmaster"), f"get_{case.flag_type}_details")
    stock_client = getattr(api.get_client("flagd"), f"get_{case.flag_type}_details")
    key, default = case.flag_key, case.default

    for context in population:
        expected = core_resolve(key, default, context)
        answer = resolve(key, default, context)
        assert (answer.value, answer.variant, answer.reason) == (expected.value, expected.variant, expected.reason)
        assert ours_client(key, default, context).value == stock_client(key, default, context).value == expected.value

    provider_rate = rate(lambda context: resolve(key, default, context), population, repeats, seconds)
    core_rate = rate(lambda context: core_resolve(key, default, context), population, repeats, seconds)
    ours_client_rate = rate(lambda context: ours_client(key, default, context), population, repeats, seconds)
    stock_client_rate = rate(lambda context: stock_client(key, default, context), population, repeats, seconds)
    ours.shutdown()
    stock.shutdown()
    print(case.title)
    print(line("FlagdCore.resolve_*_value", core_rate))
    print(line("RingmasterProvider.resolve_*_details", provider_rate, core_rate))
    print(line("client -> FlagdProvider(file) -> FlagdCore", stock_client_rate))
    print(line("client -> RingmasterProvider", ours_client_rate, stock_client_rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum time per timed pass")
    arguments = parser.parse_args()
    # FlagdCore logs each null operator result; that is noise here.
    logging.getLogger("openfeature.contrib").setLevel(logging.CRITICAL)
    population = contexts(arguments.contexts, seed=7)
    print(
        f"{len(population):,} contexts; median of {arguments.repeats} passes of >= {arguments.seconds} s; "
        "ratios against the line above"
    )
    with tempfile.TemporaryDirectory() as folder:
        for case in cases():
            measure(case, population, arguments.repeats, arguments.seconds, Path(folder))
    api.shutdown()


if __name__ == "__main__":
    main()
