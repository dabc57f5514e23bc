"""What a pod asks of the node simulator, read from its `sim.ringmaster.dev/*` annotations.

Tests make a version good or bad through its pod template, and the StatefulSet controller copies
template annotations onto every pod:

    sim.ringmaster.dev/ready-delay: 5s      Ready this long after the container starts (default 1s)
    sim.ringmaster.dev/ready: never         Running but never Ready
    sim.ringmaster.dev/crash-after: 30s     crash this long after becoming Ready, over and over
    sim.ringmaster.dev/rps: "20"            requests per second while Ready (default 10)
    sim.ringmaster.dev/error-ratio: "0.05"  share of requests answered 500 (default 0)
    sim.ringmaster.dev/latency-ms: "120"    median request latency (default 50)

Reading never fails: a value that makes no sense comes back as an `AnnotationProblem` beside the
behaviour, with that one setting at its default, so a typo shows up as an Event on the pod instead
of taking the simulator down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from rollout.localcluster.traffic import TrafficProfile

T = TypeVar("T")

PREFIX = "sim.ringmaster.dev/"
READY_DELAY = PREFIX + "ready-delay"
READY = PREFIX + "ready"
CRASH_AFTER = PREFIX + "crash-after"
RPS = PREFIX + "rps"
ERROR_RATIO = PREFIX + "error-ratio"
LATENCY_MS = PREFIX + "latency-ms"

DEFAULT_READY_DELAY_S = 1.0
# A faster crash loop would have the simulator writing pod status many times a second.
MIN_CRASH_AFTER_S = 1.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_EXAMPLES = "use e.g. '500ms', '5s', '2m' or '1m30s'"


@dataclass(frozen=True)
class PodBehaviour:
    """How the simulated kubelet runs a pod and how much traffic its application serves."""

    ready_delay_s: float = DEFAULT_READY_DELAY_S
    never_ready: bool = False
    crash_after_s: float | None = None
    traffic: TrafficProfile = field(default_factory=TrafficProfile)


@dataclass(frozen=True)
class AnnotationProblem:
    """One annotation the simulator could not use, and what to write instead."""

    annotation: str
    value: str
    message: str

    def __str__(self) -> str:
        return f"{self.annotation}: {self.value!r} {self.message}"


def parse_duration_s(text: str) -> float:
    """'500ms' -> 0.5, '1m30s' -> 90.0. Raises ValueError saying what to write instead."""
    position = 0
    total_s = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total_s += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"is not a duration; {_DURATION_EXAMPLES}")
    return total_s


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError
    return value


def _crash_after(text: str) -> float:
    seconds = parse_duration_s(text)
    if seconds < MIN_CRASH_AFTER_S:
        raise ValueError(f"is too short a time to crash after; use at least '{MIN_CRASH_AFTER_S:g}s'")
    return seconds


def _never_ready(text: str) -> bool:
    if text != "never":
        raise ValueError("is not understood; the only value is 'never' (remove the annotation for normal readiness)")
    return True


def _rps(text: str) -> float:
    try:
        rps = _number(text)
    except ValueError:
        raise ValueError("is not a request rate; use a number of requests per second such as '20'") from None
    if rps < 0:
        raise ValueError("is not a request rate; it cannot be negative")
    return rps


def _error_ratio(text: str) -> float:
    try:
        ratio = _number(text)
    except ValueError:
        raise ValueError("is not a ratio; use a number from 0 to 1 such as '0.05' for 5 %") from None
    if not 0 <= ratio <= 1:
        raise ValueError("is not a ratio; use a number from 0 to 1 such as '0.05' for 5 %")
    return ratio


def _latency_ms(text: str) -> float:
    try:
        latency_ms = _number(text)
    except ValueError:
        raise ValueError("is not a latency; use a number of milliseconds such as '120'") from None
    if latency_ms <= 0:
        raise ValueError("is not a latency; it must be more than 0 ms")
    return latency_ms


_KNOWN = (READY_DELAY, READY, CRASH_AFTER, RPS, ERROR_RATIO, LATENCY_MS)
_KNOWN_SUFFIXES = "{" + ",".join(key.removeprefix(PREFIX) for key in _KNOWN) + "}"


def _read(
    annotations: Mapping[str, str],
    key: str,
    parse: Callable[[str], T],
    default: T,
    problems: list[AnnotationProblem],
) -> T:
    text = annotations.get(key)
    if text is None:
        return default
    try:
        return parse(str(text).strip())
    except ValueError as error:
        problems.append(AnnotationProblem(key, str(text), f"{error}; ignored"))
        return default


def read_behaviour(annotations: Mapping[str, str] | None) -> tuple[PodBehaviour, list[AnnotationProblem]]:
    """The behaviour a pod's annotations ask for, and every annotation that had to be ignored."""
    annotations = annotations or {}
    problems = [
        AnnotationProblem(key, str(text), f"is not a simulator annotation; ignored (known: {PREFIX}{_KNOWN_SUFFIXES})")
        for key, text in sorted(annotations.items())
        if key.startswith(PREFIX) and key not in _KNOWN
    ]
    defaults = PodBehaviour()
    behaviour = PodBehaviour(
        ready_delay_s=_read(annotations, READY_DELAY, parse_duration_s, defaults.ready_delay_s, problems),
        never_ready=_read(annotations, READY, _never_ready, defaults.never_ready, problems),
        crash_after_s=_read(annotations, CRASH_AFTER, _crash_after, defaults.crash_after_s, problems),
        traffic=TrafficProfile(
            rps=_read(annotations, RPS, _rps, defaults.traffic.rps, problems),
            error_ratio=_read(annotations, ERROR_RATIO, _error_ratio, defaults.traffic.error_ratio, problems),
            latency_ms=_read(annotations, LATENCY_MS, _latency_ms, defaults.traffic.latency_ms, problems),
        ),
    )
    return behaviour, problems
