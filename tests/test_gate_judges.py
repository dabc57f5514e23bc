"""The gate judges, as a specification: every verdict of every kind, its boundaries, and properties
that hold for any numbers (a comparison never fails a version no worse than the baseline; more errors
never make a burn rate look better; fitted windows keep their shape and their floor)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.gates.judge import (
    Counts,
    ScaledWindow,
    WindowCounts,
    judge_burn_rate,
    judge_distributions,
    judge_proportions,
    judge_threshold,
    scale_windows,
)
from rollout.gates.spec import DEFAULT_BURN_WINDOWS, BurnRate, BurnWindow, Comparison, Threshold
from rollout.gates.verdicts import Verdict

NAN = math.nan
SEVERITY: dict[Verdict, int] = {"Passed": 0, "Inconclusive": 1, "Failed": 2}


def threshold(**bounds: float) -> Threshold:
    return Threshold(query="q", **bounds)


def error_ratio_comparison(**overrides: object) -> Comparison:
    return Comparison.model_validate({"test": "twoProportion", "errors": "e", "total": "t", "maxRatio": 1.5,
                                      **overrides})


def latency_comparison(**overrides: object) -> Comparison:
    return Comparison.model_validate({"test": "mannWhitney", "query": "q", "maxRatio": 1.2, "minPoints": 10,
                                      **overrides})


# --- threshold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "verdict"), [
    (0.0, "Passed"), (0.05, "Passed"), (0.0500001, "Inconclusive"), (0.1, "Inconclusive"), (0.10001, "Failed"),
    (math.inf, "Failed"),
])
def test_a_threshold_passes_up_to_max_is_inconclusive_up_to_fail_above_and_fails_beyond(
    value: float, verdict: Verdict
) -> None:
    judgment = judge_threshold(threshold(max=0.05, fail_above=0.1), value, None, 0)
    assert judgment.verdict == verdict
    assert judgment.threshold == "passes at most 0.05; fails above 0.1"
    assert judgment.values["value"] == value


@pytest.mark.parametrize(("value", "verdict"), [
    (0.99, "Passed"), (0.999, "Passed"), (0.989, "Inconclusive"), (0.95, "Inconclusive"), (0.9, "Failed"),
    (1.0, "Inconclusive"), (1.2, "Failed"),
])
def test_a_threshold_with_both_bounds_judges_below_and_above(value: float, verdict: Verdict) -> None:
    spec = threshold(min=0.99, max=0.999, fail_below=0.95, fail_above=1.1)
    judgment = judge_threshold(spec, value, None, 0)
    assert judgment.verdict == verdict
    assert judgment.threshold == "passes between 0.99 and 0.999; fails below 0.95 or above 1.1"


def test_without_fail_bounds_a_threshold_fails_as_soon_as_it_leaves_min_and_max() -> None:
    spec = threshold(min=10, max=20)
    assert [judge_threshold(spec, value, None, 0).verdict for value in (9.99, 10, 20, 20.01)] == \
        ["Failed", "Passed", "Passed", "Failed"]


@pytest.mark.parametrize("value", [None, NAN])
def test_a_threshold_without_a_value_has_no_data(value: float | None) -> None:
    judgment = judge_threshold(threshold(max=1), value, 500, 100)
    assert judgment.verdict == "NoData"
    assert "is the new version receiving traffic" in judgment.message


def test_a_threshold_with_too_few_samples_holds_even_when_the_value_would_fail() -> None:
    judgment = judge_threshold(threshold(max=0.05), 0.5, 99, 100)
    assert judgment.verdict == "TooFewSamples"
    assert judgment.values == {"value": 0.5, "samples": 99}
    assert "99 samples, fewer than the 100 needed (minSamples)" in judgment.message


def test_a_threshold_judges_once_samples_reach_the_minimum() -> None:
    assert judge_threshold(threshold(max=0.05), 0.5, 100, 100).verdict == "Failed"


@pytest.mark.parametrize("samples", [None, NAN])
def test_a_threshold_needing_samples_has_no_data_when_they_are_missing(samples: float | None) -> None:
    assert judge_threshold(threshold(max=0.05), 0.01, samples, 100).verdict == "NoData"


def test_a_threshold_needing_no_samples_ignores_a_missing_sample_count() -> None:
    judgment = judge_threshold(threshold(max=0.05), 0.01, None, 0)
    assert judgment.verdict == "Passed"
    assert judgment.message == "value 0.01 passes at most 0.05"


@settings(max_examples=300, deadline=None)
@given(
    value=st.floats(allow_nan=False),
    low=st.floats(-1e6, 1e6),
    spread=st.floats(0, 1e6),
    margins=st.tuples(st.floats(0, 1e6), st.floats(0, 1e6)),
)
def test_a_threshold_passes_exactly_the_values_within_min_and_max(
    value: float, low: float, spread: float, margins: tuple[float, float]
) -> None:
    spec = threshold(min=low, max=low + spread, fail_below=low - margins[0], fail_above=low + spread + margins[1])
    verdict = judge_threshold(spec, value, None, 0).verdict
    assert (verdict == "Passed") == (low <= value <= low + spread)
    assert (verdict == "Failed") == (value < low - margins[0] or value > low + spread + margins[1])


# --- burn-rate windows -------------------------------------------------------------------------------


def test_a_bake_shorter_than_the_long_window_scales_both_windows_keeping_twelve_to_one() -> None:
    assert scale_windows(DEFAULT_BURN_WINDOWS, bake_s=1800, min_window_s=30) == [
        ScaledWindow(long_s=1800, short_s=150, factor=14.4),
        ScaledWindow(long_s=1800, short_s=150, factor=6),
    ]


def test_a_bake_as_long_as_the_long_window_keeps_the_pair() -> None:
    assert scale_windows(DEFAULT_BURN_WINDOWS, bake_s=6 * 3600, min_window_s=30) == [
        ScaledWindow(long_s=3600, short_s=300, factor=14.4),
        ScaledWindow(long_s=21600, short_s=1800, factor=6),
    ]


def test_a_very_short_bake_never_shrinks_a_window_below_min_window() -> None:
    assert scale_windows(DEFAULT_BURN_WINDOWS, bake_s=60, min_window_s=30) == [
        ScaledWindow(long_s=60, short_s=30, factor=14.4),
        ScaledWindow(long_s=60, short_s=30, factor=6),
    ]
    assert scale_windows(DEFAULT_BURN_WINDOWS, bake_s=0, min_window_s=30)[0] == ScaledWindow(30, 30, 14.4)


@settings(max_examples=300, deadline=None)
@given(
    long_s=st.integers(60, 30 * 86400),
    divisor=st.integers(1, 60),
    bake_s=st.floats(0, 60 * 86400),
    min_window_s=st.integers(1, 600),
)
def test_scaled_windows_never_go_below_min_window_and_keep_their_ratio(
    long_s: int, divisor: int, bake_s: float, min_window_s: int
) -> None:
    short_s = max(1, long_s // divisor)
    window = BurnWindow(long=f"{long_s}s", short=f"{short_s}s", factor=2)
    [scaled] = scale_windows([window], bake_s, min_window_s)
    assert min_window_s <= scaled.short_s <= scaled.long_s
    assert scaled.long_s <= max(long_s, min_window_s)
    if bake_s >= long_s and short_s >= min_window_s:
        assert (scaled.long_s, scaled.short_s) == (long_s, short_s)
    elif scaled.short_s > min_window_s + 1:  # neither window clamped: the ratio holds up to rounding
        assert scaled.short_s / scaled.long_s == pytest.approx(short_s / long_s, abs=1 / scaled.long_s + 1e-9)


# --- burn rate ---------------------------------------------------------------------------------------

SLO = BurnRate(objective=99.9, errors="e", total="t", windows=[BurnWindow(long="1h", short="5m", factor=14.4)])
HOUR = ScaledWindow(long_s=3600, short_s=300, factor=14.4)


def burn(long_errors: float | None, short_errors: float | None, long_total: float | None = 100_000,
         short_total: float | None = 10_000, min_samples: float = 0, spec: BurnRate = SLO) -> Verdict:
    return judge_burn_rate(spec, [WindowCounts(HOUR, long_errors, long_total, short_errors, short_total)],
                           min_samples).verdict


def test_burning_faster_than_the_factor_over_both_windows_fails() -> None:
    # 2 % errors against a 0.1 % budget: burn rate 20 > 14.4
    judgment = judge_burn_rate(SLO, [WindowCounts(HOUR, 2000, 100_000, 200, 10_000)], 0)
    assert judgment.verdict == "Failed"
    assert judgment.values["burnRate[3600s]"] == pytest.approx(20)
    assert judgment.values["burnRate[300s]"] == pytest.approx(20)
    assert judgment.values["total[3600s]"] == 100_000
    assert judgment.threshold == "fails when burn rate > 14.4 over both 3600s and 300s"
    assert judgment.message.startswith("burn rate 20 over 3600s and 20 over 300s, both above 14.4")


def test_a_burn_rate_exactly_at_the_factor_does_not_fail() -> None:
    assert burn(1440, 144) == "Passed"
    assert burn(1441, 145) == "Failed"


def test_a_spike_only_in_the_short_window_is_inconclusive() -> None:
    judgment = judge_burn_rate(SLO, [WindowCounts(HOUR, 100, 100_000, 200, 10_000)], 0)
    assert judgment.verdict == "Inconclusive"
    assert "a spike that has not lasted yet" in judgment.message


def test_harm_that_has_stopped_is_inconclusive() -> None:
    judgment = judge_burn_rate(SLO, [WindowCounts(HOUR, 2000, 100_000, 0, 10_000)], 0)
    assert judgment.verdict == "Inconclusive"
    assert "harm that has stopped" in judgment.message


def test_burning_slower_than_the_factor_passes() -> None:
    assert burn(100, 10) == "Passed"


@pytest.mark.parametrize("missing", ["long_errors", "short_errors", "long_total", "short_total"])
@pytest.mark.parametrize("value", [None, NAN])
def test_a_missing_count_has_no_data(missing: str, value: float | None) -> None:
    changes: dict[str, Any] = {missing: value}
    counts = replace(WindowCounts(HOUR, 2000, 100_000, 200, 10_000), **changes)
    assert judge_burn_rate(SLO, [counts], 0).verdict == "NoData"


def test_no_requests_in_a_window_is_no_data_rather_than_a_division_by_zero() -> None:
    judgment = judge_burn_rate(SLO, [WindowCounts(HOUR, 5, 1000, 0, 0)], 0)
    assert judgment.verdict == "NoData"
    assert judgment.message.startswith("no requests over 300s")


def test_too_few_requests_in_the_longest_window_hold_even_a_high_burn_rate() -> None:
    assert burn(99, 99, long_total=99, short_total=99, min_samples=100) == "TooFewSamples"
    assert burn(100, 100, long_total=100, short_total=100, min_samples=100) == "Failed"


def test_any_failing_pair_fails_the_gate_and_the_text_names_every_pair() -> None:
    spec = BurnRate(objective=99.9, errors="e", total="t")
    fast, slow = scale_windows(spec.windows, bake_s=86400, min_window_s=30)
    judgment = judge_burn_rate(spec, [
        WindowCounts(fast, 100, 100_000, 10, 10_000),  # burn rate 1: fine
        WindowCounts(slow, 7000, 1_000_000, 700, 100_000),  # burn rate 7 > 6 over 6 h and 30 m
    ], 0)
    assert judgment.verdict == "Failed"
    assert judgment.threshold == ("fails when burn rate > 14.4 over both 3600s and 300s, "
                                  "or > 6 over both 21600s and 1800s")
    assert "over 21600s" in judgment.message


burn_counts = st.tuples(st.floats(0, 1e6), st.floats(1, 1e6), st.floats(0, 1e6), st.floats(1, 1e6))


@settings(max_examples=500, deadline=None)
@given(counts=burn_counts, more_long=st.floats(0, 1e6), more_short=st.floats(0, 1e6),
       objective=st.sampled_from([90.0, 99.0, 99.5, 99.9, 99.99]))
def test_more_errors_never_make_a_burn_rate_judgment_better(
    counts: tuple[float, float, float, float], more_long: float, more_short: float, objective: float
) -> None:
    long_errors, long_total, short_errors, short_total = counts
    spec = BurnRate(objective=objective, errors="e", total="t", windows=[BurnWindow(long="1h", short="5m", factor=3)])
    window = ScaledWindow(3600, 300, 3)
    before = judge_burn_rate(spec, [WindowCounts(window, long_errors, long_total, short_errors, short_total)], 0)
    after = judge_burn_rate(spec, [WindowCounts(window, long_errors + more_long, long_total,
                                                short_errors + more_short, short_total)], 0)
    assert SEVERITY[after.verdict] >= SEVERITY[before.verdict]


# --- comparison: two proportions --------------------------------------------------------------------


def test_a_significantly_and_materially_higher_error_ratio_fails() -> None:
    judgment = judge_proportions(error_ratio_comparison(), Counts(120, 1000), Counts(5, 1000), 100)
    assert judgment.verdict == "Failed"
    assert judgment.values["ratio"] == pytest.approx(24)
    assert judgment.values["newRatio"] == pytest.approx(0.12)
    assert judgment.values["baselineRatio"] == pytest.approx(0.005)
    assert judgment.values["pValue"] < 1e-20
    assert judgment.message.startswith("error ratio 12.0% (120 of 1000) against the baseline's 0.5% (5 of 1000): "
                                       "24x, p=")
    assert judgment.message.endswith("< 0.01")


def test_a_material_difference_the_data_cannot_confirm_yet_is_inconclusive() -> None:
    judgment = judge_proportions(error_ratio_comparison(), Counts(3, 100), Counts(1, 100), 0)
    assert judgment.verdict == "Inconclusive"
    assert "the data cannot tell yet" in judgment.message


def test_a_significant_but_immaterial_difference_passes() -> None:
    # 1.2 % against 1.0 % over a million requests each: certain, but within maxRatio 1.5
    judgment = judge_proportions(error_ratio_comparison(), Counts(12_000, 1e6), Counts(10_000, 1e6), 0)
    assert judgment.values["pValue"] < 0.01
    assert judgment.verdict == "Passed"
    assert "within maxRatio 1.5" in judgment.message


def test_every_bound_given_must_be_exceeded_to_matter() -> None:
    spec = error_ratio_comparison(maxRatio=1.5, maxDifference=0.05)
    # 3x the baseline's ratio, but only 2 percentage points more: within maxDifference
    judgment = judge_proportions(spec, Counts(300, 10_000), Counts(100, 10_000), 0)
    assert judgment.verdict == "Passed"
    assert "within maxDifference 0.05" in judgment.message
    assert judge_proportions(spec, Counts(900, 10_000), Counts(100, 10_000), 0).verdict == "Failed"


def test_errors_against_a_baseline_without_any_are_infinitely_worse() -> None:
    judgment = judge_proportions(error_ratio_comparison(), Counts(50, 1000), Counts(0, 1000), 0)
    assert judgment.verdict == "Failed"
    assert judgment.values["ratio"] == math.inf
    assert "infinitely worse" in judgment.message


def test_no_errors_on_either_side_passes_with_nothing_to_test() -> None:
    judgment = judge_proportions(error_ratio_comparison(maxDifference=0), Counts(0, 1000), Counts(0, 1000), 0)
    assert judgment.verdict == "Passed"
    assert judgment.values["pValue"] == 1
    assert judgment.values["ratio"] == 1


def test_with_direction_decrease_a_lower_ratio_is_the_harm() -> None:
    spec = error_ratio_comparison(direction="decrease", maxRatio=None, maxDifference=0.01)
    # share of requests served from cache: 80 % for the new version against 95 % for the baseline
    judgment = judge_proportions(spec, Counts(800, 1000), Counts(950, 1000), 0)
    assert judgment.verdict == "Failed"
    assert judgment.values["difference"] == pytest.approx(0.15)
    assert judge_proportions(spec, Counts(990, 1000), Counts(950, 1000), 0).verdict == "Passed"


@pytest.mark.parametrize(("new", "baseline"), [
    (Counts(None, 1000), Counts(5, 1000)), (Counts(5, NAN), Counts(5, 1000)), (Counts(5, 1000), Counts(5, None)),
])
def test_a_missing_count_on_either_side_has_no_data(new: Counts, baseline: Counts) -> None:
    assert judge_proportions(error_ratio_comparison(), new, baseline, 0).verdict == "NoData"


def test_either_side_below_min_samples_is_too_few_and_a_side_without_requests_always_is() -> None:
    spec = error_ratio_comparison()
    assert judge_proportions(spec, Counts(50, 99), Counts(0, 5000), 100).verdict == "TooFewSamples"
    judgment = judge_proportions(spec, Counts(50, 5000), Counts(0, 99), 100)
    assert judgment.verdict == "TooFewSamples"
    assert judgment.message.startswith("the baseline counted 99 requests, fewer than the 100 needed")
    assert judge_proportions(spec, Counts(0, 0), Counts(0, 1000), 0).verdict == "TooFewSamples"
    assert judge_proportions(spec, Counts(500, 1000), Counts(0, 1000), 0).verdict == "Failed"


proportion_sides = st.tuples(st.integers(0, 100_000), st.integers(1, 100_000)).map(
    lambda pair: Counts(float(min(pair)), float(pair[1])))


# maxRatio, maxDifference or both
bounds = st.one_of(
    st.tuples(st.floats(1, 10), st.none()), st.tuples(st.none(), st.floats(0, 1)),
    st.tuples(st.floats(1, 10), st.floats(0, 1)),
)


@settings(max_examples=500, deadline=None)
@given(new=proportion_sides, baseline=proportion_sides, bounds=bounds, min_samples=st.floats(0, 1000))
def test_a_comparison_never_fails_a_new_version_whose_error_ratio_is_at_most_the_baselines(
    new: Counts, baseline: Counts, bounds: tuple[float | None, float | None], min_samples: float
) -> None:
    assert new.errors is not None and new.total is not None
    assert baseline.errors is not None and baseline.total is not None
    spec = error_ratio_comparison(maxRatio=bounds[0], maxDifference=bounds[1])
    judgment = judge_proportions(spec, new, baseline, min_samples)
    if new.errors / new.total <= baseline.errors / baseline.total:
        assert judgment.verdict not in ("Failed", "Inconclusive")
    if judgment.verdict in ("Passed", "Failed", "Inconclusive"):
        assert 0 <= judgment.values["pValue"] <= 1


# --- comparison: Mann-Whitney -----------------------------------------------------------------------

BASELINE_P95 = [0.050, 0.052, 0.048, 0.051, 0.049, 0.050, 0.053, 0.047, 0.050, 0.051, 0.049, 0.050]


def test_significantly_and_materially_slower_values_fail() -> None:
    new = [value * 2 for value in BASELINE_P95]
    judgment = judge_distributions(latency_comparison(), new, BASELINE_P95, None, None, 0)
    assert judgment.verdict == "Failed"
    assert judgment.values["ratio"] == pytest.approx(2)
    assert judgment.values["newMedian"] == pytest.approx(0.1)
    assert judgment.values["baselineMedian"] == pytest.approx(0.05)
    assert judgment.values["newPoints"] == judgment.values["baselinePoints"] == 12
    assert judgment.message.startswith("median 0.1 against the baseline's 0.05 over 12 and 12 points: 2x, p=")


def test_slower_values_the_test_cannot_separate_yet_are_inconclusive() -> None:
    # Medians 1.5x apart, but the two sides overlap too much to be significant at 1 %.
    new = [0.075, 0.03, 0.08, 0.04, 0.09, 0.075, 0.035, 0.10, 0.075, 0.045, 0.085, 0.07]
    judgment = judge_distributions(latency_comparison(), new, BASELINE_P95, None, None, 0)
    assert judgment.values["ratio"] > 1.2
    assert judgment.values["pValue"] >= 0.01
    assert judgment.verdict == "Inconclusive"


def test_values_slower_by_less_than_max_ratio_pass_however_certain() -> None:
    new = [value * 1.1 for value in BASELINE_P95]
    judgment = judge_distributions(latency_comparison(), new, BASELINE_P95, None, None, 0)
    assert judgment.values["pValue"] < 0.01
    assert judgment.verdict == "Passed"


def test_identical_values_pass_with_a_p_value_of_one() -> None:
    judgment = judge_distributions(latency_comparison(maxRatio=None, maxDifference=0), [0.05] * 12, [0.05] * 12,
                                   None, None, 0)
    assert judgment.verdict == "Passed"
    assert judgment.values["pValue"] == 1


def test_with_direction_decrease_lower_values_are_the_harm() -> None:
    spec = latency_comparison(direction="decrease")  # e.g. throughput per pod
    slower = [value / 2 for value in BASELINE_P95]
    assert judge_distributions(spec, slower, BASELINE_P95, None, None, 0).verdict == "Failed"
    assert judge_distributions(spec, BASELINE_P95, slower, None, None, 0).verdict == "Passed"


def test_nan_values_are_dropped_and_an_empty_side_has_no_data() -> None:
    spec = latency_comparison()
    assert judge_distributions(spec, [NAN] * 12, BASELINE_P95, None, None, 0).verdict == "NoData"
    assert judge_distributions(spec, BASELINE_P95, [], None, None, 0).verdict == "NoData"
    judgment = judge_distributions(spec, [*BASELINE_P95[:9], NAN, NAN, NAN], BASELINE_P95, None, None, 0)
    assert judgment.verdict == "TooFewSamples"
    assert judgment.values["newPoints"] == 9
    assert "9 values for the new version, fewer than the 10 needed (minPoints)" in judgment.message


def test_min_samples_counts_the_totals_of_both_sides() -> None:
    spec = latency_comparison(total="t")
    slower = [value * 2 for value in BASELINE_P95]
    assert judge_distributions(spec, slower, BASELINE_P95, None, 500, 100).verdict == "NoData"
    assert judge_distributions(spec, slower, BASELINE_P95, 500, NAN, 100).verdict == "NoData"
    assert judge_distributions(spec, slower, BASELINE_P95, 500, 99, 100).verdict == "TooFewSamples"
    judgment = judge_distributions(spec, slower, BASELINE_P95, 500, 100, 100)
    assert judgment.verdict == "Failed"
    assert judgment.values["baselineTotal"] == 100


@settings(max_examples=200, deadline=None)
@given(
    baseline=st.lists(st.floats(0.001, 10), min_size=10, max_size=40),
    new=st.lists(st.floats(0.001, 10), min_size=10, max_size=40),
)
def test_a_latency_comparison_never_fails_a_new_version_whose_values_are_all_at_most_the_baselines_lowest(
    baseline: list[float], new: list[float]
) -> None:
    faster = [min(value, min(baseline)) for value in new]
    judgment = judge_distributions(latency_comparison(), faster, baseline, None, None, 0)
    assert judgment.verdict == "Passed"
