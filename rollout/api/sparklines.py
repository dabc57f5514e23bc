"""Sparklines: a series of gate measurements as the points of a small SVG polyline (pure).

The dashboard draws one per value a gate measures (an error ratio, a burn rate, a p-value), so a
reader sees at a glance whether the number is steady, creeping up or jumping, next to the verdict.
Time runs left to right by the measurements' own timestamps, so a halt shows as a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

WIDTH = 120
HEIGHT = 28
PADDING = 3


@dataclass(frozen=True)
class Sparkline:
    """What a template needs to draw one series: the polyline's points, the newest point, the range."""

    label: str
    points: str = ""
    last_x: float = 0.0
    last_y: float = 0.0
    latest: float = 0.0
    low: float = 0.0
    high: float = 0.0
    count: int = 0
    width: int = WIDTH
    height: int = HEIGHT


def sparkline(label: str, series: Sequence[tuple[datetime, float]], width: int = WIDTH,
              height: int = HEIGHT) -> Sparkline | None:
    """The series (time, value) scaled into a box of width by height; None for an empty series."""
    if not series:
        return None
    ordered = sorted(series, key=lambda point: point[0])
    first_at, last_at = ordered[0][0], ordered[-1][0]
    span_s = (last_at - first_at).total_seconds()
    values = [value for _, value in ordered]
    low, high = min(values), max(values)
    usable_width, usable_height = width - 2 * PADDING, height - 2 * PADDING

    def x_of(at: datetime) -> float:
        # One measurement, or all at one instant: draw them at the right edge, where "now" is.
        share = (at - first_at).total_seconds() / span_s if span_s > 0 else 1.0
        return round(PADDING + share * usable_width, 1)

    def y_of(value: float) -> float:
        # A flat series is drawn across the middle rather than stuck to an edge.
        share = (value - low) / (high - low) if high > low else 0.5
        return round(PADDING + (1.0 - share) * usable_height, 1)

    coordinates = [(x_of(at), y_of(value)) for at, value in ordered]
    return Sparkline(
        label=label, points=" ".join(f"{x},{y}" for x, y in coordinates), last_x=coordinates[-1][0],
        last_y=coordinates[-1][1], latest=values[-1], low=low, high=high, count=len(values), width=width,
        height=height,
    )
