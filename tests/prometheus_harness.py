"""A real Prometheus for tests, filled with a history the test wrote: series, OpenMetrics, queries.

A test describes its history as `Series` (most simply with `counter_series`, a counter growing at a
steady rate), renders them with `openmetrics`, and queries a server started on that history by
`backfilled_prometheus`. Prometheus finds nothing more than 5 minutes past a series' last sample,
so queries take an explicit time (`at_s`), normally within the history:

    history = openmetrics([
        counter_series("http_requests_total", {"code": "200"}, ANCHOR_S, ANCHOR_S + 3600, 15, rate_per_s=9.9),
        counter_series("http_requests_total", {"code": "500"}, ANCHOR_S, ANCHOR_S + 3600, 15, rate_per_s=0.1),
    ])
    with backfilled_prometheus(tmp_path, history) as prometheus:
        assert value_at(prometheus.url, 'sum(increase(http_requests_total{code="500"}[1h]))', ANCHOR_S + 3600) == 360
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rollout.localcluster.prometheus import PrometheusServer, backfill, install_prometheus, instant_query

# 2024-01-01T00:00:00Z: a fixed start for histories, so expected values never depend on the clock.
ANCHOR_S = 1_704_067_200

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Series:
    """One time series: a sample name (`http_requests_total`), its labels and (Unix seconds, value) samples
    in time order. `kind` is the OpenMetrics type of its family: counter or gauge."""

    name: str
    labels: Labels
    samples: Sequence[tuple[float, float]]
    kind: str = "counter"
    family: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind == "counter":
            if not self.name.endswith("_total"):
                raise ValueError(f"counter sample {self.name!r} must end in _total, e.g. {self.name}_total")
            object.__setattr__(self, "family", self.name.removesuffix("_total"))
        elif self.kind == "gauge":
            object.__setattr__(self, "family", self.name)
        else:
            raise ValueError(f"series kind {self.kind!r} is not supported; use 'counter' or 'gauge'")


def counter_series(name: str, labels: Labels, start_s: float, end_s: float, step_s: float, rate_per_s: float,
                   *, initial: float = 0.0) -> Series:
    """A counter that starts at `initial` at `start_s` and grows by `rate_per_s` every second, sampled every
    `step_s` up to and including `end_s`: increase(name[w]) is exactly rate_per_s * w inside the history."""
    steps = math.floor((end_s - start_s) / step_s + 1e-9)
    samples = [(start_s + i * step_s, initial + rate_per_s * i * step_s) for i in range(steps + 1)]
    return Series(name, dict(labels), samples)


def gauge_series(name: str, labels: Labels, start_s: float, end_s: float, step_s: float, value: float) -> Series:
    """A gauge holding `value` from `start_s` to `end_s`, sampled every `step_s`."""
    steps = math.floor((end_s - start_s) / step_s + 1e-9)
    return Series(name, dict(labels), [(start_s + i * step_s, value) for i in range(steps + 1)], kind="gauge")


def openmetrics(series: Iterable[Series]) -> str:
    """OpenMetrics text for promtool's backfill: a `# TYPE` line per family, its samples with timestamps in
    seconds, and the closing `# EOF`."""
    by_family: dict[str, list[Series]] = {}
    kinds: dict[str, str] = {}
    for one in series:
        if kinds.setdefault(one.family, one.kind) != one.kind:
            raise ValueError(f"family {one.family!r} is given both as {kinds[one.family]} and as {one.kind}")
        by_family.setdefault(one.family, []).append(one)
    lines: list[str] = []
    for family, members in by_family.items():
        lines.append(f"# TYPE {family} {kinds[family]}")
        for one in members:
            selector = one.name + _labels_text(one.labels)
            lines.extend(f"{selector} {_number(value)} {_number(at_s)}" for at_s, value in one.samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _labels_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escaped(value)}"' for name, value in sorted(labels.items())) + "}"


def _escaped(label_value: str) -> str:
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@contextmanager
def backfilled_prometheus(folder: Path, history: str) -> Iterator[PrometheusServer]:
    """A Prometheus serving `history` (OpenMetrics text) from a data folder under `folder`, stopped afterwards.
    Installs Debian's prometheus package first when it is missing."""
    install_prometheus()
    server = PrometheusServer(folder / "prometheus" / "data")
    backfill(history, server.data_dir)
    with server:
        yield server


def values_at(url: str, promql: str, at_s: float) -> dict[frozenset[tuple[str, str]], float]:
    """Each series' value of an instant query at `at_s`, by its labels."""
    return {frozenset(series["metric"].items()): float(series["value"][1])
            for series in instant_query(url, promql, at_s=at_s)}


def value_at(url: str, promql: str, at_s: float) -> float | None:
    """The value of a query that yields one series (a sum, say) at `at_s`; None when it yields none."""
    values = list(values_at(url, promql, at_s).values())
    if len(values) > 1:
        raise AssertionError(f"{promql!r} yields {len(values)} series at {at_s}; aggregate it to one")
    return values[0] if values else None
