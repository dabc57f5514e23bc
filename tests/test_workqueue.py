"""The work queue: what the controller's workers can rely on when they take keys from it."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from rollout.controller.workqueue import WorkQueue


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def drain(queue: WorkQueue) -> list[str]:
    """Every key ready right now, in the order handed out, each marked done at once."""
    keys = []
    while (key := queue.get(timeout_s=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_a_key_added_again_while_it_waits_is_handed_out_once() -> None:
    queue = WorkQueue()
    for key in ["prod/web", "prod/api", "prod/web", "prod/web"]:
        queue.add(key)
    assert len(queue) == 2
    assert drain(queue) == ["prod/web", "prod/api"]


def test_ready_keys_are_handed_out_first_in_first_out() -> None:
    queue = WorkQueue()
    keys = [f"ns/rollout-{index}" for index in range(20)]
    for key in keys:
        queue.add(key)
    assert drain(queue) == keys


def test_a_key_added_while_being_processed_waits_for_done_then_comes_back_once() -> None:
    queue = WorkQueue()
    queue.add("prod/web")
    assert queue.get(timeout_s=0) == "prod/web"
    queue.add("prod/web")
    queue.add("prod/web")
    assert queue.get(timeout_s=0) is None, "a second worker must not get a key that is being processed"
    assert len(queue) == 1
    queue.done("prod/web")
    assert drain(queue) == ["prod/web"]
    assert len(queue) == 0


def test_a_key_not_added_during_processing_is_not_handed_out_again() -> None:
    queue = WorkQueue()
    queue.add("prod/web")
    key = queue.get(timeout_s=0)
    assert key is not None
    queue.done(key)
    assert queue.get(timeout_s=0) is None


def test_done_for_a_key_nobody_holds_is_a_mistake_the_queue_reports() -> None:
    queue = WorkQueue()
    with pytest.raises(ValueError, match="no worker holds"):
        queue.done("prod/web")


def test_several_workers_never_process_one_key_at_the_same_time_and_miss_no_add() -> None:
    queue = WorkQueue()
    keys = ["ns/rollout-a", "ns/rollout-b", "ns/rollout-c"]
    in_progress: set[str] = set()
    overlaps: list[str] = []
    processed: Counter[str] = Counter()
    added_after_last_processing: dict[str, bool] = dict.fromkeys(keys, False)
    lock = threading.Lock()

    def worker() -> None:
        while (key := queue.get(timeout_s=5)) is not None:
            with lock:
                if key in in_progress:
                    overlaps.append(key)
                in_progress.add(key)
                added_after_last_processing[key] = False
            time.sleep(0.002)  # long enough for other workers to try the same key meanwhile
            with lock:
                in_progress.discard(key)
                processed[key] += 1
            queue.done(key)

    workers = [threading.Thread(target=worker) for _ in range(6)]
    for thread in workers:
        thread.start()
    for round_index in range(300):
        key = keys[round_index % len(keys)]
        with lock:
            added_after_last_processing[key] = True
        queue.add(key)
        time.sleep(0.0002)  # adds keep arriving while workers hold keys, as watch events do
    # Every key added after a worker last took it must still be handed out; wait for the workers to finish.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if not in_progress and not any(added_after_last_processing.values()) and not len(queue):
                break
        time.sleep(0.01)
    queue.shutdown()
    for thread in workers:
        thread.join(timeout=5)

    assert overlaps == []
    assert set(processed) == set(keys)
    assert not any(added_after_last_processing.values()), "an add was lost: its key was never processed after it"


def test_add_after_hands_keys_out_when_due_earliest_first() -> None:
    clock = FakeClock()
    queue = WorkQueue(monotonic=clock)
    queue.add_after("prod/bake-30s", 30)
    queue.add_after("prod/bake-10s", 10)
    queue.add_after("prod/bake-20s", 20)
    assert len(queue) == 3
    clock.advance(9.9)
    assert queue.get(timeout_s=0) is None
    clock.advance(0.1)
    assert drain(queue) == ["prod/bake-10s"]
    clock.advance(25)
    assert drain(queue) == ["prod/bake-20s", "prod/bake-30s"]
    assert len(queue) == 0


def test_of_two_timers_for_one_key_the_earlier_wins_whichever_is_set_first() -> None:
    clock = FakeClock()
    queue = WorkQueue(monotonic=clock)
    queue.add_after("prod/sooner-second", 60)
    queue.add_after("prod/sooner-second", 5)
    queue.add_after("prod/sooner-first", 5)
    queue.add_after("prod/sooner-first", 60)
    assert len(queue) == 2
    clock.advance(5)
    assert sorted(drain(queue)) == ["prod/sooner-first", "prod/sooner-second"]
    clock.advance(60)
    assert drain(queue) == [], "the later timer of each key was superseded, not kept"


def test_a_timer_does_not_hand_out_a_key_twice_if_it_is_already_ready() -> None:
    clock = FakeClock()
    queue = WorkQueue(monotonic=clock)
    queue.add("prod/web")
    queue.add_after("prod/web", 1)
    clock.advance(1)
    assert drain(queue) == ["prod/web"]


def test_a_getter_waiting_for_ever_wakes_when_a_timer_comes_due() -> None:
    queue = WorkQueue()
    queue.add_after("prod/bake", 0.05)
    started_s = time.monotonic()
    assert queue.get() == "prod/bake"
    assert time.monotonic() - started_s >= 0.04


def test_retries_back_off_doubling_up_to_the_cap_until_forgotten() -> None:
    clock = FakeClock()
    queue = WorkQueue(base_delay_s=0.5, max_delay_s=4, monotonic=clock)
    delays_s = [queue.add_rate_limited("prod/web") for _ in range(6)]
    assert delays_s == [0.5, 1, 2, 4, 4, 4]
    assert queue.retries("prod/web") == 6
    assert queue.retries("prod/api") == 0
    queue.forget("prod/web")
    assert queue.retries("prod/web") == 0
    assert queue.add_rate_limited("prod/web") == 0.5


def test_a_rate_limited_key_comes_back_after_its_backoff() -> None:
    clock = FakeClock()
    queue = WorkQueue(base_delay_s=1, max_delay_s=60, monotonic=clock)
    queue.add_rate_limited("prod/web")
    queue.add_rate_limited("prod/web")
    # The two retries are pending at once; the earlier one (1 s) wins.
    clock.advance(0.9)
    assert queue.get(timeout_s=0) is None
    clock.advance(0.1)
    assert drain(queue) == ["prod/web"]


def test_backoff_does_not_overflow_after_very_many_failures() -> None:
    queue = WorkQueue(base_delay_s=0.05, max_delay_s=60, monotonic=FakeClock())
    for _ in range(2000):
        last_delay_s = queue.add_rate_limited("prod/flaky")
    assert last_delay_s == 60


def test_get_returns_none_when_nothing_is_ready_in_time() -> None:
    queue = WorkQueue()
    queue.add_after("prod/later", 60)
    started_s = time.monotonic()
    assert queue.get(timeout_s=0.05) is None
    assert time.monotonic() - started_s < 5


def test_shutdown_wakes_every_waiting_getter_with_none() -> None:
    queue = WorkQueue()
    results: list[str | None] = []
    lock = threading.Lock()

    def getter() -> None:
        key = queue.get()
        with lock:
            results.append(key)

    getters = [threading.Thread(target=getter) for _ in range(4)]
    for thread in getters:
        thread.start()
    getters[0].join(timeout=0.1)
    assert all(thread.is_alive() for thread in getters), "getters of an empty queue block"
    queue.shutdown()
    for thread in getters:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in getters)
    assert results == [None, None, None, None]
    queue.add("prod/web")
    assert queue.get(timeout_s=0) is None, "a queue that was shut down hands out nothing more"
