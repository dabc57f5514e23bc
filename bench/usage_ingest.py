"""Usage ingest speed through `CohortStore.ingest_usage`, on SQLite and on PostgreSQL.

Each database gets 10,000-row batches (the API's largest), first as new users, then again as updates
of the same users, with 1 and with 3 metrics a row. PostgreSQL is the server at
$RINGMASTER_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432), in a throwaway database dropped
afterwards. Run: `python -m bench.usage_ingest`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from cohorts.db import make_engine, upgrade
from cohorts.store import CohortStore
from cohorts.usage import UsageBatch

ADMIN_URL = os.environ.get("RINGMASTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{Path(folder) / 'bench.db'}"


@contextmanager
def postgres_database() -> Iterator[str]:
    admin = make_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"ringmaster_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def batch(start: int, rows: int, metric_count: int, now: datetime) -> UsageBatch:
    metric_names = ["active_days_30d", "sessions_30d", "orders_90d"][:metric_count]
    return UsageBatch.model_validate({"rows": [
        {"targetingKey": f"user-{number}", "metrics": {name: number % 31 for name in metric_names},
         "lastSeenAt": (now - timedelta(hours=number % 200)).isoformat(), "attributes": {"plan": "pro"}}
        for number in range(start, start + rows)
    ]})


def measure(url: str, batches: int, metric_count: int) -> tuple[float, float]:
    """Median seconds per 10,000-row batch: inserting new users, then updating them."""
    upgrade(url)
    engine = make_engine(url)
    store = CohortStore(engine)
    now = datetime.now(UTC)
    prepared = [batch(index * 10_000, 10_000, metric_count, now) for index in range(batches)]
    timings: dict[str, list[float]] = {"insert": [], "update": []}
    for phase in ("insert", "update"):
        for rows in prepared:
            started = time.perf_counter()
            store.ingest_usage(rows, "bench")
            timings[phase].append(time.perf_counter() - started)
    engine.dispose()
    return statistics.median(timings["insert"]), statistics.median(timings["update"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=5, help="10,000-row batches per phase")
    arguments = parser.parse_args()
    print(f"CohortStore.ingest_usage, median of {arguments.batches} batches of 10,000 rows")
    print(f"{'database':<12}{'metrics/row':>12}{'new users':>16}{'updates':>16}")
    for label, database in (("SQLite", sqlite_database), ("PostgreSQL", postgres_database)):
        for metric_count in (1, 3):
            with database() as url:
                insert_s, update_s = measure(url, arguments.batches, metric_count)
            print(f"{label:<12}{metric_count:>12}{insert_s * 1000:>12.0f} ms{update_s * 1000:>13.0f} ms"
                  f"   ({10_000 / insert_s:,.0f} and {10_000 / update_s:,.0f} rows/s)")


if __name__ == "__main__":
    main()
