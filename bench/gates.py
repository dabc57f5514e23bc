"""How long a gate takes to evaluate, by kind, and how many Prometheus queries it sends per interval.

A real Prometheus (Debian's) is started on a backfilled, deterministic history: two hours of a new
and a baseline StatefulSet's request counters (15 s samples) and their latency histograms. Each kind
of gate is evaluated repeatedly at one fixed time through the same path the controller uses
(`rollout.gates.evaluate`: prometheus-api-client, explicit time, no retries), and timed against a
baseline in the same run: one bare instant query of `up`-like cost. One measurement is taken per
gate per interval, so queries per measurement are the queries per gate per interval.
Run: `python -m bench.gates [--repeats 200]`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollout.gates.evaluate import GateContext, evaluate, queries_per_measurement
from rollout.gates.prometheus import Prometheus
from rollout.gates.spec import GateSpec
from rollout.localcluster.prometheus import PrometheusServer, backfill

START_S = 1_767_225_600  # 2026-01-01T00:00:00Z
HISTORY_S = 2 * 3600
STEP_S = 15
NAMESPACE = "bench"
NEW, STABLE = "web-2f9c0a1b3d", "web"
BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)
SELECTED = 'namespace="{{ namespace }}",statefulset="{{ statefulSet }}"'
REQUESTS = f"sum(increase(sim_http_requests_total{{{SELECTED}}}[{{{{ window }}}}]))"
ERRORS = f'sum(increase(sim_http_requests_total{{{SELECTED},code=~"5.."}}[{{{{ window }}}}]))'
P95 = ("histogram_quantile(0.95, sum by (le) (rate(sim_http_request_duration_seconds_bucket"
       f"{{{SELECTED}}}[1m])))")

GATES: dict[str, dict[str, Any]] = {
    "threshold (value + samples)": {
        "threshold": {"query": f"{ERRORS.replace('statefulSet', 'newStatefulSet')} / "
                               f"{REQUESTS.replace('statefulSet', 'newStatefulSet')}", "max": 0.05},
        "samples": REQUESTS.replace("statefulSet", "newStatefulSet"), "minSamples": 100},
    "burnRate (2 window pairs)": {
        "burnRate": {"objective": 99.9, "errors": ERRORS, "total": REQUESTS}, "minSamples": 100},
    "comparison twoProportion": {
        "comparison": {"test": "twoProportion", "errors": ERRORS, "total": REQUESTS, "maxRatio": 1.5,
                       "maxDifference": 0.005}, "minSamples": 100},
    "comparison mannWhitney (1h at 30s)": {
        "comparison": {"test": "mannWhitney", "query": P95, "step": "30s", "maxRatio": 1.2},
        "window": "1h"},
}


def history() -> str:
    """Counters for both sides: 20 requests/s, 0.1 % errors on the baseline and 0.12 % on the new
    version; latencies spread over the buckets, the new version 2 % slower."""
    lines = ["# TYPE sim_http_requests counter"]
    for statefulset, error_share in ((STABLE, 0.001), (NEW, 0.0012)):
        for code, share in (("200", 1 - error_share), ("500", error_share)):
            labels = f'namespace="{NAMESPACE}",statefulset="{statefulset}",code="{code}"'
            lines += [f"sim_http_requests_total{{{labels}}} {20 * share * t:.3f} {START_S + t}"
                      for t in range(0, HISTORY_S + 1, STEP_S)]
    lines.append("# TYPE sim_http_request_duration_seconds histogram")
    for statefulset, slower in ((STABLE, 1.0), (NEW, 1.02)):
        shares = [min(1.0, 0.2 * (index + 1) / slower) for index in range(len(BUCKETS_S))]
        shares[-1] = 1.0
        for bound, share in zip(BUCKETS_S, shares, strict=True):
            le = "+Inf" if math.isinf(bound) else repr(bound)
            labels = f'namespace="{NAMESPACE}",statefulset="{statefulset}",le="{le}"'
            lines += [f"sim_http_request_duration_seconds_bucket{{{labels}}} {20 * share * t:.3f} {START_S + t}"
                      for t in range(0, HISTORY_S + 1, STEP_S)]
        labels = f'namespace="{NAMESPACE}",statefulset="{statefulset}"'
        lines += [f"sim_http_request_duration_seconds_count{{{labels}}} {20 * t} {START_S + t}"
                  for t in range(0, HISTORY_S + 1, STEP_S)]
        lines += [f"sim_http_request_duration_seconds_sum{{{labels}}} {20 * 0.08 * slower * t:.3f} {START_S + t}"
                  for t in range(0, HISTORY_S + 1, STEP_S)]
    return "\n".join(lines) + "\n# EOF\n"


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """p50 and p99 of `call`, in milliseconds, after two warm-up calls."""
    for _ in range(2):
        call()
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    durations.sort()
    return statistics.median(durations), durations[min(len(durations) - 1, math.ceil(0.99 * len(durations)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="evaluations per kind")
    arguments = parser.parse_args()
    at = datetime.fromtimestamp(START_S + HISTORY_S, UTC)
    context = GateContext(namespace=NAMESPACE, rollout="web", ring="canary", promoted_rings=("canary",),
                          stable_stateful_set=STABLE, new_stateful_set=NEW, stable_revision="web-1",
                          new_revision="web-2", bake_s=3600, baked_s=3600)
    with tempfile.TemporaryDirectory(prefix="ringmaster-bench-gates-") as folder:
        data = Path(folder) / "data"
        started = time.perf_counter()
        backfill(history(), data)
        backfill_s = time.perf_counter() - started
        with PrometheusServer(data) as server:
            prometheus = Prometheus(server.url)
            print(f"Prometheus {server.url}: 2 h of history for 2 StatefulSets (15 s samples) backfilled in "
                  f"{backfill_s:.2f} s; {arguments.repeats} evaluations per kind at one fixed time")
            bare = f'sum(sim_http_requests_total{{namespace="{NAMESPACE}",statefulset="{NEW}"}})'
            base_p50, base_p99 = timed(lambda: prometheus.instant(bare, at, 5.0), arguments.repeats)
            print(f"{'gate':<38} {'verdict':<10} {'queries/interval':>16} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'p50 per query':>14}")
            print(f"{'baseline: one bare instant query':<38} {'-':<10} {1:>16} {base_p50:8.2f} {base_p99:8.2f} "
                  f"{base_p50:11.2f} ms")
            for title, raw in GATES.items():
                spec = GateSpec.model_validate(raw)
                before = prometheus.queries
                measurement = evaluate("bench", spec, context, prometheus, at)
                sent = prometheus.queries - before
                assert sent == queries_per_measurement(spec), (title, sent)
                assert measurement.verdict not in ("Error", "NoData"), (title, measurement.judgment.message)
                p50, p99 = timed(lambda spec=spec: evaluate("bench", spec, context, prometheus, at),  # type: ignore[misc]
                                 arguments.repeats)
                print(f"{title:<38} {measurement.verdict:<10} {sent:>16} {p50:8.2f} {p99:8.2f} "
                      f"{p50 / sent:11.2f} ms")
            down = Prometheus(f"http://127.0.0.1:{server.port}")
        # The server is stopped: what an outage costs one evaluation (no hidden retries).
        spec = GateSpec.model_validate(GATES["burnRate (2 window pairs)"])
        p50, p99 = timed(lambda: evaluate("bench", spec, context, down, at), 20)
        verdict = evaluate("bench", spec, context, down, at).verdict
        print(f"{'burnRate with Prometheus stopped':<38} {verdict:<10} {'1 (fails fast)':>16} {p50:8.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()
