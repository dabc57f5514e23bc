"""RingmasterProvider following the Ringmaster service over HTTP: fetch, change stream, polling, cache, events.

The service here is tests/provider/flag_service.py, a real HTTP server that keeps the service's
contract (flags.json with ETag/304, an SSE stream of documents).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.provider import ProviderStatus
from ringmaster_flagd import RingmasterProvider

from tests.polling import eventually
from tests.provider.flag_service import FlagService
from tests.provider.openfeature_harness import app_using


def document(new_checkout: bool, greeting: str = "hello") -> dict[str, Any]:
    return {
        "metadata": {"flagSetId": "shop"},
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on" if new_checkout else "off",
                "targeting": {"if": [{"in": [{"var": "tier"}, ["beta"]]}, "on", None]},
            },
            "greeting": {"state": "ENABLED", "variants": {"only": greeting}, "defaultVariant": "only"},
        },
    }


@pytest.fixture
def service() -> Iterator[FlagService]:
    running = FlagService(document(new_checkout=False)).start()
    yield running
    running.stop()


def provider_for(service: FlagService, cache_dir: Path, **options: Any) -> RingmasterProvider:
    return RingmasterProvider(service.base_url, cache_dir=cache_dir, **options)


def test_flags_come_from_the_service_and_a_change_reaches_the_app_within_a_second(
    service: FlagService, tmp_path: Path
) -> None:
    with app_using(provider_for(service, tmp_path)) as app:
        assert app.init_error is None
        assert app.client.get_boolean_value("new-checkout", True) is False
        assert app.client.get_boolean_value("new-checkout", False, EvaluationContext("u1", {"tier": "beta"})) is True
        mark = app.events.count()

        published = time.monotonic()
        service.publish(document(new_checkout=True))
        changed = app.events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, after=mark, timeout_s=1.0)

        assert time.monotonic() - published < 1.0
        assert changed.flags_changed == ["new-checkout"]
        assert changed.metadata == {"flagSetId": "shop"}
        assert app.client.get_boolean_value("new-checkout", False) is True


def test_while_the_service_is_down_the_app_is_stale_and_served_the_last_flags_then_ready_again(
    service: FlagService, tmp_path: Path
) -> None:
    with app_using(provider_for(service, tmp_path, poll_interval_s=0.2)) as app:
        service.stop()
        app.wait_for_status(ProviderStatus.STALE)
        assert app.client.get_string_details("greeting", "?").value == "hello"

        mark = app.events.count()
        service.publish(document(new_checkout=False, greeting="welcome back"))
        service.start()
        app.wait_for_status(ProviderStatus.READY)
        app.events.wait_for(
            ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
            lambda details: details.flags_changed == ["greeting"],
            after=mark,
        )
        assert app.client.get_string_value("greeting", "?") == "welcome back"


def test_without_a_stream_changes_arrive_by_polling_flags_json_with_if_none_match(
    service: FlagService, tmp_path: Path
) -> None:
    service.streaming = False
    with app_using(provider_for(service, tmp_path, poll_interval_s=0.1)) as app:
        time.sleep(0.5)
        assert app.status() == ProviderStatus.READY, "a source that answers polls is not stale"
        service.publish(document(new_checkout=True))
        app.events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, timeout_s=2.0)
        assert app.client.get_boolean_value("new-checkout", False) is True

    polls = [request for request in service.requests if request.path == "/flagd/v1/flags.json"]
    assert any(request.status == 304 and request.if_none_match for request in polls)


def test_a_dropped_stream_is_reconnected_and_changes_flow_again(service: FlagService, tmp_path: Path) -> None:
    with app_using(provider_for(service, tmp_path)) as app:
        service.drop_streams()
        time.sleep(0.8)  # past the first reconnection delay
        mark = app.events.count()
        service.publish(document(new_checkout=True))
        app.events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, after=mark, timeout_s=1.0)
        assert app.status() == ProviderStatus.READY


def test_an_app_started_while_the_service_is_down_evaluates_the_cached_flags_and_is_stale_until_it_answers(
    service: FlagService, tmp_path: Path
) -> None:
    with app_using(provider_for(service, tmp_path)) as first_run:
        assert first_run.client.get_string_value("greeting", "?") == "hello"
    assert len(list(tmp_path.glob("*.json"))) == 1, "one cached document per source"
    service.stop()

    with app_using(provider_for(service, tmp_path, poll_interval_s=0.2)) as app:
        assert app.init_error is None
        assert app.client.get_string_value("greeting", "?") == "hello"
        app.wait_for_status(ProviderStatus.STALE)
        service.start()
        app.wait_for_status(ProviderStatus.READY)


def test_a_cached_document_still_current_is_confirmed_with_a_304(service: FlagService, tmp_path: Path) -> None:
    with app_using(provider_for(service, tmp_path)):
        pass
    service.requests.clear()
    with app_using(provider_for(service, tmp_path)) as app:
        assert app.client.get_string_value("greeting", "?") == "hello"
    # The first provider's stream request may reach the service after it has closed; only fetches count.
    fetches = [(request.if_none_match, request.status) for request in service.requests
               if request.path == "/flagd/v1/flags.json"]
    assert fetches and set(fetches) == {(service.etag, 304)}


def test_with_neither_service_nor_cache_initialisation_fails_and_the_flags_arrive_when_the_service_does(
    service: FlagService, tmp_path: Path
) -> None:
    service.stop()
    with app_using(provider_for(service, tmp_path)) as app:
        assert app.init_error is not None
        assert "no copy is kept" in str(app.init_error)
        details = app.client.get_string_details("greeting", "?")
        assert (details.value, details.error_code) == ("?", ErrorCode.PROVIDER_NOT_READY)

        service.start()
        app.wait_for_status(ProviderStatus.READY)
        assert app.client.get_string_value("greeting", "?") == "hello"


def test_an_invalid_document_is_reported_as_an_error_and_the_last_good_one_kept(
    service: FlagService, tmp_path: Path
) -> None:
    with app_using(provider_for(service, tmp_path)) as app:
        mark = app.events.count()
        service.publish({"flags": {"greeting": {"state": "MAYBE", "variants": {"only": "hi"}}}})
        error = app.events.wait_for(ProviderEvent.PROVIDER_ERROR, after=mark)
        assert "flags.greeting.state" in (error.message or "")
        assert app.client.get_string_value("greeting", "?") == "hello"

        service.publish(document(new_checkout=False, greeting="fixed"))
        app.wait_for_status(ProviderStatus.READY)
        assert app.client.get_string_value("greeting", "?") == "fixed"
    cached = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert cached["document"]["flags"]["greeting"]["variants"] == {"only": "fixed"}


def test_a_selector_asks_the_service_for_one_flag_set_and_is_cached_apart(service: FlagService, tmp_path: Path) -> None:
    with app_using(provider_for(service, tmp_path, selector="flagSetId=web")):
        time.sleep(0.2)
    with app_using(provider_for(service, tmp_path)):
        pass
    assert {(request.path, request.selector) for request in service.requests} >= {
        ("/flagd/v1/flags.json", "flagSetId=web"),
        ("/flagd/v1/stream", "flagSetId=web"),
        ("/flagd/v1/flags.json", None),
    }
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_shutdown_ends_the_stream_and_its_thread(service: FlagService, tmp_path: Path) -> None:
    provider = provider_for(service, tmp_path)
    with app_using(provider):
        time.sleep(0.2)
    # Liveness, not a figure: on a loaded machine the thread may outlive shutdown()'s join by a moment.
    eventually(lambda: not [thread for thread in threading.enumerate() if thread.name == "ringmaster-flags-feed"],
               timeout_s=10, what="the stream's thread to end after shutdown")
