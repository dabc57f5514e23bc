"""The publisher recompiles when the database moves or the document ages, and publishes only real changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cohorts.cache import CompiledSetCache
from cohorts.store import CohortStore
from rollout.flags.document import compile_flags, parse_selector
from rollout.flags.publisher import FlagPublisher, Published, PublisherStopped
from rollout.flags.spec import FlagSpec
from rollout.flags.store import FlagStore


class Database:
    """The two things the publisher reads, moved by hand: a change marker and the document it compiles to."""

    def __init__(self) -> None:
        self.marker = 1
        self.flags: dict[str, Any] = {"a": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}}
        self.compiles = 0
        self.failure: Exception | None = None
        self.reachable = True

    def change(self, **flags: Any) -> None:
        self.flags = {**self.flags, **flags}
        self.marker += 1

    def compile(self) -> dict[str, Any]:
        self.compiles += 1
        if self.failure is not None:
            raise self.failure
        return {"flags": dict(self.flags)}

    def change_marker(self) -> int:
        if not self.reachable:
            raise ConnectionError("connection refused")
        return self.marker


class Ticker:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


FLAG_B = {"state": "ENABLED", "variants": {"off": False}, "defaultVariant": "off"}


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def publisher(database: Database, ticker: Ticker) -> Iterator[FlagPublisher]:
    publisher = FlagPublisher(database.compile, database.change_marker, monotonic=ticker, poll_interval_s=3600)
    publisher.start()
    yield publisher
    publisher.stop()


def test_the_first_document_is_published_at_start(publisher: FlagPublisher, database: Database) -> None:
    assert publisher.current is not None
    assert publisher.current.document == {"flags": database.flags}
    assert publisher.current.sequence == 1


def test_nothing_is_compiled_while_the_marker_stands_and_the_document_is_young(
    publisher: FlagPublisher, database: Database, ticker: Ticker
) -> None:
    ticker.now_s += 59
    assert not publisher.refresh()
    assert database.compiles == 1


def test_a_change_is_compiled_and_published(publisher: FlagPublisher, database: Database) -> None:
    first = publisher.current
    database.change(b=FLAG_B)
    assert publisher.refresh()
    assert publisher.current is not first and publisher.current is not None
    assert set(publisher.current.document["flags"]) == {"a", "b"}
    assert publisher.current.sequence == 2


def test_a_change_that_compiles_to_the_same_document_is_not_published(
    publisher: FlagPublisher, database: Database
) -> None:
    first = publisher.current
    database.change()  # e.g. usage ingested that no flag's cohort set selects on
    assert not publisher.refresh()
    assert (database.compiles, publisher.current) == (2, first)


def test_an_old_document_is_compiled_again_even_without_changes(
    publisher: FlagPublisher, database: Database, ticker: Ticker
) -> None:
    ticker.now_s += 60
    database.flags = {**database.flags, "b": FLAG_B}  # a rotation epoch turned; nothing was written
    assert publisher.refresh()
    assert database.compiles == 2


def test_a_failed_compile_keeps_the_last_document_and_is_retried_later(
    publisher: FlagPublisher, database: Database, ticker: Ticker
) -> None:
    first = publisher.current
    database.failure = RuntimeError("cohort set 'web' would materialize 60,001 keys")
    database.change(b=FLAG_B)
    assert not publisher.refresh()
    assert publisher.current is first and "60,001 keys" in (publisher.last_error or "")
    assert not publisher.refresh()
    assert database.compiles == 2  # the same database state is not retried at once
    database.failure = None
    ticker.now_s += 5
    assert publisher.refresh()
    assert publisher.last_error is None


def test_an_unreachable_database_keeps_the_last_document(publisher: FlagPublisher, database: Database) -> None:
    first = publisher.current
    database.reachable = False
    assert not publisher.refresh()
    assert publisher.current is first and "connection refused" in (publisher.last_error or "")


def test_listeners_hear_each_published_document_once(publisher: FlagPublisher, database: Database) -> None:
    heard: list[Published] = []
    publisher.add_listener(heard.append)
    database.change()
    publisher.refresh()
    database.change(b=FLAG_B)
    publisher.refresh()
    assert [published.sequence for published in heard] == [2]


def test_a_subscriber_gets_the_current_document_then_each_newer_one(
    publisher: FlagPublisher, database: Database
) -> None:
    async def scenario() -> list[int]:
        async with publisher.subscribe() as documents:
            sequences = [(await documents.next()).sequence]
            database.change(b=FLAG_B)
            await asyncio.to_thread(publisher.refresh)
            sequences.append((await asyncio.wait_for(documents.next(), 1)).sequence)
            return sequences

    assert asyncio.run(scenario()) == [1, 2]
    assert publisher.subscriber_count == 0


def test_a_slow_subscriber_skips_to_the_newest_document(publisher: FlagPublisher, database: Database) -> None:
    async def scenario() -> list[int]:
        async with publisher.subscribe() as documents:
            sequences = [(await documents.next()).sequence]
            for number in range(3):
                database.change(**{f"f{number}": FLAG_B})
                await asyncio.to_thread(publisher.refresh)
            await asyncio.sleep(0)
            sequences.append((await asyncio.wait_for(documents.next(), 1)).sequence)
            return sequences

    assert asyncio.run(scenario()) == [1, 4]


def test_stopping_the_publisher_ends_every_subscription(database: Database) -> None:
    publisher = FlagPublisher(database.compile, database.change_marker, poll_interval_s=3600)
    publisher.start()

    async def scenario() -> None:
        async with publisher.subscribe() as documents:
            await documents.next()
            await asyncio.to_thread(publisher.stop)
            with pytest.raises(PublisherStopped):
                await asyncio.wait_for(documents.next(), 1)

    asyncio.run(scenario())


def test_each_selection_is_rendered_once_per_document(publisher: FlagPublisher) -> None:
    assert publisher.current is not None
    selector = parse_selector("flagSetId=web")
    assert publisher.current.render(selector) is publisher.current.render(selector)
    assert publisher.current.render() is publisher.current.rendering


def test_the_polling_thread_publishes_a_stored_change_within_a_poll(store: CohortStore) -> None:
    flags = FlagStore(store.engine, store)
    cache = CompiledSetCache(store)
    publisher = FlagPublisher(lambda: compile_flags(flags, cache, datetime.now(UTC)), store.change_marker,
                              poll_interval_s=0.05)
    publisher.start()
    try:
        flags.create_flag(FlagSpec.model_validate({
            "key": "new-checkout", "type": "boolean", "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on"}}}}), "ana")
        deadline = time.monotonic() + 2
        while publisher.current is None or "new-checkout" not in publisher.current.document["flags"]:
            assert time.monotonic() < deadline, "the change was not published within 2 s"
            time.sleep(0.01)
        before = publisher.current
        store.set_opt("default", "olga", "in", "olga")  # a cohort change moves the ring evaluator
        while publisher.current is before:
            assert time.monotonic() < deadline, "the opt-in was not published within 2 s"
            time.sleep(0.01)
        assert "olga" in publisher.current.rendering.text
    finally:
        publisher.stop()
