"""Flags from the Ringmaster service: one fetch, then its change stream, with ETag polling as the fallback.

The contract with the service:
* `GET {base}/flagd/v1/flags.json` answers the flagd document with `ETag: "<opaque>"`, and 304 to
  a request whose `If-None-Match` carries the current ETag;
* `GET {base}/flagd/v1/stream` is a `text/event-stream` that starts with the current document and
  then sends one event per change (`event: configuration`, `id: <etag>`, `data: <document>` on
  one line), with a `: keepalive` comment every 15 s.

While the stream is down the feed reconnects with exponential backoff and meanwhile polls
flags.json every `poll_interval_s`; a source that answers either way is not lost. A stream silent
for three keepalive periods is taken for dead and reconnected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx

from ringmaster_flagd.errors import DocumentError
from ringmaster_flagd.source import ServiceSource, SourceListener
from ringmaster_flagd.sse import read_events

FLAGS_PATH = "/flagd/v1/flags.json"
STREAM_PATH = "/flagd/v1/stream"
STREAM_SILENCE_LIMIT_S = 45.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0

logger = logging.getLogger("ringmaster_flagd.http_source")


def _opaque(etag: str | None) -> str | None:
    """An entity tag without its quotes and weak marker, to compare tags however they were written."""
    return None if etag is None else etag.removeprefix("W/").strip('"')


def _quoted(etag: str) -> str:
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def parse_document(text: str | bytes, origin: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise DocumentError(f"{origin} did not send JSON: {error}") from None
    if not isinstance(document, dict):
        raise DocumentError(f"{origin} did not send a flag document (an object with 'flags')")
    return document


class StreamUnavailable(Exception):
    """The service answered the stream request, but not with a stream."""


class ServiceFeed:
    """Fetches the service's document, then follows its changes on a thread of its own."""

    def __init__(
        self,
        source: ServiceSource,
        listener: SourceListener,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.flags_url = source.base_url + FLAGS_PATH
        self.stream_url = source.base_url + STREAM_PATH
        self.etag: str | None = None
        self._listener = listener
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        headers = {} if source.selector is None else {"Flagd-Selector": source.selector}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_socket: socket.socket | None = None

    def fetch(self) -> dict[str, Any] | None:
        """The current document, or None when it is still the one tagged `etag` (304).

        Raises httpx.HTTPError when the service cannot be reached or fails, DocumentError when it
        sends something else than a document.
        """
        headers = {"If-None-Match": _quoted(self.etag)} if self.etag else {}
        response = self._client.get(self.flags_url, headers=headers)
        if response.status_code == 304:
            return None
        response.raise_for_status()
        # Kept even if the document is refused, so an unchanged bad document is not reported again.
        self.etag = response.headers.get("ETag")
        return parse_document(response.content, self.flags_url)

    def start(self, connected: bool) -> None:
        """Follow the service; `connected` says whether the first fetch reached it."""
        self._thread = threading.Thread(
            target=self._follow, args=(connected,), name="ringmaster-flags-feed", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream_socket = self._stream_socket
        if stream_socket is not None:
            # Closing a socket does not wake a read blocked on it in another thread; shutting it down does.
            with contextlib.suppress(OSError):
                stream_socket.shutdown(socket.SHUT_RDWR)
        self._client.close()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s)

    def _follow(self, connected: bool) -> None:
        try:
            self._follow_until_stopped(connected)
        except Exception:
            # Closing the client on stop makes requests in flight fail; only other failures are news.
            if not self._stop.is_set():
                logger.exception("stopped following %s", self.stream_url)

    def _follow_until_stopped(self, connected: bool) -> None:
        delay = RECONNECT_FIRST_S
        if not connected:
            # The first fetch just failed; give the service a moment before trying again.
            self._wait_and_poll(delay, "the service did not answer")
        while not self._stop.is_set():
            try:
                if self._stream():
                    delay = RECONNECT_FIRST_S
                reason = "the change stream ended"
            except Exception as error:
                if self._stop.is_set():
                    return
                if not isinstance(error, httpx.HTTPError | StreamUnavailable):
                    logger.exception("following %s failed unexpectedly", self.stream_url)
                reason = f"the change stream failed: {error}"
            if self._stop.is_set():
                return
            self._poll(reason)
            self._wait_and_poll(delay, reason)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _stream(self) -> bool:
        """Follow the stream until it ends; whether it connected at all."""
        timeout = httpx.Timeout(self._timeout_s, read=STREAM_SILENCE_LIMIT_S)
        headers = {"Accept": "text/event-stream"}
        with self._client.stream("GET", self.stream_url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise StreamUnavailable(f"{self.stream_url} answered {response.status_code}")
            network_stream = response.extensions.get("network_stream")
            self._stream_socket = network_stream.get_extra_info("socket") if network_stream is not None else None
            if self._stop.is_set():
                return True
            self._listener.source_answering()
            try:
                for event in read_events(response.iter_lines()):
                    if event.name == "configuration":
                        self._receive(event.data, event.id)
            finally:
                self._stream_socket = None
            return True

    def _receive(self, text: str, etag: str | None) -> None:
        if etag is not None and _opaque(etag) == _opaque(self.etag):
            self._listener.source_answering()
            return
        self.etag = etag
        try:
            document = parse_document(text, self.stream_url)
        except DocumentError as error:
            self._listener.document_unreadable(error)
            return
        self._listener.document_read(document, etag)

    def _poll(self, reason: str) -> None:
        try:
            document = self.fetch()
        except httpx.HTTPError as error:
            if not self._stop.is_set():
                self._listener.source_lost(f"{reason}, and {self.flags_url} failed: {error}")
        except DocumentError as error:
            self._listener.document_unreadable(error)
        else:
            if document is None:
                self._listener.source_answering()
            else:
                self._listener.document_read(document, self.etag)

    def _wait_and_poll(self, delay_s: float, reason: str) -> None:
        """Wait `delay_s` before reconnecting, polling flags.json meanwhile at its own pace."""
        reconnect_at = time.monotonic() + delay_s
        next_poll = time.monotonic() + self._poll_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= reconnect_at:
                return
            if now >= next_poll:
                self._poll(reason)
                next_poll = now + self._poll_interval_s
            self._stop.wait(min(reconnect_at, next_poll) - now)
