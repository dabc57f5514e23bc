"""evaluate(): a gate's templates filled in for a ring, its queries sent at one time, the answers judged,
and Prometheus trouble turned into an Error verdict instead of an exception. Prometheus is a fake here
that records what it was asked; tests/test_gate_prometheus.py asks a real one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rollout.gates.evaluate import GateContext, evaluate, queries_per_measurement, template_values
from rollout.gates.prometheus import PrometheusError, PrometheusUnavailable, QueryRejected, Sample, Series
from rollout.gates.spec import VARIABLES, GateSpec

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONTEXT = GateContext(
    namespace="shop", rollout="web", ring="early-adopter", promoted_rings=("canary", "early-adopter"),
    stable_stateful_set="web", new_stateful_set="web-7f9c", stable_revision="web-5d8b6", new_revision="web-7f9c4",
    bake_s=1800, baked_s=600.4,
)
NEW = 'namespace="shop",statefulset="web-7f9c"'
OLD = 'namespace="shop",statefulset="web"'


@dataclass
class FakePrometheus:
    """Answers each query text from `values` / `series` (nothing for any other), or fails every query
    with `failure`; records every call."""

    values: dict[str, list[Sample]] = field(default_factory=dict)
    series: dict[str, list[Series]] = field(default_factory=dict)
    failure: PrometheusError | None = None
    instants: list[tuple[str, datetime, float]] = field(default_factory=list)
    ranges: list[tuple[str, datetime, datetime, float, float]] = field(default_factory=list)

    def instant(self, query: str, at: datetime, timeout_s: float) -> list[Sample]:
        self.instants.append((query, at, timeout_s))
        if self.failure is not None:
            raise self.failure
        return self.values.get(query, [])

    def range(self, query: str, start: datetime, end: datetime, step_s: float, timeout_s: float) -> list[Series]:
        self.ranges.append((query, start, end, step_s, timeout_s))
        if self.failure is not None:
            raise self.failure
        return self.series.get(query, [])

    @property
    def sent(self) -> int:
        return len(self.instants) + len(self.ranges)


def gate(**fields: Any) -> GateSpec:
    return GateSpec.model_validate(fields)


def one(value: float) -> list[Sample]:
    return [Sample({}, value)]


def errors_query(selector: str, window: str) -> str:
    return f'sum(increase(sim_http_requests_total{{{selector},code=~"5.."}}[{window}]))'


def total_query(selector: str, window: str) -> str:
    return f"sum(increase(sim_http_requests_total{{{selector}}}[{window}]))"


ERRORS_TEMPLATE = errors_query('namespace="{{ namespace }}",statefulset="{{ statefulSet }}"', "{{ window }}")
TOTAL_TEMPLATE = total_query('namespace="{{ namespace }}",statefulset="{{ statefulSet }}"', "{{ window }}")
P95_TEMPLATE = ('histogram_quantile(0.95, sum by (le) (rate(sim_http_request_duration_seconds_bucket'
                '{namespace="{{ namespace }}",statefulset="{{ statefulSet }}"}[1m])))')
ERROR_RATIO_GATE = gate(threshold={"query": f"{ERRORS_TEMPLATE} / {TOTAL_TEMPLATE}", "max": 0.01},
                        samples=TOTAL_TEMPLATE, minSamples=100, timeout="3s")
BURN_RATE_GATE = gate(burnRate={"objective": 99.9, "errors": ERRORS_TEMPLATE, "total": TOTAL_TEMPLATE})
PROPORTION_GATE = gate(comparison={"test": "twoProportion", "errors": ERRORS_TEMPLATE, "total": TOTAL_TEMPLATE,
                                   "maxRatio": 1.5})
LATENCY_GATE = gate(comparison={"test": "mannWhitney", "query": P95_TEMPLATE, "step": "30s", "maxRatio": 1.2},
                    window="10m")


def window_of(query: str) -> str:
    """The range of a query's selector: '1800s' in increase(x[1800s])."""
    match = re.search(r"\[(\d+s)\]", query)
    assert match is not None, query
    return match.group(1)


# --- templates ---------------------------------------------------------------------------------------


def test_every_template_variable_is_filled_in_for_the_new_side() -> None:
    values = template_values(CONTEXT, gate(threshold={"query": "up", "max": 1}, interval="1m"), "new")
    assert set(values) == set(VARIABLES)
    assert values == {
        "namespace": "shop",
        "rollout": "web",
        "ring": "early-adopter",
        "promotedRings": "canary|early-adopter",
        "stableStatefulSet": "web",
        "newStatefulSet": "web-7f9c",
        "stableRevision": "web-5d8b6",
        "newRevision": "web-7f9c4",
        "statefulSet": "web-7f9c",
        "revision": "web-7f9c4",
        "window": "600s",
        "interval": "60s",
    }


def test_the_baseline_side_measures_the_old_statefulset_and_revision() -> None:
    values = template_values(CONTEXT, PROPORTION_GATE, "baseline")
    assert (values["statefulSet"], values["revision"]) == ("web", "web-5d8b6")
    assert (values["newStatefulSet"], values["stableStatefulSet"]) == ("web-7f9c", "web")


def test_the_window_is_the_gates_own_else_the_bake_so_far_but_never_below_min_window() -> None:
    assert template_values(CONTEXT, gate(threshold={"query": "up", "max": 1}, window="5m"), "new")["window"] == "300s"
    just_started = replace(CONTEXT, baked_s=4.0)
    assert template_values(just_started, gate(threshold={"query": "up", "max": 1}), "new")["window"] == "30s"
    assert template_values(just_started, gate(threshold={"query": "up", "max": 1}, minWindow="2m"),
                           "new")["window"] == "120s"


def test_a_query_naming_every_variable_is_sent_fully_rendered() -> None:
    template = " ".join(f"{{{{ {name} }}}}" for name in VARIABLES)
    prometheus = FakePrometheus()
    measurement = evaluate("everything", gate(threshold={"query": template, "max": 1}), CONTEXT, prometheus, AT)
    expected = ("shop web early-adopter canary|early-adopter web web-7f9c web-5d8b6 web-7f9c4 web-7f9c web-7f9c4 "
                "600s 30s")
    assert measurement.queries == (expected,)
    assert prometheus.instants == [(expected, AT, 5)]


# --- threshold ---------------------------------------------------------------------------------------


def test_a_threshold_gate_asks_for_its_value_and_samples_at_the_evaluation_time_and_judges_them() -> None:
    ratio, samples = f"{errors_query(NEW, '600s')} / {total_query(NEW, '600s')}", total_query(NEW, "600s")
    prometheus = FakePrometheus(values={ratio: one(0.002), samples: one(6000)})
    measurement = evaluate("error-ratio", ERROR_RATIO_GATE, CONTEXT, prometheus, AT)
    assert (measurement.gate, measurement.kind, measurement.ring, measurement.at) == \
        ("error-ratio", "threshold", "early-adopter", AT)
    assert measurement.queries == (ratio, samples)
    assert prometheus.instants == [(ratio, AT, 3), (samples, AT, 3)]
    assert measurement.verdict == "Passed"
    assert measurement.judgment.values == {"value": 0.002, "samples": 6000}


def test_a_query_that_returns_no_series_has_no_data() -> None:
    assert evaluate("error-ratio", ERROR_RATIO_GATE, CONTEXT, FakePrometheus(), AT).verdict == "NoData"


def test_a_query_that_returns_several_series_is_an_error_asking_to_aggregate() -> None:
    ratio = f"{errors_query(NEW, '600s')} / {total_query(NEW, '600s')}"
    per_pod = [Sample({"pod": f"web-7f9c-{index}"}, 0.001) for index in range(3)]
    measurement = evaluate("error-ratio", ERROR_RATIO_GATE, CONTEXT, FakePrometheus(values={ratio: per_pod}), AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message == "the query returned 3 series; aggregate them into one, e.g. with sum()"
    assert len(measurement.queries) == 2


def test_a_scalar_answer_is_one_value() -> None:
    prometheus = FakePrometheus(values={"vector(1) * 0 + 0.5": one(0.5)})
    spec = gate(threshold={"query": "vector(1) * 0 + 0.5", "min": 0.9})
    assert evaluate("scalar", spec, CONTEXT, prometheus, AT).verdict == "Failed"


# --- Prometheus trouble ------------------------------------------------------------------------------


def test_prometheus_unavailable_is_an_error_that_holds_and_sends_nothing_more() -> None:
    prometheus = FakePrometheus(failure=PrometheusUnavailable(
        "cannot reach Prometheus at http://127.0.0.1:9090: connection refused"))
    measurement = evaluate("burn", BURN_RATE_GATE, CONTEXT, prometheus, AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message == ("cannot reach Prometheus at http://127.0.0.1:9090: connection refused; "
                                            "holding until Prometheus answers")
    assert prometheus.sent == 1
    assert len(measurement.queries) == queries_per_measurement(BURN_RATE_GATE)


def test_a_refused_query_is_an_error_quoting_prometheus() -> None:
    prometheus = FakePrometheus(failure=QueryRejected(
        'bad_data: invalid parameter "query": 1:10: parse error: unclosed left parenthesis'))
    measurement = evaluate("broken", gate(threshold={"query": "sum(rate(", "max": 1}), CONTEXT, prometheus, AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message == (
        'Prometheus refused the query (sum(rate(): bad_data: invalid parameter "query": 1:10: parse error: '
        "unclosed left parenthesis; fix the gate's query")


def test_any_other_prometheus_error_is_an_error_verdict_too() -> None:
    prometheus = FakePrometheus(failure=PrometheusError("Prometheus at http://p answered HTTP 404: not found"))
    measurement = evaluate("lost", PROPORTION_GATE, CONTEXT, prometheus, AT)
    assert measurement.verdict == "Error"
    assert "HTTP 404" in measurement.judgment.message


# --- burn rate ---------------------------------------------------------------------------------------


def test_a_burn_rate_gate_measures_each_pair_over_windows_fitted_to_the_bake() -> None:
    prometheus = FakePrometheus(values={
        errors_query(NEW, "1800s"): one(500), total_query(NEW, "1800s"): one(10_000),
        errors_query(NEW, "150s"): one(50), total_query(NEW, "150s"): one(1000),
    })
    measurement = evaluate("budget", BURN_RATE_GATE, CONTEXT, prometheus, AT)
    # 5 % errors against a 0.1 % budget: burn rate 50 over both windows of both pairs
    assert measurement.verdict == "Failed"
    assert measurement.judgment.values["burnRate[1800s]"] == pytest.approx(50)
    windows = [window_of(query) for query, _, _ in prometheus.instants]
    assert windows == ["1800s", "1800s", "150s", "150s"] * 2
    assert all(at == AT for _, at, _ in prometheus.instants)


def test_a_long_bake_measures_the_workbook_windows_unchanged() -> None:
    prometheus = FakePrometheus()
    day_long = replace(CONTEXT, bake_s=86400.0)
    evaluate("budget", BURN_RATE_GATE, day_long, prometheus, AT)
    windows = {window_of(query) for query, _, _ in prometheus.instants}
    assert windows == {"3600s", "300s", "21600s", "1800s"}


# --- comparisons -------------------------------------------------------------------------------------


def test_a_proportion_comparison_counts_both_sides_at_the_same_time() -> None:
    prometheus = FakePrometheus(values={
        errors_query(NEW, "600s"): one(120), total_query(NEW, "600s"): one(1000),
        errors_query(OLD, "600s"): one(5), total_query(OLD, "600s"): one(1000),
    })
    measurement = evaluate("vs-baseline", PROPORTION_GATE, CONTEXT, prometheus, AT)
    assert measurement.verdict == "Failed"
    assert measurement.judgment.message.startswith(
        "error ratio 12.0% (120 of 1000) against the baseline's 0.5% (5 of 1000): 24x, p=")
    assert [query for query, _, _ in prometheus.instants] == [
        errors_query(NEW, "600s"), total_query(NEW, "600s"), errors_query(OLD, "600s"), total_query(OLD, "600s")]


def test_a_mann_whitney_comparison_asks_for_both_sides_over_the_window_at_its_step() -> None:
    new_query, old_query = (P95_TEMPLATE.replace("{{ namespace }}", "shop").replace("{{ statefulSet }}", name)
                            for name in ("web-7f9c", "web"))
    points = [(AT.timestamp() - 30 * index, 0.05) for index in range(20)]
    prometheus = FakePrometheus(series={
        new_query: [Series({}, [(at_s, value * 3 + index * 1e-4) for index, (at_s, value) in enumerate(points)])],
        old_query: [Series({}, [(at_s, value + index * 1e-4) for index, (at_s, value) in enumerate(points)])],
    })
    measurement = evaluate("p95", LATENCY_GATE, CONTEXT, prometheus, AT)
    assert prometheus.ranges == [(new_query, AT - timedelta(minutes=10), AT, 30, 5),
                                 (old_query, AT - timedelta(minutes=10), AT, 30, 5)]
    assert measurement.verdict == "Failed"
    assert measurement.judgment.values["newPoints"] == 20


def test_a_long_bake_looks_back_at_most_ten_thousand_steps_which_prometheus_still_answers() -> None:
    prometheus = FakePrometheus()
    spec = gate(comparison={"test": "mannWhitney", "query": "q", "step": "10s", "maxRatio": 1.2})
    evaluate("p95", spec, replace(CONTEXT, bake_s=7 * 86400.0, baked_s=3 * 86400.0), prometheus, AT)
    assert {start for _, start, _, _, _ in prometheus.ranges} == {AT - timedelta(seconds=100_000)}


def test_a_range_query_returning_several_series_is_an_error() -> None:
    new_query = P95_TEMPLATE.replace("{{ namespace }}", "shop").replace("{{ statefulSet }}", "web-7f9c")
    by_pod = [Series({"pod": name}, [(AT.timestamp(), 0.05)]) for name in ("a", "b")]
    measurement = evaluate("p95", LATENCY_GATE, CONTEXT, FakePrometheus(series={new_query: by_pod}), AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message.startswith("the query for the new version returned 2 series; aggregate them")


# --- queries per measurement -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    ERROR_RATIO_GATE,
    gate(threshold={"query": "up", "max": 1}),
    BURN_RATE_GATE,
    gate(burnRate={"objective": 99, "errors": "e", "total": "t", "windows": [{"long": "1h", "short": "5m",
                                                                             "factor": 14.4}]}),
    PROPORTION_GATE,
    LATENCY_GATE,
    gate(comparison={"test": "mannWhitney", "query": "q", "total": "t", "maxRatio": 1.2}, minSamples=10),
], ids=["threshold-with-samples", "threshold", "burn-rate", "burn-rate-one-pair", "two-proportion",
        "mann-whitney", "mann-whitney-with-total"])
def test_queries_per_measurement_is_what_evaluate_sends(spec: GateSpec) -> None:
    prometheus = FakePrometheus(values={"up": one(1)})
    measurement = evaluate("counted", spec, CONTEXT, prometheus, AT)
    assert prometheus.sent == len(measurement.queries) == queries_per_measurement(spec)
