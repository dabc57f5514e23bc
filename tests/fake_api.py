"""A scripted stand-in for the API server, on loopback over plain HTTP, for unit tests of how the controller's
shell takes answers a healthy server seldom gives (Retry-After, a 410 on every watch) without a control plane.
The test says how to answer each request; the fake records every request it received, and when."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from kubernetes import client


@dataclass(frozen=True)
class Received:
    at_s: float
    method: str
    path: str
    query: Mapping[str, list[str]]

    @property
    def watch(self) -> bool:
        return self.query.get("watch", [""])[0].lower() in ("true", "1")


@dataclass(frozen=True)
class Answer:
    """A complete answer: a status, a JSON body (one object, or lines of watch events) and headers."""

    status: int
    body: dict[str, Any] | list[dict[str, Any]]
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, list):
            return b"".join(json.dumps(event).encode() + b"\n" for event in self.body)
        return json.dumps(self.body).encode()


def status(code: int, reason: str, **headers: str) -> Answer:
    """A Kubernetes Status document as the answer, as the API server sends errors."""
    return Answer(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "reason": reason, "message": reason, "code": code}, headers)


class FakeApi:
    def __init__(self, answer: Callable[[Received], Answer]) -> None:
        self._answer = answer
        self._lock = threading.Lock()
        self._received: list[Received] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = urlsplit(self.path)
                received = Received(time.monotonic(), self.command, target.path, parse_qs(target.query))
                with fake._lock:
                    fake._received.append(received)
                answer = fake._answer(received)
                body = answer.encoded()
                self.send_response(answer.status)
                for name, value in {"Content-Type": "application/json", **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": "fake-token"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
