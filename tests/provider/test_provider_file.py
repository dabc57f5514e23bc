"""RingmasterProvider reading a local file: the source string, reloads, and the events an app sees."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.provider import ProviderStatus
from ringmaster_flagd import RingmasterProvider, SourceError

from tests.provider.openfeature_harness import app_using


def flags(banner: str = "hello", dark_mode: bool = False) -> dict[str, Any]:
    return {
        "flags": {
            "banner": {"state": "ENABLED", "variants": {"text": banner}, "defaultVariant": "text"},
            "dark-mode": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on" if dark_mode else "off",
            },
        }
    }


def replace(path: Path, content: dict[str, Any] | str) -> None:
    """Write the file the way a deployment should: a new file renamed over the old one."""
    staging = path.with_name(f".{path.name}.new")
    staging.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    os.replace(staging, path)


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    replace(path, flags())
    return path


def test_a_changed_file_is_reloaded_and_the_app_told_which_flags_changed(flag_file: Path) -> None:
    with app_using(RingmasterProvider(f"file:{flag_file}")) as app:
        assert app.client.get_string_value("banner", "?") == "hello"
        mark = app.events.count()
        replace(flag_file, flags(banner="hello", dark_mode=True))
        changed = app.events.wait_for(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, after=mark, timeout_s=2.0)
        assert changed.flags_changed == ["dark-mode"]
        assert app.client.get_boolean_value("dark-mode", False) is True


def test_a_removed_file_makes_the_app_stale_on_the_last_flags_until_it_is_back(flag_file: Path) -> None:
    with app_using(RingmasterProvider(f"file:{flag_file}")) as app:
        flag_file.unlink()
        app.wait_for_status(ProviderStatus.STALE)
        assert app.client.get_string_value("banner", "?") == "hello"
        replace(flag_file, flags(banner="back"))
        app.wait_for_status(ProviderStatus.READY)
        assert app.client.get_string_value("banner", "?") == "back"


def test_a_broken_file_is_an_error_and_the_last_good_flags_keep_serving(flag_file: Path) -> None:
    with app_using(RingmasterProvider(f"file:{flag_file}")) as app:
        mark = app.events.count()
        replace(flag_file, '{"flags": {"banner": ')
        error = app.events.wait_for(ProviderEvent.PROVIDER_ERROR, after=mark)
        assert "is not valid JSON" in (error.message or "")
        assert app.status() == ProviderStatus.ERROR
        assert app.client.get_string_value("banner", "?") == "hello"
        replace(flag_file, flags(banner="fixed"))
        app.wait_for_status(ProviderStatus.READY)
        assert app.client.get_string_value("banner", "?") == "fixed"


def test_a_file_missing_at_start_fails_initialisation_and_is_picked_up_when_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.json"
    with app_using(RingmasterProvider(f"file:{path}")) as app:
        assert app.init_error is not None and "cannot read the flag file" in str(app.init_error)
        assert app.client.get_string_details("banner", "?").error_code == ErrorCode.PROVIDER_NOT_READY
        replace(path, flags())
        app.wait_for_status(ProviderStatus.READY)
        assert app.client.get_string_value("banner", "?") == "hello"


def test_yaml_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(
        "flags:\n  banner:\n    state: ENABLED\n    variants: {text: from yaml}\n    defaultVariant: text\n",
        encoding="utf-8",
    )
    with app_using(RingmasterProvider(f"file:{path}")) as app:
        assert app.client.get_string_value("banner", "?") == "from yaml"


def test_the_source_defaults_to_the_environment(flag_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGMASTER_FLAGS_SOURCE", f"file://{flag_file}")
    with app_using(RingmasterProvider()) as app:
        details = app.client.get_string_details("banner", "?", EvaluationContext("user-1"))
        assert (details.value, details.variant, details.reason) == ("hello", "text", "STATIC")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, "RINGMASTER_FLAGS_SOURCE"),
        ("flags.json", "is not a flag source"),
        ("file:", "names no file"),
        ("http://", "names no host"),
    ],
)
def test_an_unusable_source_is_refused_with_what_to_write_instead(
    source: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RINGMASTER_FLAGS_SOURCE", raising=False)
    with pytest.raises(SourceError, match=message):
        RingmasterProvider(source)


def test_a_selector_is_refused_for_a_file_which_is_read_whole(flag_file: Path) -> None:
    with pytest.raises(SourceError, match="a file is read whole"):
        RingmasterProvider(f"file:{flag_file}", selector="flagSetId=web")
