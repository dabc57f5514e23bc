"""The executor against a scripted API server: a write the server asks to send again later (429 or 503 with
Retry-After) is sent again after exactly that wait, whatever its method, a bounded number of times."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPHeaderDict

from cohorts.db import make_engine
from rollout.controller.act import RETRY_AFTER_ATTEMPTS, Executor, StaleWrite, retry_after_s
from rollout.controller.actions import CreateStatefulSet, ScaleStatefulSet
from rollout.controller.history import GateResults, RolloutHistory
from rollout.controller.observed import RolloutView
from rollout.flags.store import FlagStore
from tests.fake_api import Answer, FakeApi, Received, status

ROLLOUT = RolloutView.from_object({"metadata": {"namespace": "prod", "name": "web", "uid": "u-1",
                                                "resourceVersion": "7"}, "spec": {}})
SCALE = ScaleStatefulSet(name="web", replicas=2, resource_version="41")
STATEFULSET = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": "prod"},
               "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app", "image": "example/web:2"}]}}}}


def answers(*scripted: Answer) -> Callable[[Received], Answer]:
    """Answer the requests in turn with `scripted`, then with the last one for ever."""
    remaining = list(scripted)
    return lambda _: remaining.pop(0) if len(remaining) > 1 else remaining[0]


class Sleeps:
    def __init__(self) -> None:
        self.waited_s: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waited_s.append(seconds)


def executor(fake: FakeApi, sleep: Callable[[float], None], is_leader: Callable[[], bool] = lambda: True) -> Executor:
    engine = make_engine("sqlite://")  # never touched: scaling and creating StatefulSets use no database
    return Executor(fake.api_client(), FlagStore(engine), RolloutHistory(engine), GateResults(engine),
                    is_leader=is_leader, sleep=sleep)


@pytest.fixture
def sleeps() -> Iterator[Sleeps]:
    yield Sleeps()


def test_a_scale_answered_429_with_retry_after_is_sent_again_after_that_wait(sleeps: Sleeps) -> None:
    with FakeApi(answers(status(429, "TooManyRequests", **{"Retry-After": "2"}),
                         status(429, "TooManyRequests", **{"Retry-After": "1"}),
                         Answer(200, STATEFULSET))) as fake:
        executor(fake, sleeps).execute(ROLLOUT, SCALE)
    assert [request.method for request in fake.received] == ["PATCH"] * 3
    assert sleeps.waited_s == [2.0, 1.0]


def test_a_create_answered_503_with_retry_after_is_sent_again(sleeps: Sleeps) -> None:
    with FakeApi(answers(status(503, "ServiceUnavailable", **{"Retry-After": "1"}),
                         Answer(201, STATEFULSET))) as fake:
        executor(fake, sleeps).execute(ROLLOUT, CreateStatefulSet(name="web-2", manifest=STATEFULSET))
    assert [request.method for request in fake.received] == ["POST", "POST"]
    assert sleeps.waited_s == [1.0]


def test_a_server_that_keeps_asking_to_wait_gets_a_bounded_number_of_retries(sleeps: Sleeps) -> None:
    with FakeApi(answers(status(429, "TooManyRequests", **{"Retry-After": "1"}))) as fake, \
            pytest.raises(ApiException) as raised:
        executor(fake, sleeps).execute(ROLLOUT, SCALE)
    assert raised.value.status == 429
    assert len(fake.received) == RETRY_AFTER_ATTEMPTS + 1
    assert sleeps.waited_s == [1.0] * RETRY_AFTER_ATTEMPTS


@pytest.mark.parametrize("answer", [
    status(500, "InternalError", **{"Retry-After": "1"}),
    status(429, "TooManyRequests"),
    status(503, "ServiceUnavailable"),
    status(503, "ServiceUnavailable", **{"Retry-After": "3600"}),
], ids=["500 with Retry-After", "429 without", "503 without", "a wait too long to hold a worker"])
def test_other_errors_go_straight_to_the_reconcile(sleeps: Sleeps, answer: Answer) -> None:
    with FakeApi(answers(answer)) as fake, pytest.raises(ApiException):
        executor(fake, sleeps).execute(ROLLOUT, SCALE)
    assert len(fake.received) == 1
    assert sleeps.waited_s == []


def test_a_controller_that_lost_the_lease_while_waiting_does_not_send_the_write_again(sleeps: Sleeps) -> None:
    leading = [True]

    def lose_the_lease(seconds: float) -> None:
        sleeps(seconds)
        leading[0] = False

    with FakeApi(answers(status(429, "TooManyRequests", **{"Retry-After": "1"}), Answer(200, STATEFULSET))) as fake, \
            pytest.raises(StaleWrite, match="Lease"):
        executor(fake, lose_the_lease, is_leader=lambda: leading[0]).execute(ROLLOUT, SCALE)
    assert len(fake.received) == 1


@pytest.mark.parametrize(("code", "headers", "expected"), [
    (429, {"Retry-After": "1"}, 1.0),
    (503, {"retry-after": "5"}, 5.0),
    (429, {"Retry-After": "Fri, 27 Nov 2026 16:00:00 GMT"}, None),
    (429, {"Retry-After": "-1"}, None),
    (409, {"Retry-After": "1"}, None),
    (429, None, None),
])
def test_retry_after_is_read_from_429_and_503_in_seconds(code: int, headers: dict[str, str] | None,
                                                         expected: float | None) -> None:
    error: Any = ApiException(status=code)
    error.headers = None if headers is None else HTTPHeaderDict(headers)
    assert retry_after_s(error) == expected
