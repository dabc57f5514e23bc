"""How the database is found and reached: the data folder, URLs, SQLite connection settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from cohorts.db import data_dir, database_url, make_engine


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ringmaster.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() > 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "given",
    ["postgresql://ringmaster@db:5432/ringmaster", "postgres://ringmaster@db:5432/ringmaster"],
)
def test_postgresql_urls_are_driven_by_psycopg_3(given: str) -> None:
    engine = make_engine(given)
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.url.render_as_string() == "postgresql+psycopg://ringmaster@db:5432/ringmaster"


def test_without_configuration_the_database_is_a_sqlite_file_in_the_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RINGMASTER_DATABASE_URL", raising=False)
    monkeypatch.setenv("RINGMASTER_DATA_DIR", str(tmp_path / "state"))
    assert not (tmp_path / "state").exists()
    assert database_url() == f"sqlite:///{tmp_path / 'state' / 'ringmaster.db'}"
    assert data_dir().is_dir()

    monkeypatch.setenv("RINGMASTER_DATABASE_URL", "postgresql://db/ringmaster")
    assert database_url() == "postgresql://db/ringmaster"
