"""The simulated application's traffic: what a Ready pod has served, as a pure function of time.

A pod's counters are what it would have counted while Ready at a steady request rate: requests by
status code and a latency histogram. Nothing is random, so a gate test can predict the numbers: the
error share is exactly the annotated ratio (floored), and latencies follow a log-normal curve whose
median is the annotated latency, spread so that p95 is about 2.3 times the median and p99 about 3.2 times.

A meter counts one stretch of a pod being Ready. The simulator starts a new one each time a pod
becomes Ready again, after a crash say, so its counters start from zero as a restarted process's
would, and Prometheus's rate() takes that as a counter reset. A change of profile within a stretch
(an annotation edited on the running pod) carries the totals over, so counters never go down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Prometheus's default buckets: what an instrumented web service typically exposes.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Width of the log-normal latency curve: p99 / median = exp(2.326 * sigma), about 3.2.
LATENCY_SIGMA = 0.5
# Products such as 100 * 0.29 land just under a whole number in binary floating point.
_FLOOR_SLACK = 1e-9

REQUESTS_METRIC = "sim_http_requests"
DURATION_METRIC = "sim_http_request_duration_seconds"


@dataclass(frozen=True)
class TrafficProfile:
    """The steady traffic a pod serves: requests per second, the share that fail, the median latency."""

    rps: float = 10.0
    error_ratio: float = 0.0
    latency_ms: float = 50.0

    def share_faster_than(self, seconds: float) -> float:
        """The fraction of requests that take at most `seconds` (the log-normal CDF)."""
        median_s = self.latency_ms / 1000
        return 0.5 * (1 + math.erf(math.log(seconds / median_s) / (LATENCY_SIGMA * math.sqrt(2))))

    @property
    def mean_latency_s(self) -> float:
        return self.latency_ms / 1000 * math.exp(LATENCY_SIGMA**2 / 2)


@dataclass(frozen=True)
class TrafficTotals:
    """Everything a pod has counted: requests by outcome, cumulative bucket counts, summed latency."""

    succeeded: int
    failed: int
    bucket_counts: tuple[int, ...]
    duration_sum_s: float

    @classmethod
    def zero(cls) -> TrafficTotals:
        return cls(0, 0, (0,) * len(BUCKETS_S), 0.0)

    @property
    def requests(self) -> int:
        return self.succeeded + self.failed

    def __add__(self, other: TrafficTotals) -> TrafficTotals:
        return TrafficTotals(
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            bucket_counts=tuple(
                mine + theirs for mine, theirs in zip(self.bucket_counts, other.bucket_counts, strict=True)
            ),
            duration_sum_s=self.duration_sum_s + other.duration_sum_s,
        )


def _floor(value: float) -> int:
    return math.floor(value + _FLOOR_SLACK)


def served(profile: TrafficProfile, seconds: float) -> TrafficTotals:
    """What a pod serving `profile` counts in `seconds` of being Ready, from zero."""
    requests = _floor(profile.rps * max(seconds, 0.0))
    failed = _floor(requests * profile.error_ratio)
    return TrafficTotals(
        succeeded=requests - failed,
        failed=failed,
        bucket_counts=tuple(_floor(requests * profile.share_faster_than(bound)) for bound in BUCKETS_S),
        duration_sum_s=requests * profile.mean_latency_s,
    )


@dataclass(frozen=True)
class TrafficMeter:
    """The counters of one run of a pod: totals carried from earlier profiles plus the current one's."""

    profile: TrafficProfile
    segment_start_s: float
    carried: TrafficTotals = field(default_factory=TrafficTotals.zero)

    def totals_at(self, now_s: float) -> TrafficTotals:
        return self.carried + served(self.profile, now_s - self.segment_start_s)

    def with_profile(self, profile: TrafficProfile, now_s: float) -> TrafficMeter:
        """The same run going on at a new profile from `now_s`, keeping what was counted so far."""
        if profile == self.profile:
            return self
        return TrafficMeter(profile=profile, segment_start_s=now_s, carried=self.totals_at(now_s))


class _Snapshot(Collector):
    def __init__(self, totals: TrafficTotals) -> None:
        self._totals = totals

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(REQUESTS_METRIC, "HTTP requests served, by status code.", labels=["code"])
        requests.add_metric(["200"], self._totals.succeeded)
        requests.add_metric(["500"], self._totals.failed)
        yield requests
        buckets = [(str(bound), count) for bound, count in zip(BUCKETS_S, self._totals.bucket_counts, strict=True)]
        buckets.append(("+Inf", self._totals.requests))
        yield HistogramMetricFamily(
            DURATION_METRIC, "HTTP request latency.", buckets=buckets, sum_value=self._totals.duration_sum_s
        )


def render(totals: TrafficTotals) -> bytes:
    """The Prometheus text exposition of `totals`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(totals))
    return generate_latest(registry)
