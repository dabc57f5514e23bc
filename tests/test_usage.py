"""Usage batches are validated row by row before anything is stored; each problem names its row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from cohorts.errors import InvalidUsage
from cohorts.usage import MAX_BATCH_ROWS, UsageBatch

NOW = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def first_error(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as raised:
        UsageBatch.model_validate(document)
    return str(raised.value.errors()[0]["msg"])


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"targetingKey": "  "}, "blank"),
        ({"targetingKey": "k" * 257}, "at most 256 characters"),
        (
            {"targetingKey": "u", "metrics": {"Active Days": 3}},
            "'Active Days' is not a metric name",
        ),
        ({"targetingKey": "u", "metrics": {"orders_90d": True}}, "True is not a number"),
        ({"targetingKey": "u", "metrics": {"orders_90d": "3"}}, "'3' is not a number"),
        ({"targetingKey": "u", "metrics": {"orders_90d": float("nan")}}, "not a finite number"),
        ({"targetingKey": "u", "lastSeenAt": "2026-03-01T10:00:00"}, "give a time zone"),
        ({"targetingKey": "u", "lastSeenAt": "2999-01-01T00:00:00Z"}, "is in the future"),
        ({"targetingKey": "u", "attributes": {"targetingKey": "v"}}, "not an attribute"),
        ({"targetingKey": "u", "attributes": ["plan"]}, "valid dictionary"),
        ({"targetingKey": "u", "seenAt": "2026-03-01T10:00:00Z"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_usage_record_is_refused_with_what_is_wrong(row: dict[str, Any], says: str) -> None:
    assert says in first_error({"rows": [row]})


def test_a_batch_holds_1_to_10000_rows() -> None:
    assert "1 to 10,000 rows, not 0" in first_error({"rows": []})
    too_many = [{"targetingKey": f"u{number}"} for number in range(MAX_BATCH_ROWS + 1)]
    assert "split the upload" in first_error({"rows": too_many})


def test_a_batch_names_each_row_that_repeats_a_user() -> None:
    rows = [{"targetingKey": key} for key in ("a", "b", "a", "c", "b")]
    with pytest.raises(InvalidUsage) as raised:
        UsageBatch.model_validate({"rows": rows})
    assert [problem.field for problem in raised.value.problems] == [
        "rows[2].targetingKey",
        "rows[4].targetingKey",
    ]
    assert "'a' is already in rows[0]" in raised.value.problems[0].message


def test_usage_records_take_python_names_too() -> None:
    batch = UsageBatch.model_validate({"rows": [{"targeting_key": "u", "last_seen_at": NOW}]})
    assert (batch.rows[0].targeting_key, batch.rows[0].last_seen_at) == ("u", NOW)
