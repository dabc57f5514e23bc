"""The controller's to-do list: which Rollouts need reconciling, and when.

Level-triggered, like client-go's rate-limited delaying work queue: a key (e.g. "namespace/name") only says
"look at this object again"; the reconcile reads the current state itself. So a key waiting to be handed out
is never queued twice, and one key is never handed to two workers at once: a key added while a worker
processes it is handed out again once that worker calls `done()`.

Keys can also wait: `add_after` for a timer (a ring's bake time), `add_rate_limited` for a retry after a
failure, with a per-key backoff that doubles up to a cap until `forget` resets it.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

# 2**64 times any sensible base delay is far beyond any cap, and the float cannot overflow however often
# a key fails.
MAX_BACKOFF_EXPONENT = 64


class WorkQueue:
    """Keys to reconcile, handed out FIFO once ready, one worker per key at a time. Thread-safe."""

    def __init__(
        self, *, base_delay_s: float = 0.05, max_delay_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if base_delay_s <= 0 or max_delay_s < base_delay_s:
            raise ValueError(
                f"backoff delays base_delay_s={base_delay_s}, max_delay_s={max_delay_s} make no sense; "
                "use a positive base no larger than the max, e.g. 0.05 and 60"
            )
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        # Timers and get() timeouts both use this clock, so a test can drive them with a fake one.
        self._monotonic = monotonic
        self._condition = threading.Condition()
        self._ready: deque[str] = deque()
        # Keys due to be handed out: those in _ready, and those added again while being processed.
        self._pending: set[str] = set()
        self._processing: set[str] = set()
        self._due_at: dict[str, float] = {}
        # (due time, sequence, key); entries whose time is no longer the key's _due_at are stale and skipped.
        self._timers: list[tuple[float, int, str]] = []
        self._timer_sequence = 0
        self._failures: dict[str, int] = {}
        self._shut_down = False

    def add(self, key: str) -> None:
        """Queue `key` to be handed out; a no-op if it is already waiting to be."""
        with self._condition:
            if self._add_locked(key):
                self._condition.notify()

    def add_after(self, key: str, delay_s: float) -> None:
        """Queue `key` once `delay_s` has passed; if it is already waiting for a timer, the earlier time wins."""
        if delay_s <= 0:
            self.add(key)
            return
        with self._condition:
            if self._shut_down:
                return
            due_at = self._monotonic() + delay_s
            if key in self._due_at and self._due_at[key] <= due_at:
                return
            self._due_at[key] = due_at
            self._timer_sequence += 1
            heapq.heappush(self._timers, (due_at, self._timer_sequence, key))
            # A getter may be sleeping until a later timer; it must recompute how long to sleep.
            self._condition.notify_all()

    def add_rate_limited(self, key: str) -> float:
        """Queue `key` again after a failure, after base_delay_s * 2**failures (capped); returns that delay."""
        with self._condition:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay_s = min(self._max_delay_s, self._base_delay_s * 2.0 ** min(failures, MAX_BACKOFF_EXPONENT))
        self.add_after(key, delay_s)
        return delay_s

    def forget(self, key: str) -> None:
        """Reset `key`'s backoff, after it was processed successfully."""
        with self._condition:
            self._failures.pop(key, None)

    def retries(self, key: str) -> int:
        """How many times `key` was queued by `add_rate_limited` since it was last forgotten."""
        with self._condition:
            return self._failures.get(key, 0)

    def get(self, timeout_s: float | None = None) -> str | None:
        """The next ready key, waiting up to `timeout_s` (None: for ever) for one; None on timeout or shutdown.

        The caller owns the key until it calls `done(key)`."""
        with self._condition:
            deadline = None if timeout_s is None else self._monotonic() + timeout_s
            while not self._shut_down:
                now = self._monotonic()
                self._release_due_timers_locked(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._pending.discard(key)
                    self._processing.add(key)
                    return key
                wake_at = self._timers[0][0] if self._timers else None
                if deadline is not None:
                    wake_at = deadline if wake_at is None else min(wake_at, deadline)
                    if now >= deadline:
                        return None
                self._condition.wait(None if wake_at is None else max(0.0, wake_at - now))
            return None

    def done(self, key: str) -> None:
        """Mark `key` processed; if it was added meanwhile, it is queued again now."""
        with self._condition:
            if key not in self._processing:
                raise ValueError(f"done({key!r}) but no worker holds that key; call done() once per key from get()")
            self._processing.remove(key)
            if key in self._pending:
                self._ready.append(key)
                self._condition.notify()

    def shutdown(self) -> None:
        """Stop handing out keys: every get(), waiting or future, returns None; adds are ignored."""
        with self._condition:
            self._shut_down = True
            self._condition.notify_all()

    def __len__(self) -> int:
        """Depth: distinct keys that will be handed out, now or after a worker's done() or a timer."""
        with self._condition:
            return len(self._pending | self._due_at.keys())

    def _add_locked(self, key: str) -> bool:
        if self._shut_down or key in self._pending:
            return False
        self._pending.add(key)
        if key in self._processing:
            return False
        self._ready.append(key)
        return True

    def _release_due_timers_locked(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            due_at, _, key = heapq.heappop(self._timers)
            if self._due_at.get(key) == due_at:
                del self._due_at[key]
                self._add_locked(key)
