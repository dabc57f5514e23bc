"""`ringmaster demo`: the story of three releases on the system `ringmaster up` starts.

It opens with who is in which ring (the default cohort set), then:
1. A good release: web 1.0.0 → 2.0.0 goes canary → early-adopter → stable → laggard, each ring
   promoted on its gates (examples/rollout.yaml, examples/slogates.yaml).
2. A bad release: shop 4.2.0 fails 30 % of its requests; a gate catches it in canary and it is rolled
   back, the flag off first (examples/bad-release/).
3. A halted release: web 2.0.0 → 2.1.0 is stopped by an andon pull while it bakes, stays still while
   the cord is pulled, and carries on to the end once the pull is released.

Each act checks its outcome against the rollout's status, the flag and the gate history; the demo
exits 0 only if all three played out as they should. On a terminal the live board (rollout/board.py)
shows every rollout; elsewhere (CI logs) a line is printed for each change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from rich.console import Console

from rollout.board import BoardSnapshot, take_snapshot, watch
from rollout.client import RingmasterClient
from rollout.up import EXAMPLES, LocalSystem, apply_manifests, load_manifests

NAMESPACE = "default"
TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack", "Failed"})
ALL_RINGS = ["canary", "early-adopter", "stable", "laggard"]
ACT_TIMEOUT_S = 240.0
HALT_WATCH_S = 6.0
REFRESH_S = 0.5
HALTED_RELEASE_IMAGE = "registry.example.com/web:2.1.0"
HALTED_RELEASE_FLAG = "web-v2-1"
SAMPLE_USERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ana", {"team": "staff"}), ("user-0042", {}), ("user-0043", {}), ("user-7716", {}),
)


@dataclass(frozen=True)
class Outcome:
    act: str
    played: bool
    summary: str


class Story:
    """The three acts, against a running LocalSystem, told on a console."""

    def __init__(self, system: LocalSystem, console: Console) -> None:
        self.system = system
        self.console = console
        self.client = RingmasterClient(system.server_url, token=system.token)
        self.live = console.is_terminal
        self.first_web_revision: str | None = None

    def play(self) -> list[Outcome]:
        self.rings()
        outcomes: list[Outcome] = []
        for act in (self.good_release, self.bad_release, self.halted_release):
            try:
                outcome = act()
            except DemoFailure as failure:
                outcome = Outcome(failure.act, False, str(failure))
            outcomes.append(outcome)
            mark = "[green]✔[/]" if outcome.played else "[red]✘[/]"
            self.console.print(f"{mark} {outcome.act}: {outcome.summary}", highlight=False, soft_wrap=True)
            if not outcome.played:
                break
        self.client.close()
        return outcomes

    # The acts

    def rings(self) -> None:
        """The cohorts the flag follows: every user lands in one ring, by rule, stickily."""
        self._headline("who is in which ring (cohort set default): what the flags of the releases below follow")
        for key, attributes in SAMPLE_USERS:
            explained = self.client.explain("default", key, attributes)
            shown = ", ".join(f"{name}={value}" for name, value in attributes.items())
            self.console.print(f"  {key:<10} {shown:<14} → {explained['ring']:<14} {explained['reason']}",
                               highlight=False, soft_wrap=True)

    def good_release(self) -> Outcome:
        act = "a good release"
        self._headline("1. a good release: web 1.0.0 → 2.0.0 through all four rings, each promoted on its gates")
        self._apply(EXAMPLES / "slogates.yaml", EXAMPLES / "rollout.yaml")
        last = self._follow(act, ["default/web"], lambda snapshot: _phase(snapshot, "default/web") in TERMINAL_PHASES)
        web = _rollout(last, "default/web")
        if web["phase"] != "Succeeded":
            raise DemoFailure(act, f"web ended {web['phase']}, not Succeeded: {web['message']}")
        if web["promotedRings"] != ALL_RINGS:
            raise DemoFailure(act, f"web succeeded with the flag on for {web['promotedRings']}, not every ring")
        verdicts = {entry["verdict"] for entry in self.client.rollout_gates(NAMESPACE, "web")["history"]}
        if "Passed" not in verdicts or verdicts & {"Failed", "Inconclusive"}:
            raise DemoFailure(act, f"web's gates gave {sorted(verdicts)}; a healthy release should only pass")
        self.first_web_revision = web["revision"]
        return Outcome(act, True, f"web {web['revision']} serves everyone, the flag web-v2 is on for every ring, "
                                  f"gates measured {sorted(verdicts)}")

    def bad_release(self) -> Outcome:
        act = "a bad release"
        self._headline("2. a bad release: shop 4.2.0 fails 30 % of its requests; its canary gate catches it")
        self._apply(EXAMPLES / "bad-release" / "statefulset.yaml")
        self._wait_ready("shop")
        self._apply(EXAMPLES / "bad-release" / "rollout.yaml")
        last = self._follow(act, ["default/shop"],
                            lambda snapshot: _phase(snapshot, "default/shop") in TERMINAL_PHASES)
        shop = _rollout(last, "default/shop")
        if shop["phase"] != "RolledBack":
            raise DemoFailure(act, f"shop ended {shop['phase']}, not RolledBack: {shop['message']}")
        if shop["promotedRings"]:
            raise DemoFailure(act, f"shop rolled back with the flag still on for {shop['promotedRings']}")
        reason = shop["status"].get("rollbackReason") or ""
        failed = [entry for entry in self.client.rollout_gates(NAMESPACE, "shop")["history"]
                  if entry["verdict"] == "Failed"]
        if not failed or failed[0]["ring"] != "canary":
            raise DemoFailure(act, f"shop was rolled back ({reason}) without a failed gate in canary")
        old = client.AppsV1Api(self.system.api_client).read_namespaced_stateful_set("shop", NAMESPACE)
        if (old.status.ready_replicas or 0) < (old.spec.replicas or 0) or old.spec.replicas != shop["targetReplicas"]:
            raise DemoFailure(act, f"shop's old version has {old.status.ready_replicas} ready of "
                                   f"{shop['targetReplicas']} after the rollback")
        values = ", ".join(f"{name} {value:.3g}" for name, value in failed[0]["values"].items())
        return Outcome(act, True, f"gate {failed[0]['gate']} failed in canary ({values}); rolled back with the "
                                  f"flag off first; the old version serves all {shop['targetReplicas']} replicas")

    def halted_release(self) -> Outcome:
        act = "a halted release"
        self._headline("3. an andon pull halts web 2.0.0 → 2.1.0 while it bakes; releasing the cord resumes it")
        client.CustomObjectsApi(self.system.api_client).patch_namespaced_custom_object(
            "ringmaster.dev", "v1alpha1", NAMESPACE, "rollouts", "web",
            # A release of its own gets a flag of its own: web-v2 stays on for everyone (the controller refuses
            # to take over a flag an earlier release left on).
            {"spec": {"image": HALTED_RELEASE_IMAGE, "flag": {"key": HALTED_RELEASE_FLAG}}})
        self.console.print(f"  set web's image to {HALTED_RELEASE_IMAGE} and its flag to {HALTED_RELEASE_FLAG}",
                           highlight=False)

        def baking_early_adopter(snapshot: BoardSnapshot) -> bool:
            web = _find(snapshot, "default/web")
            return (web is not None and web["currentRing"] == "early-adopter" and web["phase"] == "Progressing"
                    and web["status"].get("bakeUntil") is not None and web["revision"] != self.first_web_revision)

        self._follow(act, ["default/web"], baking_early_adopter)
        pull = self.client.andon_pull("demo: a suspicious latency graph, looking before anything else moves")
        self.console.print(f"  andon cord pulled (pull {pull['id']}, by {pull['actor']}): "
                           f"{pull['reason']}", highlight=False, soft_wrap=True)
        halted = self._follow(act, ["default/web"], lambda snapshot: _phase(snapshot, "default/web") == "Halted")
        held = _rollout(halted, "default/web")
        still = self._follow(act, ["default/web"], _after(HALT_WATCH_S), quiet=True)
        after = _rollout(still, "default/web")
        moved = [name for name in ("phase", "currentRing", "promotedRings", "oldReady", "newReady")
                 if after[name] != held[name]]
        if moved:
            raise DemoFailure(act, f"web moved while the cord was pulled: {', '.join(moved)} changed")
        self.console.print(f"  web stood still for {HALT_WATCH_S:.0f} s: ring {held['currentRing']}, old "
                           f"{held['oldReady']} new {held['newReady']} ready, flag on for "
                           f"{', '.join(held['promotedRings'])}", highlight=False, soft_wrap=True)
        self.client.andon_release(pull["id"], "demo: the graph was a dashboard glitch; carry on")
        self.console.print(f"  andon cord released (pull {pull['id']})", highlight=False)
        last = self._follow(act, ["default/web"], lambda snapshot: _phase(snapshot, "default/web") in TERMINAL_PHASES)
        web = _rollout(last, "default/web")
        if web["phase"] != "Succeeded" or web["promotedRings"] != ALL_RINGS:
            raise DemoFailure(act, f"web ended {web['phase']} with the flag on for {web['promotedRings']} after the "
                                   f"cord was released: {web['message']}")
        return Outcome(act, True, f"halted in {held['currentRing']} with nothing moving, then succeeded once "
                                  "the cord was released")

    # Telling it

    def _headline(self, text: str) -> None:
        self.console.rule(f"[bold]{text}", align="left")

    def _apply(self, *paths: Any) -> None:
        for path in paths:
            apply_manifests(self.system.api_client, load_manifests(path), namespace=NAMESPACE)
            self.console.print(f"  applied {path.relative_to(EXAMPLES.parent)}", highlight=False)

    def _wait_ready(self, statefulset: str) -> None:
        apps = client.AppsV1Api(self.system.api_client)
        deadline = time.monotonic() + ACT_TIMEOUT_S
        while True:
            found = apps.read_namespaced_stateful_set(statefulset, NAMESPACE)
            if (found.status.ready_replicas or 0) >= (found.spec.replicas or 0):
                return
            if time.monotonic() > deadline:
                raise DemoFailure(statefulset, f"StatefulSet {statefulset} was not ready in {ACT_TIMEOUT_S:.0f} s")
            time.sleep(REFRESH_S)

    def _follow(self, act: str, targets: list[str], done: Callable[[BoardSnapshot], bool], *,
                quiet: bool = False) -> BoardSnapshot:
        """Show the rollouts until `done` holds; raise DemoFailure after ACT_TIMEOUT_S."""
        keys = [tuple(target.split("/", 1)) for target in targets]
        deadline = time.monotonic() + ACT_TIMEOUT_S
        timed_out = [False]

        def finished(snapshot: BoardSnapshot) -> bool:
            if snapshot.error is None and _all_found(snapshot, targets) and done(snapshot):
                return True
            timed_out[0] = time.monotonic() > deadline
            return timed_out[0]

        if self.live and not quiet:
            last = watch(self.client, keys, None, REFRESH_S, until=finished, console=self.console)  # type: ignore[arg-type]
        else:
            last = self._print_changes(keys, finished, quiet)
        if timed_out[0]:
            states = "; ".join(f"{rollout['name']} {rollout['phase']}: {rollout['message']}"
                               for rollout in last.rollouts)
            raise DemoFailure(act, f"not done within {ACT_TIMEOUT_S:.0f} s ({states or last.error}); see "
                                   f"{self.system.logs / 'controller.log'}")
        return last

    def _print_changes(self, keys: list[tuple[str, ...]], finished: Callable[[BoardSnapshot], bool],
                       quiet: bool) -> BoardSnapshot:
        shown: dict[str, str] = {}
        while True:
            snapshot = take_snapshot(self.client, keys)  # type: ignore[arg-type]
            if not quiet:
                for rollout in snapshot.rollouts:
                    key = f"{rollout['namespace']}/{rollout['name']}"
                    line = _line(rollout, snapshot.gates.get(key))
                    if shown.get(key) != line:
                        self.console.print(line, highlight=False, soft_wrap=True)
                        shown[key] = line
            if finished(snapshot):
                return snapshot
            time.sleep(REFRESH_S)


class DemoFailure(Exception):
    def __init__(self, act: str, why: str) -> None:
        super().__init__(why)
        self.act = act


def _after(seconds: float) -> Callable[[BoardSnapshot], bool]:
    until = time.monotonic() + seconds
    return lambda snapshot: time.monotonic() >= until


def _find(snapshot: BoardSnapshot, key: str) -> dict[str, Any] | None:
    return next((rollout for rollout in snapshot.rollouts if f"{rollout['namespace']}/{rollout['name']}" == key),
                None)


def _rollout(snapshot: BoardSnapshot, key: str) -> dict[str, Any]:
    found = _find(snapshot, key)
    assert found is not None, f"{key} is missing from a snapshot that was complete"
    return found


def _all_found(snapshot: BoardSnapshot, keys: list[str]) -> bool:
    return all(_find(snapshot, key) is not None for key in keys)


def _phase(snapshot: BoardSnapshot, key: str) -> str | None:
    found = _find(snapshot, key)
    return None if found is None else found["phase"]


def _line(rollout: dict[str, Any], gates: dict[str, Any] | None) -> str:
    verdicts = ", ".join(f"{gate['name']} {(gate.get('last') or {}).get('verdict', 'waiting')}"
                         for gate in (gates or {}).get("gates", []))
    return (f"  {rollout['name']}: {rollout['phase'] or '-':<11} ring {rollout['currentRing'] or '-':<14} "
            f"old ready {rollout['oldReady']}  new ready {rollout['newReady']}  flag on for "
            f"{', '.join(rollout['promotedRings']) or 'no ring'}" + (f"  gates: {verdicts}" if verdicts else ""))


def play(system: LocalSystem, console: Console) -> list[Outcome]:
    return Story(system, console).play()
