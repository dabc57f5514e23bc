"""The real Prometheus that gate tests query: backfilled history, exact answers, restarts, failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rollout.localcluster.errors import LocalClusterError
from rollout.localcluster.prometheus import PrometheusServer, backfill, install_prometheus, wait_until_up, write_config
from tests.prometheus_harness import (
    ANCHOR_S,
    backfilled_prometheus,
    counter_series,
    gauge_series,
    openmetrics,
    value_at,
    values_at,
)

HOUR_S = 3600

TWO_COHORTS = openmetrics([
    counter_series("http_requests_total", {"cohort": "baseline", "code": "200"}, ANCHOR_S, ANCHOR_S + 2 * HOUR_S, 15,
                   rate_per_s=9.9),
    counter_series("http_requests_total", {"cohort": "baseline", "code": "500"}, ANCHOR_S, ANCHOR_S + 2 * HOUR_S, 15,
                   rate_per_s=0.1),
    counter_series("http_requests_total", {"cohort": "canary", "code": "200"}, ANCHOR_S, ANCHOR_S + 2 * HOUR_S, 15,
                   rate_per_s=0.95),
    counter_series("http_requests_total", {"cohort": "canary", "code": "500"}, ANCHOR_S, ANCHOR_S + 2 * HOUR_S, 15,
                   rate_per_s=0.05),
])
ERROR_RATIO = ('sum by (cohort) (rate(http_requests_total{code="500"}[5m]))'
               " / sum by (cohort) (rate(http_requests_total[5m]))")


@pytest.fixture(scope="module", autouse=True)
def prometheus_installed() -> None:
    install_prometheus()


def test_increase_over_an_hour_of_backfilled_history_is_exact(tmp_path: Path) -> None:
    with backfilled_prometheus(tmp_path, TWO_COHORTS) as prometheus:
        increases = values_at(prometheus.url, "sum by (cohort, code) (increase(http_requests_total[1h]))",
                              ANCHOR_S + 2 * HOUR_S)
        error_ratios = values_at(prometheus.url, ERROR_RATIO, ANCHOR_S + HOUR_S)
    assert increases == {
        frozenset({("cohort", "baseline"), ("code", "200")}): 35640,
        frozenset({("cohort", "baseline"), ("code", "500")}): 360,
        frozenset({("cohort", "canary"), ("code", "200")}): 3420,
        frozenset({("cohort", "canary"), ("code", "500")}): 180,
    }
    assert error_ratios == {frozenset({("cohort", "baseline")}): 0.01, frozenset({("cohort", "canary")}): 0.05}


def test_a_query_more_than_five_minutes_past_the_history_finds_nothing(tmp_path: Path) -> None:
    with backfilled_prometheus(tmp_path, TWO_COHORTS) as prometheus:
        assert value_at(prometheus.url, "sum(http_requests_total)", ANCHOR_S + 2 * HOUR_S + 4 * 60) is not None
        assert value_at(prometheus.url, "sum(http_requests_total)", ANCHOR_S + 2 * HOUR_S + 6 * 60) is None


def test_history_survives_a_restart_on_the_same_port(tmp_path: Path) -> None:
    with backfilled_prometheus(tmp_path, TWO_COHORTS) as prometheus:
        url, first_pid = prometheus.url, prometheus.pid
        prometheus.stop()
        assert not prometheus.running
        prometheus.start()
        assert prometheus.running and prometheus.pid != first_pid and prometheus.url == url
        assert value_at(url, 'sum(increase(http_requests_total{code="500"}[1h]))', ANCHOR_S + HOUR_S) == 540


def test_label_values_with_quotes_and_backslashes_come_back_as_written(tmp_path: Path) -> None:
    awkward = 'say "hi" \\ twice'
    history = openmetrics([gauge_series("queue_depth", {"queue": awkward}, ANCHOR_S, ANCHOR_S + 60, 15, value=7)])
    with backfilled_prometheus(tmp_path, history) as prometheus:
        assert values_at(prometheus.url, "queue_depth", ANCHOR_S + 60) == {
            frozenset({("__name__", "queue_depth"), ("queue", awkward)}): 7,
        }


def test_backfill_explains_what_promtool_rejected(tmp_path: Path) -> None:
    with pytest.raises(LocalClusterError, match="promtool could not backfill") as raised:
        backfill("# TYPE broken counter\nbroken_total{ 1 2\n", tmp_path / "data")
    assert "expected label name or left brace" in str(raised.value)


def test_a_server_that_cannot_listen_says_why(tmp_path: Path) -> None:
    with PrometheusServer(tmp_path / "first" / "data") as first:
        second = PrometheusServer(tmp_path / "second" / "data", port=first.port)
        with pytest.raises(LocalClusterError, match=f"127.0.0.1:{first.port}: the port is in use"):
            second.start()
        assert not second.running
        assert first.running


def test_a_server_that_exits_while_starting_shows_the_end_of_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = tmp_path / "bin" / "prometheus"
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\necho 'err=\"opening storage failed\"' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("PATH", f"{failing.parent}{os.pathsep}{os.environ['PATH']}")
    server = PrometheusServer(tmp_path / "data")
    with pytest.raises(LocalClusterError, match="exited while starting") as raised:
        server.start()
    assert "opening storage failed" in str(raised.value)
    assert not server.running


def test_waiting_for_a_series_that_never_comes_names_it(tmp_path: Path) -> None:
    with backfilled_prometheus(tmp_path, TWO_COHORTS) as prometheus, \
            pytest.raises(TimeoutError, match=r"'up == 1' at http://127.0.0.1:\d+ returned no series"):
        wait_until_up(prometheus.url, "up == 1", timeout_s=0.5)


def test_the_scrape_config_is_one_prometheus_accepts(tmp_path: Path) -> None:
    write_config(tmp_path / "prometheus.yml", targets_file=tmp_path / "targets.json", scrape_interval_s=0.5)
    checked = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
