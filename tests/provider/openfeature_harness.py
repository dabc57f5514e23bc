"""A provider put behind the OpenFeature API as an app does it, with the events its client receives.

OpenFeature runs event handlers on a thread pool, so the log says which events arrived, not in
which order; tests that care about order watch the client's provider status instead.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.event import EventDetails, ProviderEvent
from openfeature.provider import ProviderStatus
from ringmaster_flagd import RingmasterProvider


class EventLog:
    def __init__(self, client: OpenFeatureClient) -> None:
        self._seen: list[tuple[ProviderEvent, EventDetails]] = []
        self._arrived = threading.Condition()
        for event in ProviderEvent:
            client.add_handler(event, self._recorder(event))

    def _recorder(self, event: ProviderEvent) -> Callable[[EventDetails], None]:
        return lambda details: self._record(event, details)

    def _record(self, event: ProviderEvent, details: EventDetails) -> None:
        with self._arrived:
            self._seen.append((event, details))
            self._arrived.notify_all()

    def count(self) -> int:
        with self._arrived:
            return len(self._seen)

    def wait_for(
        self,
        event: ProviderEvent,
        where: Callable[[EventDetails], bool] = lambda details: True,
        after: int = 0,
        timeout_s: float = 5.0,
    ) -> EventDetails:
        """The first `event` (matching `where`) among those that arrived after the first `after` ones."""
        with self._arrived:
            found: list[EventDetails] = []

            def arrived() -> bool:
                found[:] = [details for seen, details in self._seen[after:] if seen == event and where(details)]
                return bool(found)

            assert self._arrived.wait_for(arrived, timeout=timeout_s), (
                f"no {event.value} within {timeout_s} s: {self.names()}"
            )
            return found[0]

    def names(self) -> list[str]:
        with self._arrived:
            return [event.value for event, _ in self._seen]


@dataclass
class App:
    client: OpenFeatureClient
    events: EventLog
    init_error: Exception | None

    def status(self) -> ProviderStatus:
        return self.client.get_provider_status()

    def wait_for_status(self, status: ProviderStatus, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.status() != status:
            assert time.monotonic() < deadline, (
                f"provider is {self.status().value}, not {status.value}, after {timeout_s} s"
            )
            time.sleep(0.01)


@contextmanager
def app_using(provider: RingmasterProvider) -> Iterator[App]:
    """An app's client of `provider`, set up with set_provider_and_wait; `init_error` is what that raised."""
    domain = f"app-{uuid.uuid4().hex[:8]}"
    init_error: Exception | None = None
    try:
        api.set_provider_and_wait(provider, domain)
    except Exception as error:
        init_error = error
    client = api.get_client(domain)
    try:
        yield App(client, EventLog(client), init_error)
    finally:
        provider.shutdown()
