"""Repeated authentication failures: after RINGMASTER_AUTH_FAILURE_LIMIT of them from one client address
within RINGMASTER_AUTH_FAILURE_WINDOW_SECONDS, that address's further attempts are answered 429 with
Retry-After, valid token or not, until the oldest of those failures has left the window.

A failure is a 401 answered to a request that presented an Authorization header: a token that was
wrong. A request presenting none is not an attempt; it is neither counted nor refused, so apps reading
flags from a blocked address carry on. Another address, with its own count, is unaffected. Slack's
signatures are not counted: an HMAC with the signing secret cannot be guessed a request at a time, and
Slack's own addresses must not be shut out while a changed secret is being configured.

The counts are kept in memory, per process: with several replicas (or uvicorn workers) each keeps its
own, so a client may fail up to the limit on each. Behind a proxy the client address is the proxy's unless uvicorn
trusts the proxy's X-Forwarded-For (FORWARDED_ALLOW_IPS); see docs/security.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollout.api.problems import problem

log = logging.getLogger(__name__)

MAX_ADDRESSES = 10_000  # addresses tracked at once; the stalest are forgotten first
UNAUTHENTICATED = 401
TOO_MANY_REQUESTS = 429


class AuthFailures:
    """The recent authentication failures of each client address, and whether one must wait."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_addresses = max_addresses
        self._lock = threading.Lock()
        # address -> times of its latest failures (at most `limit`), addresses in order of their latest failure
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def wait_s(self, address: str) -> float:
        """Seconds until `address` may try to authenticate again; 0 when it may now."""
        now = self.clock()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None or len(failures) < self.limit:
                return 0.0
            return max(0.0, failures[0] + self.window_s - now)

    def failed(self, address: str) -> bool:
        """Count a failure of `address`; whether it has now reached the limit."""
        now = self.clock()
        with self._lock:
            failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            failures.append(now)
            self._failures[address] = failures
            if len(self._failures) > self.max_addresses:
                self._forget_stale(now)
            return len(failures) >= self.limit

    def _forget_stale(self, now: float) -> None:
        for address in [address for address, times in self._failures.items() if times[-1] <= now - self.window_s]:
            del self._failures[address]
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthFailureLimit:
    """ASGI middleware: refuses attempts from an address over the limit, and counts the 401s it answers."""

    def __init__(self, app: ASGIApp, failures: AuthFailures) -> None:
        self.app = app
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not self.failures.enabled or "authorization" not in headers:
            await self.app(scope, receive, send)
            return
        address = _address(scope)
        wait_s = self.failures.wait_s(address)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            refused = problem(
                TOO_MANY_REQUESTS, "too-many-authentication-failures", "Too many failed authentications",
                f"{self.failures.limit} requests from {address} failed to authenticate within "
                f"{self.failures.window_s:g} s, so its attempts are refused for {retry_after} s more, valid or not; "
                "check the token (`ringmaster token list`), then retry after Retry-After "
                "(RINGMASTER_AUTH_FAILURE_LIMIT and RINGMASTER_AUTH_FAILURE_WINDOW_SECONDS set the limit)")
            refused.headers["Retry-After"] = str(retry_after)
            await refused(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == UNAUTHENTICATED \
                    and self.failures.failed(address):
                log.warning("%d failed authentications from %s within %g s: refusing its attempts until the "
                            "window has passed", self.failures.limit, address, self.failures.window_s)
            await send(message)

        await self.app(scope, receive, counting)


def install_auth_failure_limit(app: FastAPI, failures: AuthFailures) -> None:
    app.state.auth_failures = failures
    app.add_middleware(AuthFailureLimit, failures=failures)
