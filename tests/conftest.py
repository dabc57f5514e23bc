"""Databases for tests: every database test runs on a SQLite file and on the PostgreSQL server.

PostgreSQL tests share one throwaway database per session, `ringmaster_test_<hex>`, created through
the admin URL in $RINGMASTER_TEST_POSTGRES_URL and dropped at the end. Each test gets its schema
wiped and migrated to head, so it starts from what a fresh installation holds.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from cohorts.db import make_engine, upgrade
from cohorts.store import CohortStore
from rollout.localcluster.cluster import LocalCluster, LocalClusterError

TEST_POSTGRES_URL_ENV = "RINGMASTER_TEST_POSTGRES_URL"
DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _admin_engine(admin_url: str) -> Engine:
    # CREATE and DROP DATABASE cannot run inside a transaction.
    return make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this test session, dropped when the session ends."""
    admin_url = os.environ.get(TEST_POSTGRES_URL_ENV, DEFAULT_TEST_POSTGRES_URL)
    admin = _admin_engine(admin_url)
    name = f"ringmaster_test_{secrets.token_hex(6)}"
    unreachable: str | None = None
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        unreachable = str(error.orig)
    if unreachable is not None:
        admin.dispose()
        pytest.fail(
            f"cannot reach PostgreSQL at {make_url(admin_url).render_as_string()} ({unreachable}). "
            f"Start the server with `{START_POSTGRES}`, or point ${TEST_POSTGRES_URL_ENV} at one.",
            pytrace=False,
        )
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # A test that failed may have left a connection open; DROP DATABASE would wait for it.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _wipe_postgres_schema(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database migrated to head: the `default` cohort set and nothing else."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
        _wipe_postgres_schema(url)
    upgrade(url)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[CohortStore]:
    engine = make_engine(database_url)
    yield CohortStore(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local control plane, started once per test session (per xdist worker) in a folder of its own."""
    cluster = LocalCluster(tmp_path_factory.mktemp("localcluster"))
    try:
        cluster.up()
    except LocalClusterError as error:
        pytest.fail(str(error), pytrace=False)
    yield cluster
    cluster.down()


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A namespace of this test's own, deleted (with everything in it) afterwards."""
    from kubernetes import client

    name = f"t-{secrets.token_hex(4)}"
    with local_cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=name, labels={"ringmaster.dev/test": "true"})))
        yield name
        core.delete_namespace(name)
