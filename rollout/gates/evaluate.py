"""Measuring a gate once: fill in its query templates for a ring, ask Prometheus at one time, judge.

The shell around the pure judges of `judge`. Every query of one measurement is evaluated at the same
`at`, which the measurement records with the rendered queries. Prometheus trouble never raises: it
becomes an Error verdict, which holds the rollout while the controller asks again later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from rollout.gates.judge import (
    Counts,
    WindowCounts,
    judge_burn_rate,
    judge_distributions,
    judge_proportions,
    judge_threshold,
    scale_windows,
)
from rollout.gates.prometheus import (
    PrometheusError,
    PrometheusQueries,
    PrometheusUnavailable,
    QueryRejected,
    Sample,
    Series,
)
from rollout.gates.spec import GateSpec, promql_duration, render, seconds
from rollout.gates.verdicts import Judgment, Measurement

Side = Literal["new", "baseline"]
# What a query yields once reduced: an instant query's one value (None: no series), or a range query's values.
Result = float | None | list[float]
# Prometheus refuses a range query of more than 11,000 points a series; a long bake looks back this many steps.
MAX_POINTS = 10_000


@dataclass(frozen=True)
class GateContext:
    """Where and when a gate is measured: the rollout, the ring baking, the two versions' StatefulSets,
    the ring's configured bake and how long it has baked so far."""

    namespace: str
    rollout: str
    ring: str
    promoted_rings: tuple[str, ...]
    stable_stateful_set: str
    new_stateful_set: str
    stable_revision: str
    new_revision: str
    bake_s: float
    baked_s: float


def _window_s(spec: GateSpec, context: GateContext) -> int:
    """How far back a query looks: the gate's window, else the bake so far but at least minWindow."""
    if spec.window is not None:
        return seconds(spec.window)
    return max(seconds(spec.min_window), round(context.baked_s))


def template_values(context: GateContext, spec: GateSpec, side: Side) -> dict[str, str]:
    """What each of spec.VARIABLES becomes when measuring `side` ("new", or "baseline" for the old version)."""
    new = side == "new"
    return {
        "namespace": context.namespace,
        "rollout": context.rollout,
        "ring": context.ring,
        # Ring names are DNS labels, so they need no escaping inside a PromQL regex.
        "promotedRings": "|".join(context.promoted_rings),
        "stableStatefulSet": context.stable_stateful_set,
        "newStatefulSet": context.new_stateful_set,
        "stableRevision": context.stable_revision,
        "newRevision": context.new_revision,
        "statefulSet": context.new_stateful_set if new else context.stable_stateful_set,
        "revision": context.new_revision if new else context.stable_revision,
        "window": promql_duration(_window_s(spec, context)),
        "interval": promql_duration(spec.interval_s),
    }


def queries_per_measurement(spec: GateSpec) -> int:
    """How many queries one `evaluate` of this gate sends, whatever the ring and its bake."""
    if spec.threshold is not None:
        return 1 + (spec.samples is not None)
    if spec.burn_rate is not None:
        # errors and total, over the long and the short window of each pair
        return 4 * len(spec.burn_rate.windows)
    assert spec.comparison is not None
    if spec.comparison.test == "twoProportion":
        return 4
    return 2 + 2 * (spec.comparison.total is not None)


@dataclass(frozen=True)
class _Query:
    """A rendered query: what messages call it, its text, and for a range query how far back and how often."""

    description: str
    text: str
    lookback_s: int | None = None
    step_s: int = 0


class _Unjudgeable(Exception):
    """A result no judge can read, such as several series where one value was asked for."""


def _plan(spec: GateSpec, context: GateContext) -> dict[str, _Query]:
    """Every query of one measurement, rendered, by a key the judging step reads its result under."""
    new, baseline = template_values(context, spec, "new"), template_values(context, spec, "baseline")
    plan: dict[str, _Query] = {}
    if spec.threshold is not None:
        plan["value"] = _Query("the query", render(spec.threshold.query, new))
        if spec.samples is not None:
            plan["samples"] = _Query("the samples query", render(spec.samples, new))
    elif spec.burn_rate is not None:
        burn_rate = spec.burn_rate
        for index, window in enumerate(scale_windows(burn_rate.windows, context.bake_s, seconds(spec.min_window))):
            for length, length_s in (("long", window.long_s), ("short", window.short_s)):
                values = {**new, "window": promql_duration(length_s)}
                for count, template in (("errors", burn_rate.errors), ("total", burn_rate.total)):
                    plan[f"{index}.{length}.{count}"] = _Query(f"the {count} query over {length_s}s",
                                                               render(template, values))
    else:
        comparison = spec.comparison
        assert comparison is not None
        for side, values in (("new", new), ("baseline", baseline)):
            whose = "the new version" if side == "new" else "the baseline"
            if comparison.query is not None:
                step_s = seconds(comparison.step)
                plan[f"{side}.query"] = _Query(f"the query for {whose}", render(comparison.query, values),
                                               lookback_s=min(_window_s(spec, context), MAX_POINTS * step_s),
                                               step_s=step_s)
            for count, counted in (("errors", comparison.errors), ("total", comparison.total)):
                if counted is not None:
                    plan[f"{side}.{count}"] = _Query(f"the {count} query for {whose}", render(counted, values))
    return plan


def _judge(spec: GateSpec, context: GateContext, results: Mapping[str, Result]) -> Judgment:
    """The kind's judge on the reduced results of `_plan`'s queries."""

    def number(key: str) -> float | None:
        result = results.get(key)
        assert not isinstance(result, list)
        return result

    def points(key: str) -> list[float]:
        result = results[key]
        assert isinstance(result, list)
        return result

    if spec.threshold is not None:
        return judge_threshold(spec.threshold, number("value"), number("samples"), spec.min_samples)
    if spec.burn_rate is not None:
        windows = scale_windows(spec.burn_rate.windows, context.bake_s, seconds(spec.min_window))
        counts = [
            WindowCounts(window, number(f"{index}.long.errors"), number(f"{index}.long.total"),
                         number(f"{index}.short.errors"), number(f"{index}.short.total"))
            for index, window in enumerate(windows)
        ]
        return judge_burn_rate(spec.burn_rate, counts, spec.min_samples)
    assert spec.comparison is not None
    if spec.comparison.test == "twoProportion":
        return judge_proportions(spec.comparison, Counts(number("new.errors"), number("new.total")),
                                 Counts(number("baseline.errors"), number("baseline.total")), spec.min_samples)
    return judge_distributions(spec.comparison, points("new.query"), points("baseline.query"),
                               number("new.total"), number("baseline.total"), spec.min_samples)


def _one_value(samples: list[Sample], query: _Query) -> float | None:
    if len(samples) > 1:
        raise _Unjudgeable(f"{query.description} returned {len(samples)} series; aggregate them into one, "
                           "e.g. with sum()")
    return samples[0].value if samples else None


def _one_series(series: list[Series], query: _Query) -> list[float]:
    if len(series) > 1:
        raise _Unjudgeable(f"{query.description} returned {len(series)} series; aggregate them into one, "
                           "e.g. with sum() or histogram_quantile(0.95, sum by (le) (...))")
    return [value for _, value in series[0].points] if series else []


def _run(query: _Query, prometheus: PrometheusQueries, at: datetime, timeout_s: float) -> Result:
    try:
        if query.lookback_s is None:
            return _one_value(prometheus.instant(query.text, at, timeout_s), query)
        start = at - timedelta(seconds=query.lookback_s)
        return _one_series(prometheus.range(query.text, start, at, query.step_s, timeout_s), query)
    except QueryRejected as error:
        raise _Unjudgeable(f"Prometheus refused {query.description} ({query.text}): {error}; fix the gate's "
                           "query") from None


def evaluate(
    name: str, spec: GateSpec, context: GateContext, prometheus: PrometheusQueries, at: datetime
) -> Measurement:
    """Measure gate `name` for the ring of `context` as of `at`; Prometheus trouble is an Error verdict."""
    plan = _plan(spec, context)
    try:
        results = {key: _run(query, prometheus, at, spec.timeout_s) for key, query in plan.items()}
        judgment = _judge(spec, context, results)
    except _Unjudgeable as error:
        judgment = Judgment("Error", message=str(error))
    except PrometheusUnavailable as error:
        judgment = Judgment("Error", message=f"{error}; holding until Prometheus answers")
    except PrometheusError as error:
        judgment = Judgment("Error", message=f"{error}; holding")
    return Measurement(gate=name, kind=spec.kind, ring=context.ring, at=at,
                       queries=tuple(query.text for query in plan.values()), judgment=judgment)
