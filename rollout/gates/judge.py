"""Judging a gate: pure functions from the numbers Prometheus returned to a verdict.

No I/O and no clock here; `evaluate` fetches the numbers and calls these. Only positive evidence of
harm fails a gate: missing data holds (NoData, TooFewSamples), mixed or unproven evidence of harm is
Inconclusive (a human judges), and everything else passes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

from scipy.stats import mannwhitneyu, norm  # type: ignore[import-untyped]

from rollout.gates.spec import BurnRate, BurnWindow, Comparison, Threshold, seconds
from rollout.gates.verdicts import Judgment


def _present(number: float | None) -> TypeGuard[float]:
    """A number Prometheus returned: not absent, and not NaN (0/0, or an empty histogram)."""
    return number is not None and not math.isnan(number)


def _number(number: float) -> str:
    """A number as a person reads it: 0.05, 1200, 3.5e-05."""
    if math.isinf(number):
        return "infinity" if number > 0 else "-infinity"
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.3g}"


def _count(number: float) -> str:
    """A count from increase(), which extrapolates: 119.87 reads as 120."""
    return f"{number:.0f}" if abs(number) >= 10 else _number(number)


def _percent(share: float) -> str:
    """12.0%, 0.5%, and small shares with their first digits: 0.05%."""
    percent = share * 100
    return f"{percent:.1f}%" if percent >= 0.1 else f"{percent:.2g}%"


def _too_few(counted: float, needed: float, what: str, side: str = "") -> str:
    counted_text = f"{side} counted {_count(counted)} {what}" if side else f"{_count(counted)} {what}"
    return f"{counted_text}, fewer than the {_number(needed)} needed (minSamples); holding until more arrive"


# --- threshold --------------------------------------------------------------------------------------


def _passes_text(spec: Threshold) -> str:
    if spec.min is not None and spec.max is not None:
        return f"passes between {_number(spec.min)} and {_number(spec.max)}"
    if spec.max is not None:
        return f"passes at most {_number(spec.max)}"
    assert spec.min is not None
    return f"passes at least {_number(spec.min)}"


def judge_threshold(spec: Threshold, value: float | None, samples: float | None, min_samples: float) -> Judgment:
    """One value against [min, max]: inside passes, beyond failBelow / failAbove fails, between is inconclusive."""
    # Unbounded sides never fail: -inf and inf stand for "no bound".
    fail_below = next((bound for bound in (spec.fail_below, spec.min) if bound is not None), -math.inf)
    fail_above = next((bound for bound in (spec.fail_above, spec.max) if bound is not None), math.inf)
    fails = [f"below {_number(fail_below)}"] if fail_below > -math.inf else []
    fails += [f"above {_number(fail_above)}"] if fail_above < math.inf else []
    passes = _passes_text(spec)
    threshold = f"{passes}; fails {' or '.join(fails)}"
    values = {"samples": samples} if _present(samples) else {}
    if not _present(value):
        return Judgment("NoData", values, threshold, "the query returned no value (no series, or NaN such as 0/0); "
                        "holding: is the new version receiving traffic, and does the query select it?")
    values = {"value": value, **values}
    if min_samples > 0:
        if not _present(samples):
            return Judgment("NoData", values, threshold, "the samples query returned no value; holding until it does")
        if samples < min_samples:
            return Judgment("TooFewSamples", values, threshold, _too_few(samples, min_samples, "samples"))
    shown = _number(value)
    if value > fail_above:
        return Judgment("Failed", values, threshold, f"value {shown} is above {_number(fail_above)}")
    if value < fail_below:
        return Judgment("Failed", values, threshold, f"value {shown} is below {_number(fail_below)}")
    if spec.max is not None and value > spec.max:
        return Judgment("Inconclusive", values, threshold, f"value {shown} is above {_number(spec.max)} but not above "
                        f"{_number(fail_above)}; a human judges")
    if spec.min is not None and value < spec.min:
        return Judgment("Inconclusive", values, threshold, f"value {shown} is below {_number(spec.min)} but not below "
                        f"{_number(fail_below)}; a human judges")
    return Judgment("Passed", values, threshold, f"value {shown} {passes}")


# --- burn rate --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledWindow:
    """A burn-rate window pair as measured for one ring, in seconds, with the pair's factor."""

    long_s: int
    short_s: int
    factor: float


def scale_windows(windows: Sequence[BurnWindow], bake_s: float, min_window_s: int) -> list[ScaledWindow]:
    """The pairs fitted to a ring's bake: a pair whose long window outlasts the bake shrinks to it, both
    windows by the same factor so their ratio (the SRE workbook's 12:1) holds; no window is shorter than
    min_window_s, and the short window never outgrows the long one. A long enough bake keeps the pair."""
    floor_s = max(1, min_window_s)
    scaled = []
    for window in windows:
        long_s, short_s = seconds(window.long), seconds(window.short)
        if bake_s < long_s:
            short_s = round(short_s * bake_s / long_s)
            long_s = round(bake_s)
        long_s = max(floor_s, long_s)
        scaled.append(ScaledWindow(long_s=long_s, short_s=min(long_s, max(floor_s, short_s)), factor=window.factor))
    return scaled


@dataclass(frozen=True)
class WindowCounts:
    """What Prometheus counted over one pair's long and short windows."""

    window: ScaledWindow
    long_errors: float | None
    long_total: float | None
    short_errors: float | None
    short_total: float | None


def _above(rate: float, factor: float) -> bool:
    # 1 - 99.9 / 100 is not exactly 0.001: a burn rate within rounding of its factor does not exceed it.
    return rate > factor * (1 + 1e-9)


def _window_counts(pair: WindowCounts) -> list[tuple[int, float | None, float | None]]:
    """(window length, errors, total) for the long and the short window of a pair."""
    return [(pair.window.long_s, pair.long_errors, pair.long_total),
            (pair.window.short_s, pair.short_errors, pair.short_total)]


def judge_burn_rate(spec: BurnRate, counts: Sequence[WindowCounts], min_samples: float) -> Judgment:
    """Error-budget burn over pairs of windows: a pair fails when both its windows burn faster than its
    factor; exactly one of them doing so is mixed evidence (a spike so far, or harm that has stopped)."""
    threshold = "fails when burn rate " + ", or ".join(
        f"> {_number(pair.window.factor)} over both {pair.window.long_s}s and {pair.window.short_s}s" for pair in counts
    )
    values: dict[str, float] = {}
    for pair in counts:
        for window_s, errors, total in _window_counts(pair):
            values.update({f"errors[{window_s}s]": errors} if _present(errors) else {})
            values.update({f"total[{window_s}s]": total} if _present(total) else {})
    if not counts:
        return Judgment("NoData", values, threshold, "no burn-rate windows to judge; give burnRate.windows")
    burn_rates: list[tuple[ScaledWindow, float, float]] = []
    for pair in counts:
        rates = []
        for window_s, errors, total in _window_counts(pair):
            if not (_present(errors) and _present(total)):
                side = "total" if _present(errors) else "errors"
                return Judgment("NoData", values, threshold, f"the {side} query over {window_s}s returned no value; "
                                "holding: is the new version receiving traffic, and does the query select it?")
            if total == 0:
                return Judgment("NoData", values, threshold, f"no requests over {window_s}s (total is 0); holding")
            rates.append(errors / total / spec.budget)
        burn_rates.append((pair.window, rates[0], rates[1]))
    largest_total = max(pair.long_total or 0.0 for pair in counts)
    if largest_total < min_samples:
        return Judgment("TooFewSamples", values, threshold, _too_few(largest_total, min_samples, "requests"))
    for window, long_rate, short_rate in burn_rates:
        values[f"burnRate[{window.long_s}s]"] = long_rate
        values[f"burnRate[{window.short_s}s]"] = short_rate
    budget = f"against a budget of {_percent(spec.budget)} errors"
    for window, long_rate, short_rate in burn_rates:
        if _above(long_rate, window.factor) and _above(short_rate, window.factor):
            return Judgment("Failed", values, threshold, f"burn rate {_number(long_rate)} over {window.long_s}s and "
                            f"{_number(short_rate)} over {window.short_s}s, both above {_number(window.factor)} "
                            f"({budget})")
    for window, long_rate, short_rate in burn_rates:
        if _above(short_rate, window.factor) and not _above(long_rate, window.factor):
            return Judgment("Inconclusive", values, threshold, f"burn rate {_number(short_rate)} over "
                            f"{window.short_s}s is above {_number(window.factor)} but {_number(long_rate)} over "
                            f"{window.long_s}s is not: a spike that has not lasted yet? A human judges")
        if _above(long_rate, window.factor) and not _above(short_rate, window.factor):
            return Judgment("Inconclusive", values, threshold, f"burn rate {_number(long_rate)} over "
                            f"{window.long_s}s is above {_number(window.factor)} but {_number(short_rate)} over "
                            f"{window.short_s}s is not: harm that has stopped? A human judges")
    rates_text = "; ".join(f"{_number(long_rate)} over {window.long_s}s and {_number(short_rate)} over "
                           f"{window.short_s}s (limit {_number(window.factor)})"
                           for window, long_rate, short_rate in burn_rates)
    return Judgment("Passed", values, threshold, f"burn rate {rates_text}, {budget}")


# --- comparison -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Errors and all events counted on one side of a comparison."""

    errors: float | None
    total: float | None


def _ratio(worse: float, better: float) -> float:
    """How many times worse: a zero baseline makes any harm infinite, and nothing against nothing is 1."""
    if better == 0:
        return math.inf if worse > 0 else 1.0
    return worse / better


def _ratio_text(ratio: float) -> str:
    return "infinitely worse" if math.isinf(ratio) else f"{_number(ratio)}x"


def _comparison_text(spec: Comparison, subject: str) -> str:
    direction = "higher" if spec.direction == "increase" else "lower"
    bounds = []
    if spec.max_ratio is not None:
        bounds.append(f"{_number(spec.max_ratio)}x")
    if spec.max_difference is not None:
        bounds.append(_number(spec.max_difference))
    return (f"fails when the new version's {subject} {direction} than the baseline's with p < "
            f"{_number(spec.significance)} and by more than {' and '.join(bounds)}")


def _material(spec: Comparison, ratio: float, difference: float) -> bool:
    """Beyond every bound given: a bound the change stays within makes it immaterial."""
    return (spec.max_ratio is None or ratio > spec.max_ratio) and \
        (spec.max_difference is None or difference > spec.max_difference)


def _within(spec: Comparison, ratio: float, difference: float) -> str:
    if spec.max_ratio is not None and ratio <= spec.max_ratio:
        return f"within maxRatio {_number(spec.max_ratio)}"
    assert spec.max_difference is not None
    return f"within maxDifference {_number(spec.max_difference)}"


def _compared(spec: Comparison, values: dict[str, float], threshold: str, evidence: str) -> Judgment:
    """The rule shared by both tests: significant and material fails; material alone is inconclusive."""
    ratio, difference, p_value = values["ratio"], values["difference"], values["pValue"]
    change = f"{evidence}: {_ratio_text(ratio)}"
    significance = _number(spec.significance)
    if not _material(spec, ratio, difference):
        return Judgment("Passed", values, threshold, f"{change}, {_within(spec, ratio, difference)}")
    if p_value < spec.significance:
        return Judgment("Failed", values, threshold, f"{change}, p={p_value:.2g} < {significance}")
    return Judgment("Inconclusive", values, threshold, f"{change}, but p={p_value:.2g} is not below {significance}: "
                    "the data cannot tell yet; a human judges")


def _two_proportion_p_value(harm: float, errors: float, total: float, new_total: float, baseline_total: float) -> float:
    """One-sided pooled two-proportion z-test: how likely a difference of `harm` (the worse share minus
    the better) or more is if both sides had the error ratio they have together, errors / total."""
    pooled = min(1.0, max(0.0, errors / total))
    variance = pooled * (1 - pooled) * (1 / new_total + 1 / baseline_total)
    if variance == 0:
        # Both shares are 0 (or both 1): nothing varies, so only a real difference would be certain.
        return 0.0 if harm > 0 else 1.0
    return float(norm.sf(harm / math.sqrt(variance)))


def judge_proportions(spec: Comparison, new: Counts, baseline: Counts, min_samples: float) -> Judgment:
    """twoProportion: the new version's error ratio against the baseline's, with a one-sided pooled z-test."""
    what = "error ratio" if spec.direction == "increase" else "ratio"
    threshold = _comparison_text(spec, f"{what} is")
    new_errors, new_total, baseline_errors, baseline_total = new.errors, new.total, baseline.errors, baseline.total
    if not (_present(new_errors) and _present(new_total) and _present(baseline_errors) and _present(baseline_total)):
        missing = [f"{side} {name}" for side, counts in (("new", new), ("baseline", baseline))
                   for name, number in (("errors", counts.errors), ("total", counts.total)) if not _present(number)]
        return Judgment("NoData", {}, threshold, f"no value for {', '.join(missing)}; holding: does each side "
                        "receive traffic, and do the queries select it?")
    needed = max(min_samples, 1)
    if min(new_total, baseline_total) < needed:
        side = "the new version" if new_total < needed else "the baseline"
        return Judgment("TooFewSamples", {"newTotal": new_total, "baselineTotal": baseline_total}, threshold,
                        _too_few(min(new_total, baseline_total), needed, "requests", side))
    new_share, baseline_share = new_errors / new_total, baseline_errors / baseline_total
    worse, better = (new_share, baseline_share) if spec.direction == "increase" else (baseline_share, new_share)
    p_value = _two_proportion_p_value(
        worse - better, new_errors + baseline_errors, new_total + baseline_total, new_total, baseline_total
    )
    values = {
        "newRatio": new_share,
        "baselineRatio": baseline_share,
        "newTotal": new_total,
        "baselineTotal": baseline_total,
        "ratio": _ratio(worse, better),
        "difference": worse - better,
        "pValue": p_value,
    }
    evidence = (f"{what} {_percent(new_share)} ({_count(new_errors)} of {_count(new_total)}) against the baseline's "
                f"{_percent(baseline_share)} ({_count(baseline_errors)} of {_count(baseline_total)})")
    return _compared(spec, values, threshold, evidence)


def judge_distributions(
    spec: Comparison,
    new_values: Sequence[float],
    baseline_values: Sequence[float],
    new_total: float | None,
    baseline_total: float | None,
    min_samples: float,
) -> Judgment:
    """mannWhitney: the new version's values (one per step, e.g. a p95) against the baseline's, with a
    one-sided Mann-Whitney U test, and the effect measured on their medians."""
    threshold = _comparison_text(spec, "values are") + " (on medians)"
    new_points = [value for value in new_values if not math.isnan(value)]
    baseline_points = [value for value in baseline_values if not math.isnan(value)]
    counted = {"newPoints": float(len(new_points)), "baselinePoints": float(len(baseline_points))}
    if not new_points or not baseline_points:
        side = "the new version" if not new_points else "the baseline"
        return Judgment("NoData", counted, threshold, f"the query returned no values for {side}; holding: does it "
                        "receive traffic, and does the query select it?")
    if min(len(new_points), len(baseline_points)) < spec.min_points:
        side = "the new version" if len(new_points) < spec.min_points else "the baseline"
        fewest = min(len(new_points), len(baseline_points))
        return Judgment("TooFewSamples", counted, threshold, f"{fewest} values for {side}, fewer than the "
                        f"{spec.min_points} needed (minPoints); holding until more arrive")
    if min_samples > 0:
        if not (_present(new_total) and _present(baseline_total)):
            side = "the baseline" if _present(new_total) else "the new version"
            return Judgment("NoData", counted, threshold, f"the total query returned no value for {side}; holding")
        if min(new_total, baseline_total) < min_samples:
            side = "the new version" if new_total < min_samples else "the baseline"
            return Judgment("TooFewSamples", {**counted, "newTotal": new_total, "baselineTotal": baseline_total},
                            threshold, _too_few(min(new_total, baseline_total), min_samples, "samples", side))
    new_median, baseline_median = statistics.median(new_points), statistics.median(baseline_points)
    worse, better = (new_median, baseline_median) if spec.direction == "increase" else (baseline_median, new_median)
    alternative = "greater" if spec.direction == "increase" else "less"
    p_value = float(mannwhitneyu(new_points, baseline_points, alternative=alternative).pvalue)
    values = {
        "newMedian": new_median,
        "baselineMedian": baseline_median,
        **counted,
        "ratio": _ratio(worse, better),
        "difference": worse - better,
        # Identical values on both sides leave nothing to rank; scipy may answer NaN.
        "pValue": 1.0 if math.isnan(p_value) else p_value,
    }
    values.update({"newTotal": new_total} if _present(new_total) else {})
    values.update({"baselineTotal": baseline_total} if _present(baseline_total) else {})
    evidence = (f"median {_number(new_median)} against the baseline's {_number(baseline_median)} over "
                f"{len(new_points)} and {len(baseline_points)} points")
    return _compared(spec, values, threshold, evidence)
