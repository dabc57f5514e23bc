"""What judging a gate yields: a verdict with the numbers behind it, and a measurement as recorded.

Only Failed is evidence of harm. NoData, TooFewSamples and Error hold a rollout (it never promotes
without evidence); Inconclusive pauses it for a human.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Verdict = Literal["Passed", "Failed", "Inconclusive", "NoData", "TooFewSamples", "Error"]
VERDICTS: tuple[Verdict, ...] = ("Passed", "Failed", "Inconclusive", "NoData", "TooFewSamples", "Error")
HOLDING: frozenset[Verdict] = frozenset({"NoData", "TooFewSamples", "Error"})


@dataclass(frozen=True)
class Judgment:
    """A pure judge's answer: the verdict, the named numbers it rests on, what was required, one line why."""

    verdict: Verdict
    values: Mapping[str, float] = field(default_factory=dict)
    threshold: str = ""
    message: str = ""


@dataclass(frozen=True)
class Measurement:
    """One evaluation of one gate at one time: the rendered queries and the judgment on their results."""

    gate: str
    kind: str
    ring: str
    at: datetime
    queries: tuple[str, ...]
    judgment: Judgment

    @property
    def verdict(self) -> Verdict:
        return self.judgment.verdict


def finite(values: Mapping[str, float]) -> dict[str, float]:
    """The values JSON can carry (the API server and databases refuse Infinity and NaN); a ratio against
    a zero baseline is infinite, and the message says so in words."""
    return {name: value for name, value in values.items() if math.isfinite(value)}
