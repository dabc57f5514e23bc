"""Compiled sets are reused until cohorts change or the copy is too old, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from cohorts.cache import CompiledSetCache
from cohorts.spec import default_cohort_set
from cohorts.store import CohortStore
from cohorts.usage import UsageBatch


class Ticker:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_compiled_set_is_reused_while_nothing_changes(store: CohortStore) -> None:
    cache = CompiledSetCache(store, monotonic=Ticker())
    first = cache.get("default")
    assert cache.get("default") is first


def test_an_opt_choice_or_a_new_version_or_usage_makes_it_compile_again(store: CohortStore) -> None:
    cache = CompiledSetCache(store, monotonic=Ticker())
    before = cache.get("default")
    store.set_opt("default", "olga", "in", "test")
    with_olga = cache.get("default")
    assert with_olga is not before and "olga" in with_olga.opted_in
    store.update_set(default_cohort_set().model_copy(update={"description": "v2"}), "test")
    assert cache.get("default").version == 2
    assert cache.get("default", version=1).version == 1
    after_version = cache.get("default")
    store.ingest_usage(UsageBatch.model_validate({"rows": [{"targetingKey": "u1"}]}), "test")
    assert cache.get("default") is not after_version


def test_a_copy_older_than_max_age_is_compiled_again(store: CohortStore) -> None:
    ticker = Ticker()
    wall_clock = [datetime(2026, 11, 27, 12, 0, tzinfo=UTC)]
    cache = CompiledSetCache(store, max_age_s=60, monotonic=ticker, wall_clock=lambda: wall_clock[0])
    first = cache.get("default")
    ticker.now_s += 59
    assert cache.get("default") is first
    ticker.now_s += 2
    wall_clock[0] = datetime(2026, 11, 27, 12, 1, 1, tzinfo=UTC)
    again = cache.get("default")
    assert again is not first and again.compiled_at == wall_clock[0]
