"""What the CLI prints: `-o json|yaml` on every command that prints data, the rollout tables, and the live
board (rollout/board.py), drawn from hand-built snapshots and watching a real rollout to its end; and the
columns `kubectl get rollouts` shows."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from rich.console import Console, RenderableType
from rich.style import Style
from typer.testing import CliRunner

from cohorts.db import make_engine
from rollout.api.rollouts import RolloutDetail, summary
from rollout.board import (
    BoardSnapshot,
    render_board,
    rollout_detail,
    rollout_table,
    settled,
    take_snapshot,
    watch,
)
from rollout.cli import app
from rollout.client import ClientError, RingmasterClient
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.controller.status import Condition, GateResult, GateStatus, Pin, RingRecord, RolloutStatus
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import CANARY_RINGS, controller_thread, rollout, statefulset, wait_for, wait_ready
from tests.test_cli import (
    REPOSITORY,
    RINGMASTER,
    cli_environment,
    free_port,
    run,
    serving,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
REVISION = "3f9a0c1d2e"


# Hand-built rollouts, shaped exactly as GET /api/v1/rollouts/{namespace}/{name} answers


def detail(status: RolloutStatus | None, *, name: str = "web", rings: Sequence[str] = CANARY_RINGS,
           history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    body = rollout(name, "web", flag=f"{name}-v2", bakes=("5m", "10m", "1h", "0s"))
    body["metadata"] |= {"namespace": "shop", "uid": "uid-1", "creationTimestamp": (NOW - timedelta(minutes=7))
                         .isoformat()}
    body["spec"]["rings"] = [ring for ring in body["spec"]["rings"] if ring["name"] in rings]
    if status is not None:
        body["status"] = status.to_wire()
    view = summary(body, NOW)
    answer = RolloutDetail(**view.model_dump(), uid="uid-1", generation=1, pending_request=None, spec=body["spec"],
                           status=body.get("status") or {}, history=list(history))
    shown: dict[str, Any] = answer.model_dump(mode="json", by_alias=True)
    return shown


def pin() -> Pin:
    return Pin(cohort_set="default", version=1, epoch=0, source="configured",
               cumulative_shares=[5.0, 20.0, 90.0, 100.0], target_replicas=10, replicas=[1, 2, 9, 10])


def record(ring: str, *, promoted: bool = False, outcome: str | None = None) -> RingRecord:
    return RingRecord(ring=ring, revision=REVISION, started_at=NOW, ready_at=NOW,
                      promoted_at=NOW if promoted else None, outcome=outcome or ("promoted" if promoted else None))


def gate(name: str, phase: str, verdict: str, values: dict[str, float]) -> GateStatus:
    return GateStatus.model_validate({
        "name": name, "kind": "threshold", "ring": "early-adopter", "phase": phase, "measurements": 3,
        "passed": 2, "nextAt": NOW + timedelta(minutes=1),
        "last": GateResult(at=NOW, verdict=verdict, values=values, threshold="value <= 0.01", message="")})


def baking_early_adopter(**changes: Any) -> RolloutStatus:
    """Ring 2 of 4 baking for another 4m12s; canary promoted; 8 old and 2 new of 10 ready; two gates."""
    status = RolloutStatus(
        phase="Progressing", track="Progressing", message="ring early-adopter is up; baking", revision=REVISION,
        new_stateful_set=f"web-{REVISION}", stable_stateful_set="web", pin=pin(), ring_index=1,
        current_ring="early-adopter", step="Baking", promoted_rings=["canary", "early-adopter"],
        bake_until=NOW + timedelta(minutes=4, seconds=12), old_ready=8, new_ready=2,
        history=[record("canary", promoted=True), record("early-adopter")],
        gates=[gate("error-ratio", "Running", "Passed", {"value": 0.002}),
               gate("latency-p99", "Held", "TooFewSamples", {"value": 0.41, "samples": 12})],
        conditions=[Condition(type="Available", status="True", reason="CapacityReady",
                              message="8 old + 2 new ready of 10", last_transition_time=NOW)],
    )
    return status.model_copy(update=changes)


def rolled_back() -> RolloutStatus:
    return RolloutStatus(
        phase="RolledBack", track="RolledBack", message="rolled back: gate error-ratio failed", revision=REVISION,
        stable_stateful_set="web", pin=pin(), ring_index=1, current_ring="early-adopter", step="Done",
        rollback_reason="gate error-ratio failed", old_ready=10, new_ready=0,
        history=[record("canary", promoted=True), record("early-adopter", outcome="rolled back")])


def pulled_cord() -> dict[str, Any]:
    return {"pulled": True, "active": [{
        "id": 7, "at": (NOW - timedelta(minutes=3)).isoformat(), "scope": {"kind": "namespace", "namespace": "shop"},
        "reason": "checkout errors are up", "actor": "paula", "via": "cli", "active": True, "release": None}]}


RELEASED: dict[str, Any] = {"pulled": False, "active": []}


def text_of(renderable: RenderableType, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def styles_of(renderable: RenderableType, word: str, width: int = 160) -> list[Style]:
    """The styles the word is drawn in, wherever it appears."""
    console = Console(width=width, file=io.StringIO(), color_system="truecolor")
    return [segment.style or Style() for segment in console.render(renderable)
            if word in segment.text and not segment.control]


def lines_with(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


# The board


def test_a_pulled_cord_is_a_red_banner_saying_who_pulled_it_over_what_and_why() -> None:
    halted = detail(baking_early_adopter(phase="Halted", bake_until=None, bake_remaining_seconds=252.0))
    board = render_board(BoardSnapshot([halted], {}, pulled_cord(), NOW))
    shown = text_of(board)
    assert shown.index("ANDON CORD PULLED") < shown.index("shop/web")
    [banner] = lines_with(shown, "checkout errors are up")
    assert "paula" in banner and "namespace shop" in banner and "3m ago" in banner
    assert all(style.bgcolor is not None and style.bgcolor.name == "red" for style in styles_of(board, "paula"))
    assert "4m12s left (halted)" in shown  # the bake stands still while halted


def test_a_released_cord_is_a_green_line() -> None:
    board = render_board(BoardSnapshot([], {}, RELEASED, NOW))
    assert "cord released" in text_of(board) and "no rollouts" in text_of(board)
    assert all(style.color is not None and style.color.name == "green" for style in styles_of(board, "released"))


def test_the_ring_progress_marks_promoted_current_and_pending_rings_with_the_bake_left() -> None:
    shown = text_of(render_board(BoardSnapshot([detail(baking_early_adopter())], {}, RELEASED, NOW)))
    [rings] = lines_with(shown, "▶")
    assert "▮▮▯▯ 2/4" in rings
    assert rings.index("✔ canary") < rings.index("▶ early-adopter (baking, 4m12s left)") < rings.index(
        "· stable") < rings.index("· laggard")
    [old] = lines_with(shown, "old ")
    [new] = lines_with(shown, "new ")
    assert "8/10 ready" in old and "2/10 ready" in new
    assert old.count("█") == 16 and new.count("█") == 4  # bars of 20 cells
    [flag] = lines_with(shown, "flag ")
    assert "web-v2 on for canary, early-adopter" in flag


def test_the_gate_verdicts_of_the_current_ring_show_coloured_with_their_values() -> None:
    snapshot = BoardSnapshot([detail(baking_early_adopter())], {}, RELEASED, NOW)
    board = render_board(snapshot)
    shown = text_of(board)
    [passing] = lines_with(shown, "error-ratio")
    [held] = lines_with(shown, "latency-p99")
    assert "Passed value=0.002" in passing and "TooFewSamples value=0.41 samples=12" in held
    assert {style.color.name for style in styles_of(board, "Passed") if style.color} == {"green"}
    # The gates answer, when read, is what the board shows.
    failing = {"shop/web": {"gates": [gate("error-ratio", "Failed", "Failed", {"value": 0.09})
                                      .model_dump(mode="json", by_alias=True)]}}
    shown = text_of(render_board(BoardSnapshot(snapshot.rollouts, failing, RELEASED, NOW)))
    assert "error-ratio Failed value=0.09" in shown and "latency-p99" not in shown


def test_a_snapshot_the_server_could_not_give_shows_the_error_instead_of_failing() -> None:
    shown = text_of(render_board(BoardSnapshot([], {}, None, NOW, error="cannot reach Ringmaster at :8080")))
    assert "cannot read Ringmaster" in shown and "cannot reach Ringmaster at :8080" in shown
    assert "andon cord: not read" in shown and "no rollouts" not in shown
    kept = text_of(render_board(BoardSnapshot([detail(baking_early_adopter())], {}, RELEASED, NOW, error="503")))
    assert "503" in kept and "shop/web" in kept


def test_a_rolled_back_rollout_marks_the_ring_it_was_rolled_back_in_and_has_the_flag_off() -> None:
    shown = text_of(render_board(BoardSnapshot([detail(rolled_back())], {}, RELEASED, NOW)))
    [rings] = lines_with(shown, "✖")
    assert "▯▯▯▯ 0/4" in rings and "✔ canary" in rings and "✖ early-adopter" in rings
    assert "off for every ring" in shown and "10/10 ready" in shown


def test_a_phase_has_one_colour_in_the_table_the_detail_and_the_board() -> None:
    for status, phase, colour, bold in ((baking_early_adopter(), "Progressing", "blue", False),
                                        (baking_early_adopter(phase="Halted"), "Halted", "red", True),
                                        (baking_early_adopter(phase="Paused"), "Paused", "yellow", False),
                                        (rolled_back(), "RolledBack", "red", False)):
        shown = detail(status)
        for renderable in (rollout_table([shown]), rollout_detail(shown, NOW),
                           render_board(BoardSnapshot([shown], {}, RELEASED, NOW))):
            styles = [style for style in styles_of(renderable, phase) if style.color is not None]
            assert styles, f"{phase} is not drawn"
            assert {(style.color.name, bool(style.bold)) for style in styles if style.color} == {(colour, bold)}
    awaiting = detail(baking_early_adopter(step="AwaitingEvidence", bake_until=None))
    assert {style.color.name for style in styles_of(rollout_detail(awaiting, NOW), "AwaitingEvidence")
            if style.color} == {"yellow"}


def test_the_rollout_table_shows_progress_replicas_against_the_target_the_flag_rings_and_a_cut_message() -> None:
    long_message = "ring early-adopter is up; baking until 2025-05-01T12:04:12+00:00; gates holding: " + "x" * 80
    items = [detail(baking_early_adopter(message=long_message)), detail(None, name="api")]
    shown = text_of(rollout_table(items), width=220)
    [header] = lines_with(shown, "NAMESPACE")
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "RING", "PROGRESS", "OLD", "NEW", "TARGET", "FLAG", "ON",
                              "AGE", "MESSAGE"]
    [web] = lines_with(shown, " web ")
    assert web.split()[:11] == ["shop", "web", "Progressing", "early-adopter", "▮▮▯▯", "2/4", "8", "2", "10",
                                "canary,", "early-adopter"]
    assert web.split()[11] == "7m" and "…" in web and "x" * 80 not in web
    [fresh] = lines_with(shown, " api ")
    assert fresh.split()[:9] == ["shop", "api", "-", "-", "▯▯▯▯", "0/4", "0", "0", "-"]


def test_the_rollout_detail_shows_each_rings_state_the_gates_conditions_and_the_recent_history() -> None:
    history = [{"at": (NOW + timedelta(seconds=number)).isoformat(), "rolloutUid": "uid-1", "sequence": number,
                "reason": f"Reason{number}", "type": "Normal", "revision": REVISION, "ring": "canary",
                "message": f"transition [{number}]"} for number in range(14)]
    shown = text_of(rollout_detail(detail(baking_early_adopter(), history=history), NOW))
    assert "shop/web  Progressing  ring early-adopter (2 of 4)  revision 3f9a0c1d2e  age 7m" in shown
    assert "8 old + 2 new ready of 10" in shown and "Baking  bake 4m12s left" in shown
    rows = {line.split()[1]: line.split() for line in shown.splitlines()
            if line.split()[:1] in (["✔"], ["▶"], ["·"])}
    assert rows["canary"][2:4] == ["promoted", "on"] and rows["canary"][4:7] == ["1", "5%", "5m"]
    assert rows["early-adopter"][2:6] == ["baking,", "4m12s", "left", "on"]
    assert rows["stable"][2:7] == ["pending", "off", "9", "90%", "1h"]
    [held] = lines_with(shown, "latency-p99")
    assert held.split()[:5] == ["latency-p99", "threshold", "Held", "3", "TooFewSamples"]
    assert "value=0.41" in held and "samples=12" in held and "value <= 0.01" in held
    assert "CapacityReady" in shown
    assert "history (latest 10 of 14)" in shown and "transition [13]" in shown and "Reason3 " not in shown


@dataclass
class ScriptedClient:
    """Answers the board's reads; each read of the rollout takes the script's next step (an exception is raised)."""

    script: list[dict[str, Any] | BaseException]
    reads: int = 0

    def list_rollouts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [{"namespace": "shop", "name": "web"}]

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        step = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        if isinstance(step, BaseException):
            raise step
        return step

    def rollout_gates(self, namespace: str, name: str, limit: int | None = None) -> dict[str, Any]:
        return {"gates": []}

    def andon_status(self) -> dict[str, Any]:
        return RELEASED


def watched(script: list[dict[str, Any] | BaseException]) -> tuple[BoardSnapshot, ScriptedClient, str]:
    scripted = ScriptedClient(script)
    out = io.StringIO()
    final = watch(cast(RingmasterClient, scripted), None, "shop", 0.0, until=settled,
                  console=Console(file=out, width=160))
    return final, scripted, out.getvalue()


def test_watch_redraws_until_every_rollout_has_settled_and_returns_the_last_snapshot() -> None:
    done = detail(baking_early_adopter(phase="Succeeded", track="Succeeded", promoted_rings=list(CANARY_RINGS),
                                       current_ring=None, step="Done", bake_until=None, old_ready=0, new_ready=10))
    final, scripted, drawn = watched([detail(baking_early_adopter()), ClientError("502 the API server is gone"),
                                      detail(baking_early_adopter()), done])
    assert scripted.reads == 4 and settled(final) and final.rollouts[0]["phase"] == "Succeeded"
    assert "Succeeded" in drawn and "▮▮▮▮ 4/4" in drawn


def test_a_failed_read_keeps_the_last_rollouts_on_the_board_and_ctrl_c_ends_the_watch() -> None:
    final, scripted, _ = watched([detail(baking_early_adopter()), ClientError("502 the API server is gone"),
                                  KeyboardInterrupt()])
    assert scripted.reads == 3 and not settled(final)
    assert final.error == "502 the API server is gone" and final.rollouts[0]["phase"] == "Progressing"


# Against a real `ringmaster serve` reaching the local control plane


@dataclass(frozen=True)
class World:
    environment: dict[str, str]
    namespace: str
    kube: Any
    cluster: LocalCluster

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.environment['RINGMASTER_DATA_DIR']}/ringmaster.db"


def create_rollout(kube: Any, namespace: str, body: dict[str, Any], status: RolloutStatus | None = None) -> None:
    rollouts = client.CustomObjectsApi(kube)
    created = rollouts.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    if status is not None:
        rollouts.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"],
                                                         {**created, "status": status.to_wire()})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, local_cluster: LocalCluster) -> Iterator[World]:
    """`ringmaster serve` on the local control plane, a namespace of its own with a rollout baking ring
    early-adopter (status written by hand), one that lists no rings, and a flag."""
    data_dir = tmp_path_factory.mktemp("ringmaster-data")
    port = free_port()
    environment = cli_environment(data_dir, port, kubeconfig=local_cluster.kubeconfig)
    namespace = f"t-{secrets.token_hex(4)}"
    with local_cluster.api_client() as kube:
        install_crd(kube)
        core = client.CoreV1Api(kube)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=namespace, labels={"ringmaster.dev/test": "true"})))
        create_rollout(kube, namespace, rollout("web", "web", flag="web-v2", bakes=("5m", "10m", "1h", "0s")),
                       baking_early_adopter())
        everything = rollout("api", "api", flag="api-v2")
        del everything["spec"]["rings"]
        create_rollout(kube, namespace, everything)
        try:
            with serving(environment, port, data_dir / "serve.log"):
                run(environment, "flag", "set", "new-checkout", "--type", "boolean", "--variant", "on=true",
                    "--variant", "off=false", "--default", "off", "--rings", "default", "--ring", "canary=on")
                yield World(environment, namespace, kube, local_cluster)
        finally:
            core.delete_namespace(namespace)


def cli(world: World, *arguments: str) -> str:
    """The command run in this process (faster than a new one), its standard output; it must succeed."""
    result = CliRunner().invoke(app, list(arguments), env=world.environment)
    assert result.exit_code == 0, f"ringmaster {' '.join(arguments)}: {result.output}{result.stderr}"
    return result.stdout


VOLATILE = {"ageSeconds"}  # it may tick over between two reads


def steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: steady(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [steady(item) for item in value]
    return value


DATA_COMMANDS: dict[str, tuple[list[str], bool]] = {
    # name: (arguments, whether the older --json is accepted too)
    "cohort list": (["cohort", "list"], True),
    "cohort get": (["cohort", "get", "default"], False),
    "cohort explain": (["cohort", "explain", "ana", "--attr", "team=staff"], True),
    "cohort estimate": (["cohort", "estimate"], True),
    "cohort flagd": (["cohort", "flagd"], False),
    "cohort audit": (["cohort", "audit"], True),
    "flag list": (["flag", "list"], True),
    "flag get": (["flag", "get", "new-checkout"], False),
    "rollout list": (["rollout", "list", "-n", "{namespace}"], True),
    "rollout get": (["rollout", "get", "{namespace}/web"], True),
    "rollout gates": (["rollout", "gates", "{namespace}/web"], True),
    "token list": (["token", "list"], True),
    "andon status": (["andon", "status", "--history", "5"], True),
    "localcluster status": (["localcluster", "status", "--root", "{root}"], True),
    "db current": (["db", "current"], True),
}


@pytest.mark.parametrize("command", list(DATA_COMMANDS))
def test_every_data_command_prints_the_same_data_as_json_and_as_yaml(world: World, command: str) -> None:
    template, legacy = DATA_COMMANDS[command]
    arguments = [part.format(namespace=world.namespace, root=world.cluster.root) for part in template]
    as_json = json.loads(cli(world, *arguments, "-o", "json"))
    as_yaml = yaml.safe_load(cli(world, *arguments, "--output", "yaml"))
    assert as_json, f"{command} printed no data"
    assert steady(as_yaml) == steady(as_json)
    if legacy:
        assert steady(json.loads(cli(world, *arguments, "--json"))) == steady(as_json)


def test_a_pull_and_its_release_print_as_yaml_and_json_too(world: World) -> None:
    pulled = yaml.safe_load(cli(world, "andon", "pull", "--reason", "checkout errors up", "-n", world.namespace,
                                "-o", "yaml"))
    assert (pulled["actor"], pulled["scope"], pulled["active"]) == (
        "ana", {"kind": "namespace", "namespace": world.namespace, "rollout": None}, True)
    released = json.loads(cli(world, "andon", "release", str(pulled["id"]), "--reason", "a false alarm",
                              "-o", "json"))
    assert (released["id"], released["active"], released["release"]["reason"]) == (
        pulled["id"], False, "a false alarm")


def test_the_data_is_what_the_table_shows(world: World) -> None:
    [listed] = [item for item in json.loads(cli(world, "rollout", "list", "-n", world.namespace, "-o", "json"))
                if item["name"] == "web"]
    assert (listed["phase"], listed["step"], listed["rings"], listed["promotedRings"], listed["targetReplicas"]) == (
        "Progressing", "Baking", list(CANARY_RINGS), ["canary", "early-adopter"], 10)
    # A rollout that lists no rings goes through every ring of its cohort set: the API names them.
    assert json.loads(cli(world, "rollout", "get", f"{world.namespace}/api", "-o", "json"))["rings"] == list(
        CANARY_RINGS)
    ready = yaml.safe_load(cli(world, "localcluster", "status", "--root", str(world.cluster.root), "-o", "yaml"))
    assert ready["apiReady"] is True and "kube-apiserver" in ready["running"]
    table = run(world.environment, "rollout", "list", "-n", world.namespace).stdout
    [web] = lines_with(table, " web ")
    assert web.split()[:11] == [world.namespace, "web", "Progressing", "early-adopter", "▮▮▯▯", "2/4", "8", "2",
                                "10", "canary,", "early-adopter"]
    shown = run(world.environment, "rollout", "get", f"{world.namespace}/web").stdout
    assert "▶  early-adopter" in shown and "8 old + 2 new ready of 10" in shown and "TooFewSamples" in shown
    refused = run(world.environment, "rollout", "list", "--watch", "-o", "json", check=False)
    assert refused.returncode == 1 and "--watch draws a live board" in refused.stderr


def kubectl_get(world: World, namespace: str, *arguments: str) -> list[list[str]]:
    done = subprocess.run(["kubectl", "--kubeconfig", str(world.cluster.kubeconfig), "--namespace", namespace,
                           "get", "rollouts", *arguments], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()]


def test_kubectl_get_rollouts_shows_step_target_and_the_rings_with_the_flag_on(world: World) -> None:
    header, *rows = kubectl_get(world, world.namespace)
    assert header == ["NAME", "PHASE", "RING", "STEP", "OLD", "NEW", "TARGET", "FLAG-ON", "AGE"]
    by_name = {row[0]: row for row in rows}
    assert by_name["web"][:8] == ["web", "Progressing", "early-adopter", "Baking", "8", "2", "10",
                                  '["canary","early-adopter"]']
    assert by_name["api"][:1] == ["api"] and len(by_name["api"]) == 2  # no status yet: blank cells, then the age
    header, *rows = kubectl_get(world, world.namespace, "web", "-o", "wide")
    assert header == ["NAME", "PHASE", "RING", "STEP", "OLD", "NEW", "TARGET", "FLAG-ON", "FLAG", "REVISION",
                      "MESSAGE", "AGE"]
    assert rows[0][8:10] == ["web-v2", REVISION]


@pytest.fixture
def live(world: World, namespace: str) -> Iterator[str]:
    """A controller in this process on a namespace of its own, with the sample StatefulSet `web` (3 replicas)
    ready; it writes to the database `ringmaster serve` reads."""
    engine = make_engine(world.database_url)
    with controller_thread(world.kube, engine, namespace, lease_duration_s=4, renew_deadline_s=3,
                           retry_period_s=0.5, workers=2):
        client.AppsV1Api(world.kube).create_namespaced_stateful_set(
            namespace, statefulset("web", 3, "registry.example.com/web:1.0.0"))
        wait_ready(world.kube, namespace, "web", 3)
        yield namespace
    engine.dispose()


def test_get_watch_follows_a_real_rollout_ring_by_ring_until_it_succeeds(world: World, live: str) -> None:
    create_rollout(world.kube, live, rollout("web", "web", flag=f"{live}-web-v2", bakes=("2s", "2s", "0s", "0s")))
    watcher = subprocess.Popen([*RINGMASTER, "rollout", "get", f"{live}/web", "--watch", "--interval", "0.3"],
                               env=world.environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPOSITORY)
    api = RingmasterClient(world.environment["RINGMASTER_SERVER"])
    try:
        seen: list[BoardSnapshot] = []

        def progressing() -> bool:
            seen.append(take_snapshot(api, [(live, "web")]))
            return seen[-1].error is None and seen[-1].rollouts[0]["phase"] == "Progressing"

        wait_for("a snapshot of the rollout progressing", progressing, 60, poll_s=0.2)
        moving = seen[-1]
        assert moving.andon == RELEASED and moving.rollouts[0]["rings"] == list(CANARY_RINGS)
        assert moving.rollouts[0]["targetReplicas"] == 3 and f"{live}/web" in moving.gates
        stdout, stderr = watcher.communicate(timeout=120)
    finally:
        api.close()
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, stdout + stderr
    assert "Succeeded" in stdout and "▮▮▮▮ 4/4" in stdout and "3/3 ready" in stdout
    [rings] = lines_with(stdout, "✔ laggard")
    assert all(f"✔ {ring}" in rings for ring in CANARY_RINGS)
    assert "cord released" in stdout
    _, row = kubectl_get(world, live)
    # A Succeeded rollout is in no ring: kubectl leaves the cell blank.
    assert row[:7] == ["web", "Succeeded", "Done", "0", "3", "3", '["canary","early-adopter","stable","laggard"]']
