"""Compiled cohort sets kept between requests, until the cohorts change or the copy grows old.

Compiling a set reads its spec, its opt choices and one query per usage condition, and builds key
sets of up to tens of thousands of keys: too much for every explain call. A copy is reused while the
store's change marker is unchanged (every change to cohorts is audited, so the marker moves with it)
and it is younger than `max_age_s`, which bounds how stale a `seenWithin` materialization can be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cohorts.assign import DEFAULT_MAX_MATERIALIZED_KEYS, CompiledCohortSet
from cohorts.store import CohortStore

DEFAULT_MAX_AGE_S = 60.0


@dataclass(frozen=True)
class _Entry:
    marker: int
    compiled_at_s: float
    compiled: CompiledCohortSet


class CompiledSetCache:
    def __init__(
        self,
        store: CohortStore,
        *,
        max_keys: int = DEFAULT_MAX_MATERIALIZED_KEYS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._max_keys = max_keys
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._entries: dict[tuple[str, int | None], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, name: str, version: int | None = None) -> CompiledCohortSet:
        """The set compiled as of now (current version unless one is given); raises what compile raises."""
        marker = self._store.change_marker()
        key = (name, version)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.marker == marker and self._monotonic() - entry.compiled_at_s < self._max_age_s:
            return entry.compiled
        # Compiled outside the lock: two requests may both compile after a change; both are right.
        started_s = self._monotonic()
        compiled = self._store.compile(name, now=self._wall_clock(), version=version, max_keys=self._max_keys)
        with self._lock:
            self._entries[key] = _Entry(marker, started_s, compiled)
        return compiled
