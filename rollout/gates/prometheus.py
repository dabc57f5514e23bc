"""Asking Prometheus for the numbers a gate judges: instant and range queries at an explicit time.

A thin adapter over prometheus-api-client. Every query names its evaluation time (a gate measured at T
must read what Prometheus knew at T, and a backfilled history is found only that way) and a timeout,
which Prometheus also gets so it stops work nobody waits for. Nothing is retried here: the gate loop
retries on its own interval, and a hidden retry would only make an outage slower to report. Failures
come as one family: `PrometheusUnavailable` (hold and retry) and `QueryRejected` (fix the query).
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry


class PrometheusError(Exception):
    """Prometheus could not answer a gate's query."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus is down, unreachable, too slow or overloaded: hold the rollout and ask again later."""


class QueryRejected(PrometheusError):
    """Prometheus refused the query (400 bad_data, 422 execution error): the gate's query needs fixing."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result: its labels and its value at the evaluation time."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range query's result: its labels and its (Unix seconds, value) points."""

    labels: Mapping[str, str]
    points: list[tuple[float, float]]


class PrometheusQueries(Protocol):
    """What evaluating a gate needs from Prometheus; `Prometheus` talks to a real one."""

    def instant(self, query: str, at: datetime, timeout_s: float) -> list[Sample]: ...

    def range(self, query: str, start: datetime, end: datetime, step_s: float, timeout_s: float) -> list[Series]: ...


# Prometheus's own codes for a query it will not run; anything else 4xx is a client setup problem.
_REJECTED_STATUSES = frozenset({400, 422})
_UNAVAILABLE_STATUSES = frozenset({408, 429})
_STATUS_MESSAGE = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.DOTALL)


class Prometheus:
    """The Prometheus at `url`, queried through prometheus-api-client, one client per thread (a requests
    session is not meant to be shared between threads), none of them retrying."""

    def __init__(self, url: str) -> None:
        if not re.match(r"^https?://[^/]", url):
            raise ValueError(f"Prometheus URL {url!r} is not an http(s) URL; use e.g. 'http://prometheus:9090'")
        self.url = url.rstrip("/")
        self._clients = threading.local()
        self._lock = threading.Lock()
        self._queries = 0

    @property
    def queries(self) -> int:
        """How many queries have been sent, answered or not."""
        with self._lock:
            return self._queries

    def instant(self, query: str, at: datetime, timeout_s: float) -> list[Sample]:
        """The query's value at `at`: one Sample per series (a scalar is one Sample without labels)."""
        params = {"time": _unix_seconds(at, "at"), "timeout": _duration(timeout_s)}
        result = self._send(lambda client: client.custom_query(query, params=params, timeout=timeout_s), timeout_s)
        return _samples(result, query)

    def range(self, query: str, start: datetime, end: datetime, step_s: float, timeout_s: float) -> list[Series]:
        """The query evaluated every `step_s` from `start` to `end`: one Series per series."""
        if step_s <= 0:
            raise ValueError(f"step_s: {step_s} is not positive; use e.g. 10 for a point every 10 s")
        # The client rounds start and end to whole seconds; these parameters override them.
        params = {"start": _unix_seconds(start, "start"), "end": _unix_seconds(end, "end"),
                  "timeout": _duration(timeout_s)}
        result = self._send(lambda client: client.custom_query_range(
            query, start_time=start, end_time=end, step=f"{step_s:.3f}", params=params, timeout=timeout_s), timeout_s)
        return _series(result, query)

    def _client(self) -> Any:
        # prometheus-api-client is untyped; Any keeps its calls from leaking into strict typing.
        client: Any = getattr(self._clients, "client", None)
        if client is None:
            session = requests.Session()
            # requests already mounts non-retrying adapters; say so rather than rely on a default.
            for prefix in ("http://", "https://"):
                session.mount(prefix, HTTPAdapter(max_retries=Retry(total=0)))
            client = PrometheusConnect(self.url, retry=Retry(total=0), session=session)
            self._clients.client = client
        return client

    def _send(self, call: Callable[[Any], Any], timeout_s: float) -> Any:
        with self._lock:
            self._queries += 1
        try:
            return call(self._client())
        except PrometheusApiClientException as error:
            raise _http_error(str(error), self.url) from None
        except (requests.exceptions.JSONDecodeError, KeyError, TypeError):
            # The client reads body["data"]["result"] of any 200 answer.
            raise PrometheusError(f"{self.url} answered with something other than Prometheus's JSON; "
                                  "check that the URL is Prometheus's, e.g. 'http://prometheus:9090'") from None
        except requests.exceptions.RequestException as error:
            raise PrometheusUnavailable(f"cannot reach Prometheus at {self.url}: {_reason(error, timeout_s)}") from None


def _unix_seconds(moment: datetime, name: str) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"{name}: {moment.isoformat()} has no time zone; pass an aware time, e.g. datetime.now(UTC)")
    return f"{moment.timestamp():.3f}"


def _duration(seconds: float) -> str:
    """A timeout as Prometheus reads it; milliseconds, so a fraction of a second survives."""
    return f"{max(1, round(seconds * 1000))}ms"


def _reason(error: BaseException, timeout_s: float) -> str:
    """What went wrong beneath requests' and urllib3's wrappers: 'connection refused', 'no answer within 5s'."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        wrapped = cause.reason if isinstance(cause, MaxRetryError) else None
        cause = wrapped or cause.__cause__ or cause.__context__ or next(
            (argument for argument in cause.args if isinstance(argument, BaseException)), None)
    for cause in chain:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError) and cause.strerror:
            return cause.strerror.lower()
    if any(isinstance(cause, TimeoutError | Urllib3Timeout) for cause in chain):
        return f"no answer within {timeout_s:g}s"
    return str(chain[-1])


def _http_error(message: str, url: str) -> PrometheusError:
    """The exception for a non-200 answer; prometheus-api-client puts the status and body in its message."""
    match = _STATUS_MESSAGE.match(message)
    if match is None:
        return PrometheusError(f"Prometheus at {url}: {message}")
    status, body = int(match.group(1)), _body_text(match.group(2))
    if status in _REJECTED_STATUSES:
        return QueryRejected(body)
    if status >= 500 or status in _UNAVAILABLE_STATUSES:
        return PrometheusUnavailable(f"Prometheus at {url} answered HTTP {status}: {body}")
    return PrometheusError(f"Prometheus at {url} answered HTTP {status}: {body}; check the URL and credentials")


def _body_text(body_repr: str) -> str:
    """Prometheus's own error from the body the client quotes as bytes: "parse error: unexpected ..."."""
    try:
        body = ast.literal_eval(body_repr)
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    except (ValueError, SyntaxError):
        return body_repr
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(document, dict) and "error" in document:
        kind = document.get("errorType")
        return f"{kind}: {document['error']}" if kind else str(document["error"])
    return text.strip()[:500]


def _float(text: Any, query: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise PrometheusError(f"Prometheus returned {text!r}, not a number, for {query!r}") from None


def _samples(result: Any, query: str) -> list[Sample]:
    if not isinstance(result, list):
        raise PrometheusError(f"Prometheus returned {result!r} for {query!r}; expected a list of series")
    if result and not isinstance(result[0], dict):
        # A scalar (or string) result is [time, "value"], not a list of series.
        return [Sample({}, _float(result[1], query))]
    samples = []
    for series in result:
        if "value" not in series:
            raise QueryRejected("it returns a range vector, not one value per series; wrap it, e.g. in "
                                "increase(...) or rate(...)")
        samples.append(Sample(dict(series.get("metric", {})), _float(series["value"][1], query)))
    return samples


def _series(result: Any, query: str) -> list[Series]:
    if not isinstance(result, list):
        raise PrometheusError(f"Prometheus returned {result!r} for {query!r}; expected a list of series")
    return [
        Series(dict(series.get("metric", {})),
               [(float(at_s), _float(value, query)) for at_s, value in series.get("values", [])])
        for series in result
    ]
