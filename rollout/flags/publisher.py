"""The current flag document, kept fresh and handed to everyone who serves or streams it.

A background thread reads the database's change marker (`CohortStore.change_marker()`, the newest
audit id; cohort and flag changes are both audited) every 200 ms. When it has moved, or the
document is 60 s old (rotation epochs turn and `seenWithin` selections age without anything being
written), the document is compiled again and published if its ETag differs from the last one.
Every replica of `serve` runs one against the shared database, so replicas converge within one
poll of a change; a replica that made the change itself refreshes at once.

Who listens: asyncio consumers (the SSE stream, the gRPC sync service) each hold a `Subscription`
in their own event loop; thread-side listeners (the OFREP evaluator) get a callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rollout.flags.document import EVERY_FLAG, Rendering, Selector, render, select_flags

DEFAULT_POLL_INTERVAL_S = 0.2
DEFAULT_MAX_AGE_S = 60.0
# After a failed compile, wait this long before trying the same database state again.
FAILURE_RETRY_S = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Published:
    """One published document: the data, its canonical rendering, and renderings per selector."""

    sequence: int
    document: Mapping[str, Any]
    rendering: Rendering
    _selected: dict[Selector, Rendering] = field(default_factory=dict, repr=False)

    def render(self, selector: Selector = EVERY_FLAG) -> Rendering:
        """The document as a client with this selector sees it; each selection is rendered once."""
        if selector == EVERY_FLAG:
            return self.rendering
        rendering = self._selected.get(selector)
        if rendering is None:
            # Two threads may render the same selection at once; both results are equal.
            rendering = render(select_flags(self.document, selector))
            self._selected[selector] = rendering
        return rendering


class PublisherStopped(Exception):
    """The publisher stopped; there will be no further documents."""


class Subscription:
    """Published documents in the event loop that subscribed: the current one, then each newer one.

    A reader slower than the changes skips to the newest document; it never reads an older one
    after a newer one.
    """

    def __init__(self, publisher: FlagPublisher, latest: Published | None) -> None:
        self._publisher = publisher
        self._latest = latest
        self._returned: Published | None = None
        self._wakeup = asyncio.Event()
        self._stopped = False

    async def next(self) -> Published:
        """The newest document not yet returned, waiting for one; raises PublisherStopped."""
        while True:
            latest = self._latest
            if latest is not None and latest is not self._returned:
                self._returned = latest
                return latest
            if self._stopped:
                raise PublisherStopped
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        self._publisher._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _offer(self, published: Published) -> None:
        # Runs in the subscriber's loop; deliveries from different threads may arrive out of order.
        if self._latest is None or published.sequence > self._latest.sequence:
            self._latest = published
            self._wakeup.set()

    def _stop(self) -> None:
        self._stopped = True
        self._wakeup.set()


class FlagPublisher:
    """Keeps the current document; `refresh` compiles and publishes when the database has moved on."""

    def __init__(
        self,
        compile_document: Callable[[], dict[str, Any]],
        change_marker: Callable[[], int],
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compile_document = compile_document
        self._change_marker = change_marker
        self._poll_interval_s = poll_interval_s
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._current: Published | None = None
        self._compiled_marker: int | None = None
        self._compiled_at_s = 0.0
        self._failed: tuple[int | None, float] | None = None  # (marker or None if unreadable, when)
        self._stopped = False
        self.last_error: str | None = None
        self._refresh_lock = threading.Lock()
        self._lock = threading.Lock()
        self._subscriptions: dict[asyncio.AbstractEventLoop, set[Subscription]] = {}
        self._listeners: list[Callable[[Published], None]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Published | None:
        """The newest published document; None until the first compile succeeds."""
        return self._current

    def start(self) -> None:
        """Publish the first document (if the database allows) and start polling."""
        self.refresh()
        self._stopped = False
        self._stopping.clear()
        self._thread = threading.Thread(target=self._poll, name="ringmaster-flag-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and end every subscription."""
        self._stopped = True
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            groups = list(self._subscriptions.items())
            self._subscriptions.clear()
        for loop, subscriptions in groups:
            self._call_in(loop, _stop_all, list(subscriptions))

    def refresh(self) -> bool:
        """Compile if the database moved or the document aged, publish if it changed; True if published.

        Never raises: a failure is logged and kept in `last_error`, the last good document stays
        current, and the same database state is retried after FAILURE_RETRY_S.
        """
        with self._refresh_lock:
            now_s = self._monotonic()
            if self._failed is not None and self._failed[0] is None and self._recently_failed(now_s):
                return False
            try:
                marker = self._change_marker()
            except Exception as error:  # the database is unreachable; keep serving the last document
                return self._record_failure(None, now_s, error)
            if not self._due(marker, now_s):
                return False
            try:
                document = self._compile_document()
            except Exception as error:  # e.g. a cohort set past its key limit; keep serving the last document
                return self._record_failure(marker, now_s, error)
            self._compiled_marker, self._compiled_at_s = marker, now_s
            self._failed, self.last_error = None, None
            rendering = render(document)
            if self._current is not None and rendering.etag == self._current.rendering.etag:
                return False
            sequence = self._current.sequence + 1 if self._current is not None else 1
            published = Published(sequence, document, rendering)
            with self._lock:
                self._current = published
                groups = [(loop, list(subscriptions)) for loop, subscriptions in self._subscriptions.items()]
            self._notify(published, groups)
            return True

    def subscribe(self) -> Subscription:
        """A subscription in the running event loop, starting with the current document."""
        loop = asyncio.get_running_loop()
        with self._lock:
            subscription = Subscription(self, self._current)
            self._subscriptions.setdefault(loop, set()).add(subscription)
        if self._stopped:
            subscription._stop()
        return subscription

    def add_listener(self, listener: Callable[[Published], None]) -> None:
        """Call `listener` with every document published from now on, in the publishing thread."""
        with self._lock:
            self._listeners.append(listener)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(subscriptions) for subscriptions in self._subscriptions.values())

    def _recently_failed(self, now_s: float) -> bool:
        return self._failed is not None and now_s - self._failed[1] < FAILURE_RETRY_S

    def _record_failure(self, marker: int | None, now_s: float, error: Exception) -> bool:
        self._failed = (marker, now_s)
        message = f"{type(error).__name__}: {error}"
        if message != self.last_error:  # once per distinct failure, not at every retry
            logger.error("compiling the flag document failed (%s); still serving the last one", message,
                         exc_info=error)
        self.last_error = message
        return False

    def _due(self, marker: int, now_s: float) -> bool:
        if self._failed is not None and self._failed[0] == marker and self._recently_failed(now_s):
            return False
        return (
            self._current is None
            or marker != self._compiled_marker
            or now_s - self._compiled_at_s >= self._max_age_s
        )

    def _notify(self, published: Published, groups: list[tuple[asyncio.AbstractEventLoop, list[Subscription]]]) -> None:
        for listener in list(self._listeners):
            try:
                listener(published)
            except Exception:  # one listener's failure must not keep the document from the others
                logger.exception("a flag document listener failed")
        for loop, subscriptions in groups:
            self._call_in(loop, _offer_all, subscriptions, published)

    def _call_in(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *arguments: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *arguments)
        except RuntimeError:  # the loop has closed; its subscribers are gone with it
            with self._lock:
                self._subscriptions.pop(loop, None)

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            for loop, subscriptions in list(self._subscriptions.items()):
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscriptions[loop]

    def _poll(self) -> None:
        while not self._stopping.wait(self._poll_interval_s):
            self.refresh()


def _offer_all(subscriptions: list[Subscription], published: Published) -> None:
    for subscription in subscriptions:
        subscription._offer(published)


def _stop_all(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        subscription._stop()
