"""How the benchmarks time an evaluator: evaluations per second, the median of several passes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

Context = TypeVar("Context")


def rate(evaluate: Callable[[Context], object], population: Sequence[Context], repeats: int, seconds: float) -> float:
    """Median evaluations per second over `repeats` timed passes of at least `seconds` each."""
    rates = []
    for _ in range(repeats):
        done = 0
        started = time.perf_counter()
        while True:
            for context in population:
                evaluate(context)
            done += len(population)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        rates.append(done / elapsed)
    return statistics.median(rates)
