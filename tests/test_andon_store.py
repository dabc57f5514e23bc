"""The andon cord's record on SQLite and PostgreSQL: pulls, releases, what is active, and a record
that nothing can rewrite: the database refuses UPDATE, DELETE (and TRUNCATE), and no code path asks."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError, OperationalError

from cohorts.db import make_engine, upgrade
from rollout.andon.scope import Scope, check_reason
from rollout.andon.store import AlreadyReleased, AndonStore, PullNotFound, SamePerson
from rollout.andon.watch import CordWatcher
from tests.polling import eventually

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def cord(database_url: str) -> AndonStore:
    return AndonStore(make_engine(database_url))


def test_a_pull_is_active_until_released_and_both_are_in_the_record(cord: AndonStore) -> None:
    assert (cord.active(), cord.marker()) == ([], 0)
    pulled = cord.pull(Scope(namespace="shop"), "  checkout errors up  ", "ana", "cli")
    assert (pulled.reason, pulled.actor, pulled.via, str(pulled.scope)) == (
        "checkout errors up", "ana", "cli", "namespace shop")
    assert [pull.id for pull in cord.active()] == [pulled.id]
    marker = cord.marker()
    released = cord.release(pulled.id, "rolled the config back", "bob")
    assert released.release is not None and released.release.actor == "bob" and not released.active
    assert cord.active() == [] and cord.marker() > marker
    assert [(event.kind, event.pull_id, event.actor) for event in cord.history()] == [
        ("release", pulled.id, "bob"), ("pull", pulled.id, "ana")]


def test_a_pull_is_released_once(cord: AndonStore) -> None:
    pulled = cord.pull(Scope(), "incident 4711", "ana")
    cord.release(pulled.id, "over", "bob")
    with pytest.raises(AlreadyReleased, match="already released by bob"):
        cord.release(pulled.id, "over again", "carl")
    with pytest.raises(PullNotFound):
        cord.release(pulled.id + 100, "what pull?", "bob")


def test_of_releases_racing_for_one_pull_exactly_one_is_recorded(cord: AndonStore) -> None:
    pulled = cord.pull(Scope(), "incident 4712", "ana")
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def release(actor: str) -> None:
        start.wait()
        try:
            cord.release(pulled.id, "go on", actor)
            outcomes.append("released")
        except AlreadyReleased:
            outcomes.append("refused")

    threads = [threading.Thread(target=release, args=(f"releaser-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["released"]
    assert [event.kind for event in cord.history()].count("release") == 1


def test_the_release_by_another_rule_refuses_whoever_pulled(cord: AndonStore) -> None:
    pulled = cord.pull(Scope(), "incident 4713", "ana")
    with pytest.raises(SamePerson, match="requires someone else"):
        cord.release(pulled.id, "all good", "ana", release_by_other=True)
    assert cord.release(pulled.id, "all good", "ana").release is not None  # without the rule she may


@pytest.mark.parametrize("reason", ["", "  ", "ok", "x" * 501])
def test_a_reason_of_3_to_500_characters_is_required(cord: AndonStore, reason: str) -> None:
    with pytest.raises(ValueError, match="3 to 500 characters"):
        cord.pull(Scope(), reason, "ana")
    assert cord.history() == []
    assert check_reason(" why ") == "why"


@pytest.mark.parametrize("raw", [{"kind": "global", "namespace": "x"}, {"kind": "rollout", "namespace": "x"},
                                 {"rollout": "web"}, {"namespace": "Not_A_Name"}, {"kind": "cluster"}])
def test_a_scope_names_what_it_stops_and_no_more(raw: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Scope.model_validate(raw)


def test_scopes_cover_what_they_name() -> None:
    assert Scope().covers("a", "b")
    assert Scope(namespace="a").covers("a", "b") and not Scope(namespace="a").covers("c", "b")
    assert Scope(namespace="a", rollout="b").covers("a", "b") and not Scope(namespace="a", rollout="b").covers("a", "c")


@pytest.mark.parametrize("statement", ["UPDATE andon_events SET reason = 'rewritten'",
                                       "DELETE FROM andon_events"])
def test_the_database_refuses_to_rewrite_the_record(cord: AndonStore, statement: str) -> None:
    cord.pull(Scope(), "incident 4714", "ana")
    with pytest.raises(DatabaseError, match="andon_events is append-only"), cord.engine.begin() as connection:
        connection.execute(text(statement))
    assert [event.reason for event in cord.history()] == ["incident 4714"]


@pytest.mark.postgres
def test_postgresql_refuses_truncate_too(postgres_database_url: str) -> None:
    upgrade(postgres_database_url)
    cord = AndonStore(make_engine(postgres_database_url))
    cord.pull(Scope(), "incident 4715", "ana")
    with pytest.raises(DatabaseError, match="append-only"), cord.engine.begin() as connection:
        connection.execute(text("TRUNCATE andon_events"))
    assert cord.history()


def test_no_code_path_updates_or_deletes_the_record() -> None:
    """Every mention of the table or its model in the product's code, read as Python: none is an
    update or a delete (the triggers are the net; this is the promise)."""
    offending = []
    for path in [*REPOSITORY.glob("rollout/**/*.py"), *REPOSITORY.glob("cohorts/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                arguments = " ".join(ast.unparse(argument) for argument in node.args)
                if ("AndonEventRow" in arguments or "andon_events" in arguments) and any(
                        verb in called.lower() for verb in ("update", "delete", "merge")):
                    offending.append(f"{path.relative_to(REPOSITORY)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "andon_events" in node.value:
                sql = node.value.upper()
                if any(verb in sql for verb in ("UPDATE ANDON_EVENTS", "DELETE FROM ANDON_EVENTS")):
                    offending.append(f"{path.relative_to(REPOSITORY)}:{node.lineno}: {node.value[:60]}")
    assert offending == []
    store_source = (REPOSITORY / "rollout" / "andon" / "store.py").read_text()
    assert "session.delete" not in store_source and ".update(" not in store_source


class FlakyCord(AndonStore):
    """The real store, whose database can be made to fail like an unreachable server (the real outage,
    through a cut TCP proxy to PostgreSQL, is in tests/test_andon_controller.py)."""

    down = False

    def marker(self) -> int:
        if self.down:
            raise OperationalError("SELECT max(id)", {}, ConnectionRefusedError("connection refused"))
        return super().marker()


def test_the_watcher_sees_a_pull_and_counts_an_unreadable_cord_as_pulled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cord.db'}"
    upgrade(url)
    cord = FlakyCord(make_engine(url))
    changes: list[int] = []
    watcher = CordWatcher(cord, on_change=lambda: changes.append(1), poll_s=0.05)
    watcher.start()
    try:
        assert not watcher.view("shop", "web").pulled
        pulled = cord.pull(Scope(namespace="shop"), "incident 4716", "ana")
        eventually(lambda: watcher.view("shop", "web").pulled, timeout_s=5, what="the watcher to see the pull")
        assert not watcher.view("other", "web").pulled
        assert f"incident 4716 (pull {pulled.id} by ana, namespace shop)" == watcher.view("shop", "web").reason
        seen = len(changes)
        cord.down = True
        eventually(lambda: watcher.view("other", "x").cause == "AndonStateUnknown", timeout_s=5,
                   what="an unreadable cord to count as pulled everywhere")
        assert watcher.view("other", "x").pulled and "connection refused" in watcher.view("other", "x").reason
        assert len(changes) == seen + 1  # told once, not at every failed poll
        cord.down = False
        eventually(lambda: not watcher.view("other", "x").pulled, timeout_s=5, what="recovery")
        assert watcher.view("shop", "web").pulled
    finally:
        watcher.stop()
