"""The controller's HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for the kubelet.

A small threaded http.server, no web framework: three read-only routes, each answered from memory.
`/healthz` says the process works (its informers' threads run); `/readyz` says its caches are synced,
which a standby's are too: readiness is not leadership (`ringmaster_controller_leader` tells that).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

OFF = ("", "off")
# Why a probe fails, or None when it passes.
Probe = Callable[[], str | None]


def parse_address(text: str) -> tuple[str, int] | None:
    """HOST:PORT (IPv6 as [::1]:8090) to (host, port); None for '' or 'off' (no endpoint)."""
    text = text.strip()
    if text.lower() in OFF:
        return None
    host, separator, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {text!r} is not HOST:PORT; use e.g. 127.0.0.1:8090, 0.0.0.0:8090, "
                         "[::]:8090, or off")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class Endpoint:
    """Binds when made (a port in use is a ValueError at start-up), serves from `start()` until `stop()`."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, *, healthy: Probe,
                 ready: Probe) -> None:
        server_class = _Server6 if ":" in address[0] else _Server
        try:
            self._server = server_class(address, _handler(registry, healthy, ready))
        except OSError as error:  # a setting that cannot be used, like a malformed address
            raise ValueError(f"cannot serve metrics at {address[0]}:{address[1]} ({error.strerror or error}); "
                             "choose another --metrics-address, or off") from error
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-endpoint", daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz at %s", self.url)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, healthy: Probe, ready: Probe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._answer(200, encoder(registry), content_type)
            elif path in ("/healthz", "/readyz"):
                failing = (healthy if path == "/healthz" else ready)()
                if failing is None:
                    self._answer(200, b"ok\n")
                else:
                    self._answer(503, f"{failing}\n".encode())
            else:
                self._answer(404, b"not found: this endpoint serves /metrics, /healthz and /readyz\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would drown the controller's log.
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
