"""The cohort store on SQLite and PostgreSQL: versions, opt choices, usage, compiling, audit."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import delete, event, func, select

from cohorts.assign import UsageQuery, assign
from cohorts.errors import (
    CohortSetExists,
    CohortSetNotFound,
    InvalidCohortSet,
    MaterializationLimitExceeded,
    OptNotOffered,
    VersionConflict,
)
from cohorts.matchers import MatchKeys
from cohorts.spec import (
    AllOf,
    AnyOf,
    CohortSetSpec,
    SeenCondition,
    UsageCondition,
    parse_cohort_set,
)
from cohorts.store import AuditRecord, CohortStore
from cohorts.tables import UsageMetricRow, UsageUserRow
from cohorts.usage import MAX_BATCH_ROWS, UsageBatch

NOW = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def web_spec(**changes: Any) -> CohortSetSpec:
    document: dict[str, Any] = {
        "name": "web",
        "rings": ["canary", "early-adopter", "stable", "laggard"],
        "default_ring": "stable",
        "opt_in_ring": "early-adopter",
        "opt_out_ring": "laggard",
        "rules": [
            {
                "name": "regulars",
                "ring": "stable",
                "when": {
                    "all": [
                        {"metric": "active_days_30d", "op": "gte", "value": 20},
                        {"seen_within": "7d"},
                    ]
                },
            }
        ],
        "split": {"shares": {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10}},
    }
    document.update(changes)
    return parse_cohort_set(document)


def usage(*rows: dict[str, Any]) -> UsageBatch:
    return UsageBatch.model_validate({"rows": list(rows)})


def seen(days_ago: float, now: datetime = NOW) -> str:
    return (now - timedelta(days=days_ago)).isoformat()


def actions(records: list[AuditRecord]) -> list[tuple[str, str, str]]:
    return [(record.action, record.subject, record.actor) for record in records]


def clocked(store: CohortStore, now: datetime = NOW, **options: Any) -> CohortStore:
    """The same database, with a store whose clock stands still."""
    return CohortStore(store.engine, clock=lambda: now, **options)


# Cohort sets and their versions


def test_creating_a_set_stores_version_1_with_who_made_it_and_why(store: CohortStore) -> None:
    created = clocked(store).create_set(web_spec(), "ana@example.com", "first cut")
    assert (created.name, created.version, created.spec) == ("web", 1, web_spec())
    assert (created.created_by, created.comment, created.created_at) == (
        "ana@example.com",
        "first cut",
        NOW,
    )
    assert store.get_set("web") == created


def test_creating_a_set_that_exists_raises_and_records_nothing(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    audit_before = store.audit_log()
    with pytest.raises(CohortSetExists, match="'web' already exists"):
        store.create_set(web_spec(description="again"), "bob")
    assert store.audit_log() == audit_before
    assert store.get_set("web").spec == web_spec()


def test_a_spec_that_does_not_hold_together_is_refused_and_nothing_is_written(
    store: CohortStore,
) -> None:
    broken = web_spec().model_copy(update={"opt_in_ring": "beta"})
    with pytest.raises(InvalidCohortSet, match="'beta' is not one of the rings"):
        store.create_set(broken, "ana")
    store.create_set(web_spec(), "ana")
    with pytest.raises(InvalidCohortSet):
        store.update_set(broken, "ana")
    assert [stored.version for stored in store.list_versions("web")] == [1]
    assert len(store.audit_log(subject="cohort-set/web")) == 1


def test_every_update_makes_a_new_version_and_old_ones_stay_readable(store: CohortStore) -> None:
    first = store.create_set(web_spec(), "ana")
    second = store.update_set(web_spec(default_ring="laggard"), "bob", "laggards by default")
    third = store.update_set(web_spec(description="three"), "cyd")
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert store.get_set("web") == third
    assert store.get_set("web", 1) == first
    assert store.get_set("web", 2) == second
    assert store.list_versions("web") == [first, second, third]
    assert store.get_set("web", 2).comment == "laggards by default"


def test_an_update_identical_to_the_current_spec_still_makes_a_version(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    reapplied = store.update_set(web_spec(), "bob")
    assert (reapplied.version, reapplied.spec, reapplied.created_by) == (2, web_spec(), "bob")


def test_an_update_based_on_a_stale_version_is_refused_and_writes_nothing(
    store: CohortStore,
) -> None:
    store.create_set(web_spec(), "ana")
    store.update_set(web_spec(description="bob's"), "bob", expected_version=1)
    audit_before = store.audit_log()
    with pytest.raises(VersionConflict, match="at version 2, not 1") as raised:
        store.update_set(web_spec(description="cyd's"), "cyd", expected_version=1)
    assert (raised.value.expected, raised.value.current) == (1, 2)
    assert store.get_set("web").spec.description == "bob's"
    assert store.audit_log() == audit_before


def test_list_sets_gives_the_current_version_of_each_set_by_name(store: CohortStore) -> None:
    store.create_set(web_spec(name="web"), "ana")
    store.create_set(web_spec(name="api"), "ana")
    store.update_set(web_spec(name="web", description="v2"), "ana")
    listed = [(stored.name, stored.version) for stored in store.list_sets()]
    assert listed == [("api", 1), ("default", 1), ("web", 2)]


def test_unknown_sets_and_versions_are_not_found(store: CohortStore) -> None:
    with pytest.raises(CohortSetNotFound, match="cohort set 'web' does not exist"):
        store.get_set("web")
    with pytest.raises(CohortSetNotFound, match="version 9 of cohort set 'default'"):
        store.get_set("default", 9)
    calls: list[Callable[[], object]] = [
        lambda: store.update_set(web_spec(), "ana"),
        lambda: store.list_versions("web"),
        lambda: store.opt_choices("web"),
        lambda: store.set_opt("web", "olga", "in", "ana"),
        lambda: store.clear_opt("web", "olga", "ana"),
        lambda: store.compile("web", now=NOW),
    ]
    for call in calls:
        with pytest.raises(CohortSetNotFound):
            call()
    assert len(store.audit_log()) == 1


# Opt-in and opt-out


def test_opt_choices_keep_each_users_latest_choice(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    store.set_opt("web", "olga", "in", "olga")
    store.set_opt("web", "otto", "in", "otto")
    store.set_opt("web", "otto", "out", "otto")
    assert store.opt_choices("web") == {"olga": "in", "otto": "out"}
    assert store.opt_choices("default") == {}


def test_a_choice_the_set_has_no_ring_for_is_refused_and_not_recorded(store: CohortStore) -> None:
    store.create_set(web_spec(opt_out_ring=None), "ana")
    with pytest.raises(OptNotOffered, match="has no optOutRing"):
        store.set_opt("web", "otto", "out", "otto")
    assert store.opt_choices("web") == {}
    assert store.audit_log(subject="cohort-set/web")[0].action == "cohort-set.create"


def test_clearing_an_opt_choice_reports_whether_there_was_one(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    store.set_opt("web", "olga", "in", "olga")
    assert store.clear_opt("web", "olga", "olga") is True
    assert store.clear_opt("web", "olga", "olga") is False
    assert store.opt_choices("web") == {}
    assert [record.action for record in store.audit_log(subject="cohort-set/web")] == [
        "cohort-set.clear-opt",
        "cohort-set.set-opt",
        "cohort-set.create",
    ]


@pytest.mark.parametrize("targeting_key", ["", "   ", "k" * 257, "nul\x00byte"])
def test_opt_choices_refuse_targeting_keys_the_store_cannot_keep(
    store: CohortStore, targeting_key: str
) -> None:
    with pytest.raises(ValidationError):
        store.set_opt("default", targeting_key, "in", "ana")
    assert store.opt_choices("default") == {}


# The audit log


def test_every_change_is_audited_with_its_actor_before_and_after(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    store.update_set(web_spec(default_ring="laggard"), "bob")
    store.set_opt("web", "olga", "in", "olga")
    store.set_opt("web", "olga", "out", "olga")
    store.clear_opt("web", "olga", "support@example.com")
    store.ingest_usage(usage({"targetingKey": "u1", "metrics": {"orders_90d": 3}}), "etl")

    records = store.audit_log()
    assert actions(records) == [
        ("usage.ingest", "usage", "etl"),
        ("cohort-set.clear-opt", "cohort-set/web", "support@example.com"),
        ("cohort-set.set-opt", "cohort-set/web", "olga"),
        ("cohort-set.set-opt", "cohort-set/web", "olga"),
        ("cohort-set.update", "cohort-set/web", "bob"),
        ("cohort-set.create", "cohort-set/web", "ana"),
        ("cohort-set.create", "cohort-set/default", "ringmaster/migration"),
    ]
    changes = [(record.before, record.after) for record in records[:-1]]
    olga_in = {"targetingKey": "olga", "choice": "in"}
    olga_out = {"targetingKey": "olga", "choice": "out"}
    assert changes == [
        (None, {"rows": 1, "metrics": ["orders_90d"]}),
        (olga_out, None),
        (olga_in, olga_out),
        (None, olga_in),
        (web_spec().to_document(), web_spec(default_ring="laggard").to_document()),
        (None, web_spec().to_document()),
    ]


def test_the_audit_log_is_newest_first_by_subject_and_limited(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    for number in range(3):
        store.update_set(web_spec(description=f"v{number + 2}"), "ana")
    store.set_opt("default", "olga", "in", "olga")
    latest_two = store.audit_log(subject="cohort-set/web", limit=2)
    assert [record.after["description"] for record in latest_two if record.after] == ["v4", "v3"]
    assert [record.subject for record in store.audit_log(limit=1)] == ["cohort-set/default"]
    ids = [record.id for record in store.audit_log()]
    assert ids == sorted(ids, reverse=True)


def test_times_are_read_back_aware_and_in_utc(store: CohortStore) -> None:
    berlin_morning = NOW.astimezone(timezone(timedelta(hours=2)))
    clocked(store, berlin_morning).create_set(web_spec(), "ana")
    stored = store.get_set("web")
    [record] = store.audit_log(subject="cohort-set/web")
    for moment in (stored.created_at, record.at):
        assert moment == NOW
        assert moment.utcoffset() == timedelta(0)


# Usage


def stored_metrics(store: CohortStore) -> dict[tuple[str, str], float]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(UsageMetricRow.targeting_key, UsageMetricRow.metric, UsageMetricRow.value)
        )
        return {(key, metric): value for key, metric, value in rows}


def stored_users(store: CohortStore) -> dict[str, tuple[datetime | None, dict[str, Any]]]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(UsageUserRow.targeting_key, UsageUserRow.last_seen_at, UsageUserRow.attributes)
        )
        return {key: (last_seen_at, attributes) for key, last_seen_at, attributes in rows}


def test_ingest_overwrites_the_metrics_given_and_keeps_the_users_others(
    store: CohortStore,
) -> None:
    first = usage(
        {"targetingKey": "u1", "metrics": {"active_days_30d": 3, "orders_90d": 1}},
        {"targetingKey": "u2", "metrics": {"active_days_30d": 9}},
    )
    assert store.ingest_usage(first, "etl") == 2
    assert (
        store.ingest_usage(
            usage({"targetingKey": "u1", "metrics": {"active_days_30d": 4.5}}), "etl"
        )
        == 1
    )
    assert stored_metrics(store) == {
        ("u1", "active_days_30d"): 4.5,
        ("u1", "orders_90d"): 1.0,
        ("u2", "active_days_30d"): 9.0,
    }


def test_ingest_replaces_last_seen_and_attributes_only_when_given(store: CohortStore) -> None:
    store.ingest_usage(
        usage({"targetingKey": "u1", "lastSeenAt": seen(3), "attributes": {"plan": "pro"}}), "etl"
    )
    store.ingest_usage(usage({"targetingKey": "u1", "metrics": {"orders_90d": 2}}), "etl")
    assert stored_users(store) == {"u1": (NOW - timedelta(days=3), {"plan": "pro"})}

    store.ingest_usage(usage({"targetingKey": "u1", "lastSeenAt": seen(1)}), "etl")
    assert stored_users(store) == {"u1": (NOW - timedelta(days=1), {"plan": "pro"})}

    store.ingest_usage(usage({"targetingKey": "u1", "attributes": {"plan": "free"}}), "etl")
    assert stored_users(store) == {"u1": (NOW - timedelta(days=1), {"plan": "free"})}


def test_a_batch_that_fails_in_a_later_chunk_stores_nothing_and_audits_nothing(
    store: CohortStore,
) -> None:
    chunked = clocked(store, ingest_chunk_rows=2)
    batch = usage(
        *({"targetingKey": f"u{number}", "metrics": {"orders_90d": number}} for number in range(5))
    )
    user_upserts = 0

    class ConnectionLost(Exception):
        pass

    def fail_on_second_chunk(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal user_upserts
        if statement.startswith("INSERT INTO usage_users"):
            user_upserts += 1
            if user_upserts == 2:
                raise ConnectionLost

    event.listen(store.engine, "before_cursor_execute", fail_on_second_chunk)
    try:
        with pytest.raises(ConnectionLost):
            chunked.ingest_usage(batch, "etl")
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_on_second_chunk)
    assert user_upserts == 2
    assert stored_users(store) == {} and stored_metrics(store) == {}
    assert [record.subject for record in store.audit_log()] == ["cohort-set/default"]


def test_the_largest_batch_allowed_is_stored_whole(store: CohortStore) -> None:
    batch = usage(
        *(
            {"targetingKey": f"user-{number:05d}", "metrics": {"orders_90d": number % 7}}
            for number in range(MAX_BATCH_ROWS)
        )
    )
    assert store.ingest_usage(batch, "etl") == MAX_BATCH_ROWS
    with store.engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(UsageMetricRow)).scalar_one()
            == MAX_BATCH_ROWS
        )
    assert store.usage_keys(UsageCondition(metric="orders_90d", op="equals", value=6), NOW) == {
        f"user-{number:05d}" for number in range(MAX_BATCH_ROWS) if number % 7 == 6
    }


def test_usage_keys_compare_a_metric_with_a_number(store: CohortStore) -> None:
    store.ingest_usage(
        usage(
            {"targetingKey": "low", "metrics": {"active_days_30d": 5}},
            {"targetingKey": "edge", "metrics": {"active_days_30d": 20}},
            {"targetingKey": "high", "metrics": {"active_days_30d": 28.5}},
            {"targetingKey": "other-metric", "metrics": {"orders_90d": 100}},
        ),
        "etl",
    )

    def keys(op: str, value: float) -> set[str]:
        condition = UsageCondition.model_validate(
            {"metric": "active_days_30d", "op": op, "value": value}
        )
        return set(store.usage_keys(condition, NOW))

    assert keys("equals", 20) == {"edge"}
    assert keys("lt", 20) == {"low"}
    assert keys("lte", 20) == {"low", "edge"}
    assert keys("gt", 20) == {"high"}
    assert keys("gte", 20) == {"edge", "high"}


def test_seen_within_counts_back_from_now_and_includes_the_boundary(store: CohortStore) -> None:
    store.ingest_usage(
        usage(
            {"targetingKey": "today", "lastSeenAt": seen(0)},
            {"targetingKey": "a-week-ago", "lastSeenAt": seen(7)},
            {"targetingKey": "just-over-a-week", "lastSeenAt": seen(7.001)},
            {"targetingKey": "never-seen", "metrics": {"orders_90d": 1}},
        ),
        "etl",
    )
    week = SeenCondition(seen_within="7d")
    assert store.usage_keys(week, NOW) == {"today", "a-week-ago"}
    assert store.usage_keys(week, NOW + timedelta(days=1)) == {"today"}


def test_all_of_intersects_and_any_of_unites(store: CohortStore) -> None:
    store.ingest_usage(
        usage(
            {"targetingKey": "regular", "metrics": {"active_days_30d": 25}, "lastSeenAt": seen(1)},
            {"targetingKey": "lapsed", "metrics": {"active_days_30d": 25}, "lastSeenAt": seen(30)},
            {"targetingKey": "casual", "metrics": {"active_days_30d": 2}, "lastSeenAt": seen(1)},
        ),
        "etl",
    )
    active = UsageCondition(metric="active_days_30d", op="gte", value=20)
    recent = SeenCondition(seen_within="7d")
    assert store.usage_keys(AllOf(all=[active, recent]), NOW) == {"regular"}
    assert store.usage_keys(AnyOf(any=[active, recent]), NOW) == {"regular", "lapsed", "casual"}


def test_usage_questions_need_an_aware_now(store: CohortStore) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        store.usage_keys(SeenCondition(seen_within="1d"), datetime(2026, 3, 2, 9, 30))


METRICS = ["active_days_30d", "orders_90d"]
HALVES = st.integers(-4, 4).map(lambda number: number / 2)
SEEN_SECONDS_AGO = st.none() | st.sampled_from([0, 3599, 3600, 3601, 86_400, 86_401, 604_800])
usage_rows = st.dictionaries(
    keys=st.sampled_from([f"user-{number}" for number in range(10)]),
    values=st.tuples(st.dictionaries(st.sampled_from(METRICS), HALVES), SEEN_SECONDS_AGO),
    max_size=10,
)
leaf_queries: st.SearchStrategy[UsageQuery] = st.one_of(
    st.fixed_dictionaries(
        {
            "metric": st.sampled_from(METRICS),
            "op": st.sampled_from(["equals", "lt", "lte", "gt", "gte"]),
            "value": HALVES,
        }
    ).map(UsageCondition.model_validate),
    st.sampled_from(["1h", "1d", "7d"]).map(lambda duration: SeenCondition(seen_within=duration)),
)
usage_queries: st.SearchStrategy[UsageQuery] = st.recursive(
    leaf_queries,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda all_of: AllOf(all=all_of)),
        st.lists(children, min_size=1, max_size=3).map(lambda any_of: AnyOf(any=any_of)),
    ),
    max_leaves=6,
)
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "equals": operator.eq,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def expected_keys(
    query: Any, rows: dict[str, tuple[dict[str, float], int | None]], now: datetime
) -> set[str]:
    """The same question answered in Python over the rows that were ingested."""
    if isinstance(query, UsageCondition):
        return {
            key
            for key, (metrics, _) in rows.items()
            if query.metric in metrics and COMPARE[query.op](metrics[query.metric], query.value)
        }
    if isinstance(query, SeenCondition):
        return {
            key
            for key, (_, seconds_ago) in rows.items()
            if seconds_ago is not None and seconds_ago <= query.seconds
        }
    if isinstance(query, AllOf):
        return set.intersection(*(expected_keys(child, rows, now) for child in query.all))
    assert isinstance(query, AnyOf)
    return set.union(*(expected_keys(child, rows, now) for child in query.any))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=usage_rows, queries=st.lists(usage_queries, min_size=1, max_size=4))
def test_usage_keys_agree_with_a_python_filter_over_the_same_usage(
    store: CohortStore,
    rows: dict[str, tuple[dict[str, float], int | None]],
    queries: list[UsageQuery],
) -> None:
    now = datetime.now(UTC)
    with store.engine.begin() as connection:
        connection.execute(delete(UsageUserRow))
    if rows:
        store.ingest_usage(
            usage(
                *(
                    {
                        "targetingKey": key,
                        "metrics": metrics,
                        "lastSeenAt": None if ago is None else now - timedelta(seconds=ago),
                    }
                    for key, (metrics, ago) in rows.items()
                )
            ),
            "hypothesis",
        )
    for query in queries:
        assert store.usage_keys(query, now) == expected_keys(query, rows, now), query


def test_the_usage_population_is_every_user_as_an_evaluation_context(store: CohortStore) -> None:
    store.ingest_usage(
        usage(
            *(
                {"targetingKey": f"user-{number}", "attributes": {"team": "staff", "n": number}}
                for number in range(5)
            ),
            {"targetingKey": "bare", "metrics": {"orders_90d": 1}},
        ),
        "etl",
    )
    population: Iterator[dict[str, Any]] = store.usage_population(batch_size=2)
    assert sorted(population, key=lambda context: context["targetingKey"]) == [
        {"targetingKey": "bare"},
        *({"targetingKey": f"user-{number}", "team": "staff", "n": number} for number in range(5)),
    ]


# Compilation


def test_compile_materializes_opt_choices_and_usage_rules_as_of_now(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    store.set_opt("web", "olga", "in", "olga")
    store.set_opt("web", "otto", "out", "otto")
    store.ingest_usage(
        usage(
            {"targetingKey": "regular", "metrics": {"active_days_30d": 25}, "lastSeenAt": seen(1)},
            {"targetingKey": "lapsed", "metrics": {"active_days_30d": 25}, "lastSeenAt": seen(30)},
        ),
        "etl",
    )
    compiled = store.compile("web", now=NOW)
    assert (compiled.version, compiled.compiled_at) == (1, NOW)
    assert (compiled.opted_in, compiled.opted_out) == (frozenset({"olga"}), frozenset({"otto"}))
    match = compiled.rules[0].match
    assert isinstance(match, MatchKeys) and match.keys == {"regular"}

    placed = {
        key: assign(compiled, {"targetingKey": key}, 0) for key in ("olga", "otto", "regular")
    }
    assert (placed["olga"].ring, placed["olga"].kind) == ("early-adopter", "opt-in")
    assert (placed["otto"].ring, placed["otto"].kind) == ("laggard", "opt-out")
    assert (placed["regular"].ring, placed["regular"].rule) == ("stable", "regulars")

    a_week_later = store.compile("web", now=NOW + timedelta(days=7))
    assert a_week_later.rules[0].match == MatchKeys(frozenset(), match.label)


def test_compile_an_old_version_with_todays_opt_choices(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    store.update_set(web_spec(opt_in_ring="canary"), "ana")
    store.set_opt("web", "olga", "in", "olga")
    old = store.compile("web", now=NOW, version=1)
    assert (old.version, old.opt_in_ring, old.opted_in) == (1, "early-adopter", frozenset({"olga"}))
    assert store.compile("web", now=NOW).opt_in_ring == "canary"


def test_compile_refuses_to_materialize_more_keys_than_allowed(store: CohortStore) -> None:
    store.create_set(web_spec(), "ana")
    for key in ("olga", "oleg"):
        store.set_opt("web", key, "in", key)
    with pytest.raises(MaterializationLimitExceeded, match="2 targeting keys"):
        store.compile("web", now=NOW, max_keys=1)
