"""Gates against a real Prometheus: every kind's verdicts on a history written in advance, queried at a
fixed time, and Prometheus's failures (stopped, refusing a query, overloaded, silent) as Error verdicts
that come back at once, without retries.

The history is the simulator's metrics for one Rollout per namespace, each telling a story: `healthy`
(both versions at 0.5 % errors and fast), `broken` (the new version at 20 % errors and about 5x slower),
`degraded` (2 % errors), `spiking` (0.5 %, then 30 % for the last 5 minutes), `sparse` (0.1 requests/s a
side, 2 % errors against 1 %), `quiet` (a request every 50 s) and `absent` (nothing at all). It ends at AT,
2026-01-01T02:00:00Z, when every gate is measured.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rollout.gates.evaluate import GateContext, evaluate, queries_per_measurement
from rollout.gates.prometheus import Prometheus, PrometheusUnavailable, QueryRejected
from rollout.gates.spec import GateSpec
from rollout.gates.verdicts import Verdict
from rollout.localcluster.prometheus import PrometheusServer, free_port
from tests.prometheus_harness import Series, backfilled_prometheus, counter_series, openmetrics

START_S = 1_767_225_600  # 2026-01-01T00:00:00Z
END_S = START_S + 2 * 3600
STEP_S = 15
AT = datetime.fromtimestamp(END_S, UTC)
STABLE, NEW = "web", "web-v2"
BUCKETS = ("0.025", "0.05", "0.1", "0.25", "0.5", "1", "+Inf")
# Share of requests at most each bucket's bound: p95 is 0.1 s when fast, about 0.48 s when slow.
FAST = (0.2, 0.6, 0.95, 1.0, 1.0, 1.0, 1.0)
SLOW = (0.0, 0.05, 0.2, 0.7, 0.97, 1.0, 1.0)


def request_counters(namespace: str, statefulset: str, rps: float, error_share: float,
                     spike: tuple[float, float] | None = None) -> list[Series]:
    """sim_http_requests_total of one StatefulSet: `rps` requests a second, `error_share` of them 500s;
    `spike` = (from Unix seconds, error share) changes the share from then on."""
    labels = {"namespace": namespace, "statefulset": statefulset}
    if spike is None:
        return [counter_series("sim_http_requests_total", {**labels, "code": code}, START_S, END_S, STEP_S, rate)
                for code, rate in (("200", rps * (1 - error_share)), ("500", rps * error_share))]
    spike_s, spike_share = spike

    def counted(share_before: float, share_after: float) -> list[tuple[float, float]]:
        return [(at_s, rps * (share_before * (min(at_s, spike_s) - START_S) + share_after * max(0, at_s - spike_s)))
                for at_s in range(START_S, END_S + 1, STEP_S)]

    return [Series("sim_http_requests_total", {**labels, "code": "200"}, counted(1 - error_share, 1 - spike_share)),
            Series("sim_http_requests_total", {**labels, "code": "500"}, counted(error_share, spike_share))]


def latency_histogram(namespace: str, statefulset: str, rps: float, shares: tuple[float, ...]) -> list[str]:
    """sim_http_request_duration_seconds of one StatefulSet as OpenMetrics lines, a timestamp at a time."""
    labels = f'namespace="{namespace}",statefulset="{statefulset}"'
    lines = []
    for at_s in range(START_S, END_S + 1, STEP_S):
        served = rps * (at_s - START_S)
        lines += [f'sim_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {served * share:.6f} {at_s}'
                  for bound, share in zip(BUCKETS, shares, strict=True)]
        lines += [f"sim_http_request_duration_seconds_count{{{labels}}} {served:.6f} {at_s}",
                  f"sim_http_request_duration_seconds_sum{{{labels}}} {served * 0.1:.6f} {at_s}"]
    return lines


def history() -> str:
    counters = [
        *request_counters("healthy", STABLE, 10, 0.005), *request_counters("healthy", NEW, 10, 0.005),
        *request_counters("broken", STABLE, 10, 0.005), *request_counters("broken", NEW, 10, 0.2),
        *request_counters("degraded", STABLE, 10, 0.005), *request_counters("degraded", NEW, 10, 0.02),
        *request_counters("spiking", STABLE, 10, 0.005),
        *request_counters("spiking", NEW, 10, 0.005, spike=(END_S - 300, 0.3)),
        *request_counters("sparse", STABLE, 0.1, 0.01), *request_counters("sparse", NEW, 0.1, 0.02),
        *request_counters("quiet", STABLE, 0.02, 0.5), *request_counters("quiet", NEW, 0.02, 0.5),
    ]
    histograms = ["# TYPE sim_http_request_duration_seconds histogram"]
    for namespace, rps, new_shares in (("healthy", 10, FAST), ("broken", 10, SLOW), ("quiet", 0.02, FAST)):
        histograms += latency_histogram(namespace, STABLE, rps, FAST)
        histograms += latency_histogram(namespace, NEW, rps, new_shares)
    return openmetrics(counters).removesuffix("# EOF\n") + "\n".join(histograms) + "\n# EOF\n"


# Gate queries as a team would write them against the simulator's metrics.
ERRORS = ('sum(increase(sim_http_requests_total{namespace="{{ namespace }}",statefulset="{{ statefulSet }}",'
          'code=~"5.."}[{{ window }}]))')
TOTAL = ('sum(increase(sim_http_requests_total{namespace="{{ namespace }}",statefulset="{{ statefulSet }}"}'
         '[{{ window }}]))')
P95 = ('histogram_quantile(0.95, sum by (le) (rate(sim_http_request_duration_seconds_bucket'
       '{namespace="{{ namespace }}",statefulset="{{ statefulSet }}"}[1m])))')


def gate(**fields: Any) -> GateSpec:
    return GateSpec.model_validate({"timeout": "2s", **fields})


GATES: dict[str, GateSpec] = {
    "threshold": gate(threshold={"query": f"{ERRORS} / {TOTAL}", "max": 0.01, "failAbove": 0.05}, samples=TOTAL,
                      minSamples=100),
    "burnRate": gate(burnRate={"objective": 99, "errors": ERRORS, "total": TOTAL}, minSamples=100),
    "twoProportion": gate(comparison={"test": "twoProportion", "errors": ERRORS, "total": TOTAL, "maxRatio": 1.5},
                          minSamples=100),
    "mannWhitney": gate(comparison={"test": "mannWhitney", "query": P95, "total": TOTAL, "step": "30s",
                                    "maxRatio": 1.2}, window="10m", minSamples=100),
    # Three points a side: a 5x slower p95 that a test at 99 % cannot confirm yet.
    "mannWhitney (first minute)": gate(comparison={"test": "mannWhitney", "query": P95, "step": "30s", "minPoints": 3,
                                                   "maxRatio": 1.2}, window="1m"),
}


def context(namespace: str) -> GateContext:
    return GateContext(namespace=namespace, rollout="web", ring="canary", promoted_rings=("canary",),
                       stable_stateful_set=STABLE, new_stateful_set=NEW, stable_revision="web-1", new_revision="web-2",
                       bake_s=3600, baked_s=1800)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with backfilled_prometheus(tmp_path_factory.mktemp("gates"), history()) as prometheus:
        yield prometheus


@pytest.fixture
def prometheus(server: PrometheusServer) -> Prometheus:
    return Prometheus(server.url)


# --- every kind, every verdict -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "namespace", "verdict"), [
    ("threshold", "healthy", "Passed"),
    ("threshold", "broken", "Failed"),
    ("threshold", "degraded", "Inconclusive"),
    ("threshold", "quiet", "TooFewSamples"),
    ("threshold", "absent", "NoData"),
    ("burnRate", "healthy", "Passed"),
    ("burnRate", "broken", "Failed"),
    ("burnRate", "spiking", "Inconclusive"),
    ("burnRate", "quiet", "TooFewSamples"),
    ("burnRate", "absent", "NoData"),
    ("twoProportion", "healthy", "Passed"),
    ("twoProportion", "broken", "Failed"),
    ("twoProportion", "sparse", "Inconclusive"),
    ("twoProportion", "quiet", "TooFewSamples"),
    ("twoProportion", "absent", "NoData"),
    ("mannWhitney", "healthy", "Passed"),
    ("mannWhitney", "broken", "Failed"),
    ("mannWhitney (first minute)", "broken", "Inconclusive"),
    ("mannWhitney", "quiet", "TooFewSamples"),
    ("mannWhitney", "absent", "NoData"),
])
def test_each_kind_of_gate_reaches_each_verdict_on_real_prometheus(
    prometheus: Prometheus, kind: str, namespace: str, verdict: Verdict
) -> None:
    measurement = evaluate(kind, GATES[kind], context(namespace), prometheus, AT)
    assert measurement.verdict == verdict, measurement.judgment.message
    assert prometheus.queries == queries_per_measurement(GATES[kind]) == len(measurement.queries)


def test_the_numbers_judged_are_prometheus_exact_counts(prometheus: Prometheus) -> None:
    threshold = evaluate("error-ratio", GATES["threshold"], context("broken"), prometheus, AT).judgment
    assert threshold.values == pytest.approx({"value": 0.2, "samples": 18_000})
    assert threshold.message == "value 0.2 is above 0.05"
    burn = evaluate("budget", GATES["burnRate"], context("broken"), prometheus, AT).judgment
    assert burn.values["burnRate[3600s]"] == pytest.approx(20)
    assert burn.values["total[300s]"] == pytest.approx(3000)
    comparison = evaluate("vs-baseline", GATES["twoProportion"], context("broken"), prometheus, AT).judgment
    assert comparison.message.startswith("error ratio 20.0% (3600 of 18000) against the baseline's 0.5% (90 of 18000)")
    latency = evaluate("p95", GATES["mannWhitney"], context("broken"), prometheus, AT).judgment
    assert latency.values["newPoints"] == latency.values["baselinePoints"] == 21
    assert latency.values["baselineMedian"] == pytest.approx(0.1)


def test_a_spike_seen_over_the_short_window_only_is_inconclusive_and_says_so(prometheus: Prometheus) -> None:
    judgment = evaluate("budget", GATES["burnRate"], context("spiking"), prometheus, AT).judgment
    assert judgment.values["burnRate[300s]"] == pytest.approx(30)
    assert judgment.values["burnRate[3600s]"] == pytest.approx((55 * 0.005 + 5 * 0.3) / 60 / 0.01)
    assert "a spike that has not lasted yet" in judgment.message


def test_queries_are_evaluated_at_the_time_given_not_now(prometheus: Prometheus) -> None:
    spiking = context("spiking")
    assert evaluate("budget", GATES["burnRate"], spiking, prometheus, AT).verdict == "Inconclusive"
    assert evaluate("budget", GATES["burnRate"], spiking, prometheus, AT - timedelta(minutes=30)).verdict == "Passed"
    # The history ended long ago: now, Prometheus has nothing for any query.
    assert evaluate("budget", GATES["burnRate"], spiking, prometheus, datetime.now(UTC)).verdict == "NoData"


def test_a_range_query_keeps_fractions_of_a_second(prometheus: Prometheus) -> None:
    start = AT - timedelta(seconds=60.5)
    [series] = prometheus.range('sum(rate(sim_http_requests_total{namespace="healthy"}[1m]))', start, AT, 30, 2)
    assert [at_s for at_s, _ in series.points] == [END_S - 60.5, END_S - 30.5, END_S - 0.5]
    assert [value for _, value in series.points] == pytest.approx([20, 20, 20])


# --- Prometheus failing ------------------------------------------------------------------------------


def test_with_prometheus_stopped_every_kind_is_an_error_that_holds(server: PrometheusServer) -> None:
    prometheus = Prometheus(server.url)
    server.stop()
    try:
        for kind, spec in GATES.items():
            measurement = evaluate(kind, spec, context("broken"), prometheus, AT)
            assert measurement.verdict == "Error", kind
            assert measurement.judgment.message == (f"cannot reach Prometheus at {server.url}: connection refused; "
                                                    "holding until Prometheus answers")
    finally:
        server.start()
    # One query each, no retry: the first refusal ends the measurement.
    assert prometheus.queries == len(GATES)


def test_a_query_prometheus_cannot_parse_is_an_error_quoting_it(prometheus: Prometheus) -> None:
    spec = gate(threshold={"query": 'sum(rate(sim_http_requests_total{namespace="{{ namespace }}"}[5m])', "max": 1})
    measurement = evaluate("typo", spec, context("healthy"), prometheus, AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message.startswith(
        'Prometheus refused the query (sum(rate(sim_http_requests_total{namespace="healthy"}[5m])): bad_data: ')
    assert "parse error" in measurement.judgment.message
    assert measurement.judgment.message.endswith("fix the gate's query")


def test_a_query_prometheus_cannot_execute_is_an_error_quoting_it(prometheus: Prometheus) -> None:
    # Both sides have a series per code for each namespace: many-to-many, which PromQL refuses (422).
    spec = gate(threshold={"query": "sim_http_requests_total / on (namespace) sim_http_requests_total", "max": 1})
    measurement = evaluate("many-to-many", spec, context("healthy"), prometheus, AT)
    assert measurement.verdict == "Error"
    assert "execution: " in measurement.judgment.message
    assert "many-to-many matching not allowed" in measurement.judgment.message


def test_prometheus_raises_query_rejected_for_a_range_vector_where_one_value_is_needed(
    prometheus: Prometheus
) -> None:
    with pytest.raises(QueryRejected, match=r"returns a range vector, not one value per series; wrap it"):
        prometheus.instant("sim_http_requests_total[5m]", AT, 2)


class CannedPrometheus(ThreadingHTTPServer):
    """A local HTTP server answering every request with `status` and a Prometheus error body, counting them."""

    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _CannedAnswer)
        self.status = status
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CannedAnswer(BaseHTTPRequestHandler):
    server: CannedPrometheus

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        body = b'{"status":"error","errorType":"unavailable","error":"too many queries"}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts what matters."""


@contextmanager
def canned_prometheus(status: int) -> Iterator[CannedPrometheus]:
    http_server = CannedPrometheus(status)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield http_server
    finally:
        http_server.shutdown()
        http_server.server_close()


@pytest.mark.parametrize("status", [503, 500, 502, 429])
def test_an_overloaded_prometheus_is_unavailable_after_a_single_request(status: int) -> None:
    with canned_prometheus(status) as canned:
        with pytest.raises(PrometheusUnavailable, match=f"answered HTTP {status}: unavailable: too many queries"):
            Prometheus(canned.url).instant("up", AT, 2)
        assert canned.requests == 1


@pytest.mark.parametrize(("status", "message"), [
    (200, "answered with something other than Prometheus's JSON"),
    (404, "answered HTTP 404: unavailable: too many queries; check the URL and credentials"),
])
def test_something_other_than_prometheus_answering_is_an_error_verdict_not_an_exception(
    status: int, message: str
) -> None:
    with canned_prometheus(status) as canned:
        measurement = evaluate("elsewhere", GATES["threshold"], context("healthy"), Prometheus(canned.url), AT)
    assert measurement.verdict == "Error"
    assert message in measurement.judgment.message


def test_a_silent_prometheus_is_unavailable_after_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        measurement = evaluate("slow", gate(threshold={"query": "up", "max": 1}, timeout="1s"), context("healthy"),
                               Prometheus(url), AT)
    assert measurement.verdict == "Error"
    assert measurement.judgment.message == f"cannot reach Prometheus at {url}: no answer within 1s; " \
                                           "holding until Prometheus answers"


def test_nothing_listening_is_unavailable_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnavailable, match="connection refused"):
        Prometheus(url).range("up", AT - timedelta(minutes=1), AT, 15, 2)


def test_the_query_counter_counts_every_query_from_every_thread(prometheus: Prometheus) -> None:
    def ask() -> None:
        for _ in range(10):
            prometheus.instant('sum(sim_http_requests_total{namespace="healthy"})', AT, 2)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert prometheus.queries == 80


def test_an_evaluation_time_without_a_time_zone_is_refused(prometheus: Prometheus) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        prometheus.instant("up", datetime(2026, 1, 1), 2)


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("use e.g. 'http://prometheus:9090'")):
        Prometheus("prometheus:9090")
