"""A stand-in for the Ringmaster service's flag endpoints, on a real socket, for the provider's tests.

It follows the contract the provider documents (ringmaster_flagd/http_source.py): flags.json with
an ETag and 304 to a matching If-None-Match, and an event stream that starts with the current
document, sends one `configuration` event per change and a keepalive comment in between. Tests
can publish documents, stop and restart it on the same port, drop open streams, or refuse the
stream altogether, and read which requests it saw.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class SeenRequest:
    path: str
    if_none_match: str | None
    selector: str | None
    status: int


class FlagService:
    def __init__(self, document: dict[str, Any] | str, keepalive_s: float = 0.2) -> None:
        self.keepalive_s = keepalive_s
        self.streaming = True
        self.requests: list[SeenRequest] = []
        self.port = 0
        self._changed = threading.Condition()
        self._generation = 0
        self._server: ThreadingHTTPServer | None = None
        self._text = ""
        self._etag = ""
        self.publish(document)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def etag(self) -> str:
        return self._etag

    def publish(self, document: dict[str, Any] | str) -> None:
        """Serve a new document (text is sent as it is, so tests can publish broken ones)."""
        text = document if isinstance(document, str) else json.dumps(document)
        with self._changed:
            self._text = text
            self._etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
            self._changed.notify_all()

    def current(self) -> tuple[str, str]:
        with self._changed:
            return self._text, self._etag

    def start(self) -> FlagService:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, name="flag-service", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering (connections are refused) and end the open streams."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.drop_streams()

    def drop_streams(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def stream_generation(self) -> int:
        with self._changed:
            return self._generation

    def wait_for_change(self, etag: str, generation: int) -> tuple[str, str] | None:
        """The next document after `etag`, None on a keepalive tick; raises when streams are dropped."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._etag != etag or self._generation != generation, timeout=self.keepalive_s
            )
            if self._generation != generation:
                raise ConnectionAbortedError("the service dropped its streams")
            return (self._text, self._etag) if self._etag != etag else None


def _handler_for(service: FlagService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            if self.path == "/flagd/v1/flags.json":
                self._flags()
            elif self.path == "/flagd/v1/stream" and service.streaming:
                self._stream()
            else:
                self._seen(404)
                self.send_error(404)

        def _seen(self, status: int) -> None:
            service.requests.append(
                SeenRequest(self.path, self.headers.get("If-None-Match"), self.headers.get("Flagd-Selector"), status)
            )

        def _flags(self) -> None:
            text, etag = service.current()
            if self.headers.get("If-None-Match") == etag:
                self._seen(304)
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self._seen(200)
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            self._seen(200)
            generation = service.stream_generation()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            text, etag = service.current()
            try:
                self._event(text, etag)
                while True:
                    change = service.wait_for_change(etag, generation)
                    if change is None:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                    else:
                        text, etag = change
                        self._event(text, etag)
            except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
                return

        def _event(self, text: str, etag: str) -> None:
            self.wfile.write(f"event: configuration\nid: {etag}\ndata: {text}\n\n".encode())
            self.wfile.flush()

    return Handler
