"""The bytes `fractional` hashes are cbor2's canonical encoding of flagd's normalised value, for any JSON value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import normalize_numbers
from ringmaster_flagd.cbor import UnencodableError, encode
from ringmaster_flagd.operators import hash_position

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.sampled_from([0.0, -0.0, 65504.0, 65505.0, 2.0**63, -(2.0**63), 2.0**64, 1e-45, 5e-324, 3.5e38]),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def flagd_bytes(value: Any) -> bytes:
    return bytes(cbor2.dumps(normalize_numbers(value), canonical=True))


@given(json_values)
def test_every_json_value_encodes_as_flagd_encodes_it(value: Any) -> None:
    assert encode(value) == flagd_bytes(value)


@given(st.lists(st.integers() | st.text(max_size=3), max_size=3).map(tuple))
def test_tuples_encode_as_arrays(value: tuple[Any, ...]) -> None:
    assert encode(value) == flagd_bytes(value)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 8, 30, 15, 250, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_aware_datetimes_encode_as_tagged_text(moment: datetime) -> None:
    assert encode(moment) == flagd_bytes(moment)


@pytest.mark.parametrize("value", [datetime(2026, 11, 27), "\ud800", {"a": object()}])
def test_values_flagd_cannot_encode_bucket_nowhere(value: Any) -> None:
    with pytest.raises(Exception):  # noqa: B017 (cbor2 raises its own encode errors)
        flagd_bytes(value)
    with pytest.raises(UnencodableError):
        encode(value)
    assert hash_position(value) is None


def test_a_value_containing_itself_buckets_nowhere() -> None:
    looping: dict[str, Any] = {}
    looping["self"] = looping
    assert hash_position(looping) is None
