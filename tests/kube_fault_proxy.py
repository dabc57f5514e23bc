"""An HTTP proxy in front of the API server that a test tells, while it runs, to misbehave.

Clients speak plain HTTP to 127.0.0.1:<port>; the proxy sends each request on over HTTPS to the API server,
with the cluster's CA and bearer token, and passes the answer back. Watches (`watch=true`) are streamed chunk
by chunk as the server sends them, for as long as it keeps them open.

Rules, added and removed at runtime, pick requests by method, path and whether they are watches, and answer
some of them (all, the first n, or a seeded share) with a fault instead: 429 with Retry-After, 500, 503, a
request held past the client's timeout (sent on to the server or not), a watch cut mid-stream, or a watch
expired with 410 Gone (as an HTTP status, or as the ERROR event a server sends on an open watch). Every request
is recorded with the fault it got, so a test can assert the faults happened and how the client reacted to them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

log = logging.getLogger(__name__)

# Headers that belong to one connection, not to the request or answer passed along.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "authorization"})
STATUS_REASONS = {410: "Expired", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
STREAM_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What to do to a request instead of (or besides) passing it through; build one with the functions below."""

    kind: str
    status: int = 0
    retry_after_s: int | None = None
    hold_s: float = 0.0
    forward: bool = False
    after_s: float = 0.0


def too_many_requests(retry_after_s: int = 1) -> Fault:
    """429 Too Many Requests with Retry-After: the server did not act on the request."""
    return Fault("429", status=429, retry_after_s=retry_after_s)


def internal_error() -> Fault:
    return Fault("500", status=500)


def unavailable(retry_after_s: int | None = None) -> Fault:
    return Fault("503", status=503, retry_after_s=retry_after_s)


def timeout(hold_s: float, *, forward: bool = False) -> Fault:
    """No answer for `hold_s` (make it longer than the client's timeout), then the connection is closed. With
    `forward` the server gets the request and acts on it; only its answer is lost."""
    return Fault("timeout", hold_s=hold_s, forward=forward)


def drop_watch(after_s: float) -> Fault:
    """The watch is passed through, then its connection cut `after_s` later, mid-stream."""
    return Fault("drop-watch", after_s=after_s)


def gone() -> Fault:
    """410 Gone as the answer to the request: the resourceVersion asked for has expired."""
    return Fault("410", status=410)


def gone_event() -> Fault:
    """A watch that opens (200) and at once sends an ERROR event with a 410 Status, then ends."""
    return Fault("410-event", status=410)


@dataclass
class Rule:
    """Which requests get a fault. Empty `methods` and `path` match every request; `watch` True only watches,
    False every request but watches. Of the matches, a `probability` share (drawn from the proxy's seeded
    generator) gets one of `faults`, picked at random, until `limit` faults were injected."""

    faults: tuple[Fault, ...]
    methods: frozenset[str] = frozenset()
    path: str = ""
    watch: bool | None = None
    probability: float = 1.0
    limit: int | None = None
    injected: int = 0

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        return ((not self.methods or method in self.methods) and re.search(self.path, path) is not None
                and (self.watch is None or self.watch == is_watch)
                and (self.limit is None or self.injected < self.limit))


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it, and the fault it got (None: passed through)."""

    at_s: float
    method: str
    path: str
    watch: bool
    fault: Fault | None


@dataclass(eq=False)  # kept in a set by identity
class _Stream:
    """A streaming answer in flight, which cut() ends at once on both sides."""

    downstream: socket.socket
    upstream: http.client.HTTPSConnection
    was_cut: bool = False

    def cut(self) -> None:
        self.was_cut = True
        for sock in (self.downstream, self.upstream.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class KubeFaultProxy:
    def __init__(self, upstream_url: str, ca_file: str | None, authorization: str, *, seed: int = 0) -> None:
        target = urlsplit(upstream_url)
        if target.scheme != "https" or target.hostname is None:
            raise ValueError(f"upstream {upstream_url!r}: the proxy forwards to an https:// API server")
        self._upstream = (target.hostname, target.port or 443)
        self._tls = ssl.create_default_context(cafile=ca_file)
        self._authorization = authorization
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._streams: set[_Stream] = set()
        self._closing = threading.Event()
        self._server = _Server(self)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-fault-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def in_front_of(cls, configuration: client.Configuration, *, seed: int = 0) -> KubeFaultProxy:
        """A proxy to the API server `configuration` reaches, with its CA and bearer token."""
        authorization = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if not authorization:
            raise ValueError("the configuration has no bearer token for the proxy to send on")
        return cls(configuration.host, configuration.ssl_ca_cert, authorization, seed=seed)

    def api_client(self) -> client.ApiClient:
        """A client of the official package that reaches the API server through this proxy."""
        configuration = client.Configuration()
        configuration.host = self.url
        scheme, _, token = self._authorization.partition(" ")
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": scheme}
        return client.ApiClient(configuration)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; requests held or streaming are ended at once."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self.cut_watches()

    # What a test tells it

    def inject(self, *faults: Fault, methods: Iterable[str] = (), path: str = "", watch: bool | None = None,
               probability: float = 1.0, limit: int | None = None) -> Rule:
        """Add a rule (see Rule); the first matching rule that fires decides a request's fault."""
        if not faults:
            raise ValueError("inject(): name at least one fault, e.g. too_many_requests()")
        rule = Rule(tuple(faults), frozenset(method.upper() for method in methods), path, watch, probability, limit)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def cut_watches(self) -> int:
        """Cut every watch open now; returns how many were."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cut()
        return len(streams)

    # What it saw

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def injected(self, *kinds: str) -> int:
        """How many faults of these kinds (all kinds when none is named) were injected."""
        return sum(count for kind, count in self.injected_by_kind().items() if not kinds or kind in kinds)

    def injected_by_kind(self) -> Counter[str]:
        return Counter(seen.fault.kind for seen in self.seen if seen.fault is not None)

    def retries_after_retry_after(self) -> list[tuple[Seen, float | None]]:
        """Each request answered with Retry-After, and how long after it the same method and path were requested
        again (None: never)."""
        seen = self.seen
        gaps: list[tuple[Seen, float | None]] = []
        for index, answered in enumerate(seen):
            if answered.fault is None or answered.fault.retry_after_s is None:
                continue
            again = next((later for later in seen[index + 1:]
                          if (later.method, later.path) == (answered.method, answered.path)), None)
            gaps.append((answered, None if again is None else again.at_s - answered.at_s))
        return gaps

    # Inside

    def _choose(self, method: str, path: str, is_watch: bool) -> Fault | None:
        with self._lock:
            fault = None
            for rule in self._rules:
                if rule.matches(method, path, is_watch) and self._random.random() < rule.probability:
                    rule.injected += 1
                    fault = self._random.choice(rule.faults)
                    break
            self._seen.append(Seen(time.monotonic(), method, path, is_watch, fault))
        return fault

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(*self._upstream, context=self._tls)

    def _upstream_headers(self, headers: Any) -> dict[str, str]:
        kept = {name: value for name, value in headers.items() if name.lower() not in HOP_BY_HOP}
        return {**kept, "Authorization": self._authorization}

    def _track(self, stream: _Stream, open_: bool) -> None:
        with self._lock:
            if open_:
                self._streams.add(stream)
            else:
                self._streams.discard(stream)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: KubeFaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections cut on purpose end in errors; they are what the proxy is for, not news.
        log.debug("kube fault proxy: a connection from %s ended in an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked answers, as the API server speaks
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kube fault proxy: " + format, *args)

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urlsplit(self.path)
        is_watch = any(value.lower() in ("true", "1") for value in parse_qs(target.query).get("watch", []))
        fault = proxy._choose(self.command, target.path, is_watch)
        if fault is None or fault.kind == "drop-watch":
            self._forward(body, cut_after_s=fault.after_s if fault else None)
        elif fault.kind == "timeout":
            self._hold(body, fault)
        elif fault.kind == "410-event":
            self._expire_watch()
        else:
            self._refuse(fault)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _forward(self, body: bytes, *, cut_after_s: float | None = None) -> None:
        proxy = self.server.proxy
        upstream = proxy._connect()
        try:
            try:
                upstream.request(self.command, self.path, body=body or None,
                                 headers=proxy._upstream_headers(self.headers))
                answer = upstream.getresponse()
            except OSError as error:
                self._answer(502, {}, _status(502, "BadGateway", f"the proxy cannot reach the API server: {error}"))
                return
            headers = {name: value for name, value in answer.getheaders() if name.lower() not in HOP_BY_HOP}
            if answer.getheader("Content-Length") is not None and cut_after_s is None:
                self._answer(answer.status, headers, answer.read())
            else:
                self._stream(answer, headers, _Stream(self.connection, upstream), cut_after_s)
        finally:
            upstream.close()

    def _stream(self, answer: http.client.HTTPResponse, headers: dict[str, str], stream: _Stream,
                cut_after_s: float | None) -> None:
        """Pass a chunked answer on as it comes, each piece at once; cut it `cut_after_s` in, if given."""
        proxy = self.server.proxy
        self.send_response(answer.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        timer = threading.Timer(cut_after_s, stream.cut) if cut_after_s is not None else None
        proxy._track(stream, True)
        try:
            if timer is not None:
                timer.start()
            while piece := answer.read1(STREAM_READ_BYTES):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException, ValueError):
            self.close_connection = True
        finally:
            if timer is not None:
                timer.cancel()
            proxy._track(stream, False)
        if stream.was_cut:
            self.close_connection = True

    def _hold(self, body: bytes, fault: Fault) -> None:
        if fault.forward:
            upstream = self.server.proxy._connect()
            try:
                upstream.request(self.command, self.path, body=body or None,
                                 headers=self.server.proxy._upstream_headers(self.headers))
                upstream.getresponse().read()
            except OSError:
                pass
            finally:
                upstream.close()
        self.server.proxy._closing.wait(fault.hold_s)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _refuse(self, fault: Fault) -> None:
        headers = {"Content-Type": "application/json"}
        if fault.retry_after_s is not None:
            headers["Retry-After"] = str(fault.retry_after_s)
        reason = STATUS_REASONS[fault.status]
        self._answer(fault.status, headers, _status(fault.status, reason, f"injected by the proxy: {reason}",
                                                    retry_after_s=fault.retry_after_s))

    def _expire_watch(self) -> None:
        event = {"type": "ERROR", "object": json.loads(_status(
            410, "Expired", "too old resource version (injected by the proxy)"))}
        line = json.dumps(event).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _status(code: int, reason: str, message: str, *, retry_after_s: int | None = None) -> bytes:
    """A Kubernetes Status document, as the API server answers errors."""
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}
    if retry_after_s is not None:
        status["details"] = {"retryAfterSeconds": retry_after_s}
    return json.dumps(status).encode()
