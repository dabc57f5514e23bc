"""How a rollout is shown in a terminal: the `rollout list` table, the `rollout get` view, and the live board.

One vocabulary of colours and symbols serves every view, so Halted is the same bold red in a table,
a detail view and a board. `take_snapshot` reads the API once; `render_board`, `rollout_table` and
`rollout_detail` draw what was read (pure: the time they show is the snapshot's, or given); `watch`
redraws the board until the caller's condition holds or Ctrl-C. `ringmaster rollout get --watch`,
`ringmaster rollout list --watch` and `ringmaster demo` show the board.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

from rollout.client import ClientError, RingmasterClient
from rollout.controller.spec import DEFAULT_BAKE

PHASE_STYLES = {"Pending": "cyan", "Progressing": "blue", "Paused": "yellow", "Halted": "bold red",
                "Succeeded": "green", "RollingBack": "red", "RolledBack": "red", "Failed": "red"}
# A step is shown beside the phase; waiting for gates to judge is as much a wait as a pause.
STEP_STYLES = {"AwaitingEvidence": "yellow", "WaitingForReady": "blue", "Baking": "blue", "Done": "green"}
GATE_PHASE_STYLES = {"Running": "blue", "Held": "yellow", "Passed": "green", "Failed": "red",
                     "Inconclusive": "yellow", "Skipped": "dim"}
VERDICT_STYLES = {"Passed": "green", "Failed": "red", "Inconclusive": "yellow", "NoData": "magenta",
                  "TooFewSamples": "magenta", "Error": "magenta"}
# Phases a rollout stays in until someone changes it: a watch of it ends there.
TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack", "Failed"})
BAR_WIDTH = 20
MESSAGE_WIDTH = 60
RECENT_HISTORY = 10
GATE_MEASUREMENTS = 20


@dataclass(frozen=True)
class BoardSnapshot:
    """What the board shows, read at `taken_at`: each rollout as GET /api/v1/rollouts/{ns}/{name} answers,
    its gates (key "ns/name") as GET .../gates answers, the cord as GET /api/v1/andon answers; `error` when
    the server could not be read."""

    rollouts: list[dict[str, Any]]
    gates: dict[str, dict[str, Any]]
    andon: dict[str, Any] | None
    taken_at: datetime
    error: str | None = None


def take_snapshot(client: RingmasterClient, targets: Sequence[tuple[str, str]] | None = None,
                  namespace: str | None = None) -> BoardSnapshot:
    """Read the rollouts `targets` ((namespace, name) pairs; None: every rollout of `namespace`, or of every
    namespace), their gates and the cord. A server that cannot be read gives an empty snapshot with `error`."""
    taken_at = datetime.now(UTC)
    try:
        keys = list(targets) if targets is not None else [
            (item["namespace"], item["name"]) for item in client.list_rollouts(namespace)]
        rollouts = [client.get_rollout(rollout_namespace, name) for rollout_namespace, name in keys]
        gates = {f"{rollout_namespace}/{name}": client.rollout_gates(rollout_namespace, name, GATE_MEASUREMENTS)
                 for rollout_namespace, name in keys}
        andon = client.andon_status()
    except ClientError as error:
        return BoardSnapshot(rollouts=[], gates={}, andon=None, taken_at=taken_at, error=str(error))
    return BoardSnapshot(rollouts=rollouts, gates=gates, andon=andon, taken_at=taken_at)


def settled(snapshot: BoardSnapshot) -> bool:
    """Whether every rollout read has reached a phase it stays in (and there was one to read)."""
    return snapshot.error is None and bool(snapshot.rollouts) and all(
        rollout.get("phase") in TERMINAL_PHASES for rollout in snapshot.rollouts)


def watch(client: RingmasterClient, targets: Sequence[tuple[str, str]] | None, namespace: str | None,
          interval_s: float, until: Callable[[BoardSnapshot], bool] | None = None,
          console: Console | None = None) -> BoardSnapshot:
    """Redraw the board every `interval_s` until `until(snapshot)` is true or Ctrl-C; the last snapshot.

    A read that fails keeps the last rollouts read on the board, with the error above them."""
    snapshot = take_snapshot(client, targets, namespace)
    with Live(render_board(snapshot), console=console, auto_refresh=False) as live:
        try:
            while until is None or not until(snapshot):
                time.sleep(interval_s)
                latest = take_snapshot(client, targets, namespace)
                if latest.error is not None and snapshot.rollouts:
                    latest = replace(snapshot, error=latest.error, taken_at=latest.taken_at)
                snapshot = latest
                live.update(render_board(snapshot), refresh=True)
        except KeyboardInterrupt:
            pass
    return snapshot


# The pieces every view shares


def styled(value: str | None, styles: Mapping[str, str]) -> Text:
    if value is None:
        return Text("-", style="dim")
    return Text(value, style=styles.get(value, ""))


def phase_text(phase: str | None) -> Text:
    return styled(phase, PHASE_STYLES)


def when(value: str | None) -> str:
    """A timestamp of the API as `2024-05-01 12:00:00` (UTC), or `-`."""
    return value[:19].replace("T", " ") if value else "-"


def age(seconds: float) -> str:
    """As kubectl shows ages: 45s, 12m, 5h, 3d."""
    whole = int(seconds)
    for unit, size, below in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 172800)):
        if whole < below:
            return f"{whole // size}{unit}"
    return f"{whole // 86400}d"


def duration(seconds: float) -> str:
    """A time left, precise enough to watch it go down: 45s, 4m12s, 1h05m."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def values_text(values: Mapping[str, float]) -> str:
    """A gate's numbers on one line: `error_ratio=0.0123 p99_s=0.41`."""
    return " ".join(f"{key}={value:.4g}" for key, value in values.items()) or "-"


def clock(value: str | None, now: datetime) -> str:
    """A timestamp of the API as its time of day (UTC), with the date when it is not `now`'s; or `-`."""
    moment = _moment(value)
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    return f"{moment:%H:%M:%S}" if moment.date() == now.astimezone(UTC).date() else f"{moment:%Y-%m-%d %H:%M:%S}"


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def bake_left(status: Mapping[str, Any], now: datetime) -> tuple[float, bool] | None:
    """Seconds of the current ring's bake left, and whether they stand still (paused or halted); None when no
    ring bakes."""
    until = _moment(status.get("bakeUntil"))
    if until is not None:
        return max(0.0, (until - now).total_seconds()), False
    if status.get("bakeRemainingSeconds") is not None:
        return float(status["bakeRemainingSeconds"]), True
    return None


def ring_names(rollout: Mapping[str, Any]) -> list[str]:
    """The rollout's rings in order: as the API names them, else as its spec lists them."""
    names = list(rollout.get("rings") or [])
    if not names:
        names = [ring["name"] for ring in (rollout.get("spec") or {}).get("rings") or [] if "name" in ring]
    return names


@dataclass(frozen=True)
class RingState:
    """Where one ring of a rollout stands: `mark` ✔ promoted, ▶ current, ✖ rolled back, · pending."""

    name: str
    mark: str
    style: str
    flag_on: bool
    note: str = ""


def ring_states(rollout: Mapping[str, Any], now: datetime) -> list[RingState]:
    status = rollout.get("status") or {}
    phase, track = rollout.get("phase"), rollout.get("track")
    promoted = set(rollout.get("promotedRings") or [])
    current_index = status.get("ringIndex", 0)
    records = {record["ring"]: record for record in status.get("history") or []
               if record.get("revision") == rollout.get("revision")}
    states = []
    for index, name in enumerate(ring_names(rollout)):
        flag_on = name in promoted
        record = records.get(name) or {}
        if track == "Succeeded":
            states.append(RingState(name, "✔", "green", flag_on, "promoted"))
        elif track in ("RollingBack", "RolledBack", "Failed"):
            if record.get("outcome") == "rolled back":
                states.append(RingState(name, "✖", "red", flag_on, "rolled back"))
            elif record.get("outcome") == "promoted":
                states.append(RingState(name, "✔", "dim", flag_on, "was promoted"))
            else:
                states.append(RingState(name, "·", "dim", flag_on, "pending"))
        elif phase is None or index > current_index:
            states.append(RingState(name, "·", "dim", flag_on, "pending"))
        elif index < current_index:
            states.append(RingState(name, "✔", "green", flag_on, "promoted"))
        else:
            states.append(RingState(name, "▶", PHASE_STYLES.get(phase or "", "blue"), flag_on,
                                    _current_note(phase, status, now)))
    return states


def _current_note(phase: str | None, status: Mapping[str, Any], now: datetime) -> str:
    left = bake_left(status, now)
    step = status.get("step")
    if step == "AwaitingEvidence":
        return "baked; awaiting evidence from its gates"
    if left is not None:
        seconds, frozen = left
        return f"baking, {duration(seconds)} left" + (f" ({phase.lower() if phase else 'frozen'})" if frozen else "")
    if phase == "Pending":
        return "starting"
    return "moving capacity" + (f" ({step})" if step else "")


def ring_progress(rollout: Mapping[str, Any]) -> Text:
    """`▮▮▯▯ 2/4`: one block a ring, filled where the ring's users have the flag, coloured by the phase."""
    names = ring_names(rollout)
    promoted = set(rollout.get("promotedRings") or [])
    phase = rollout.get("phase")
    total = len(names) or len(promoted)
    if total == 0:
        return Text("-", style="dim")
    done = sum(1 for name in names if name in promoted) if names else len(promoted)
    progress = Text()
    progress.append("▮" * done, style=PHASE_STYLES.get(phase or "", ""))
    progress.append("▯" * (total - done), style="dim")
    progress.append(f" {done}/{total}")
    return progress


def replica_bar(ready: int, target: int | None, style: str, width: int = BAR_WIDTH) -> Text:
    """`██████░░░░ 3/5 ready`; without a target, the count alone."""
    if not target:
        return Text(f"{ready} ready")
    filled = min(width, round(width * ready / target))
    bar = Text()
    bar.append("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {ready}/{target} ready")
    return bar


def _truncated(message: str, width: int = MESSAGE_WIDTH) -> str:
    return message if len(message) <= width else message[: width - 1] + "…"


def _gates_of(rollout: Mapping[str, Any], answer: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if answer is not None:
        return list(answer.get("gates") or [])
    return list((rollout.get("status") or {}).get("gates") or [])


def _gate_line(gate: Mapping[str, Any]) -> Text:
    last = gate.get("last") or {}
    line = Text()
    line.append(gate["name"], style="bold")
    line.append(" ")
    line.append_text(styled(last.get("verdict") or gate.get("phase"), {**GATE_PHASE_STYLES, **VERDICT_STYLES}))
    if last.get("values"):
        line.append(f" {values_text(last['values'])}")
    return line


# `ringmaster rollout list`


def rollout_table(items: Sequence[Mapping[str, Any]]) -> Table:
    """One row a rollout (the summaries of GET /api/v1/rollouts): phase, ring, progress, replicas, flag, age."""
    # The facts keep their width; the message gives way first (it is cut to one line's worth anyway).
    table = Table(*(Column(header, no_wrap=True) for header in ("NAMESPACE", "NAME", "PHASE", "RING", "PROGRESS")),
                  *(Column(header, justify="right", no_wrap=True) for header in ("OLD", "NEW", "TARGET")),
                  Column("FLAG ON", no_wrap=True), Column("AGE", no_wrap=True),
                  Column("MESSAGE", max_width=MESSAGE_WIDTH), box=None)
    for item in items:
        target = item.get("targetReplicas")
        table.add_row(item["namespace"], item["name"], phase_text(item.get("phase")), item.get("currentRing") or "-",
                      ring_progress(item), str(item["oldReady"]), str(item["newReady"]),
                      str(target) if target is not None else "-", ", ".join(item.get("promotedRings") or []) or "-",
                      age(item["ageSeconds"]), Text(_truncated(item.get("message") or "")))
    return table


# `ringmaster rollout get`


def rollout_detail(rollout: Mapping[str, Any], now: datetime, recent: int = RECENT_HISTORY) -> Group:
    """One rollout in full: what it is doing, its rings, replicas, flag, the current ring's gates, its
    conditions and its `recent` latest transitions."""
    status = rollout.get("status") or {}
    spec = rollout.get("spec") or {}
    names = ring_names(rollout)
    ring = rollout.get("currentRing")
    header = Text()
    header.append(f"{rollout['namespace']}/{rollout['name']}", style="bold")
    header.append("  ")
    header.append_text(phase_text(rollout.get("phase")))
    header.append(f"  ring {ring or '-'}")
    if ring in names:
        header.append(f" ({names.index(ring) + 1} of {len(names)})")
    header.append(f"  revision {rollout.get('revision') or '-'}  age {age(rollout['ageSeconds'])}")
    target = rollout.get("targetReplicas")
    facts = Table.grid(Column(style="bold"), Column(overflow="fold"), padding=(0, 2))
    facts.add_row("message", Text(rollout.get("message") or "-"))
    step = styled(status.get("step"), STEP_STYLES)
    left = bake_left(status, now)
    if left is not None:
        step.append(f"  bake {duration(left[0])} left" + (" (frozen)" if left[1] else ""))
    facts.add_row("step", step)
    facts.add_row("replicas", f"{rollout['oldReady']} old + {rollout['newReady']} new ready of "
                              f"{target if target is not None else '-'}")
    facts.add_row("old", replica_bar(rollout["oldReady"], target, "yellow"))
    facts.add_row("new", replica_bar(rollout["newReady"], target, PHASE_STYLES.get(rollout.get("phase") or "", "")))
    facts.add_row("flag", _flag_text(rollout))
    facts.add_row("progress", ring_progress(rollout))
    for label, value in (("bake until", when(status.get("bakeUntil")) if status.get("bakeUntil") else None),
                         ("paused", "spec.paused is true" if rollout.get("paused") else None),
                         ("paused by failure policy", rollout.get("pausedReason")),
                         ("rollback reason", status.get("rollbackReason")),
                         ("pending request", rollout.get("pendingRequest"))):
        if value:
            facts.add_row(label, Text(value))
    parts: list[RenderableType] = [header, facts, _rings_table(rollout, spec, names, now)]
    gates = _gate_table(_gates_of(rollout, None), ring)
    if gates.row_count:
        parts.append(gates)
    conditions = Table("TYPE", "STATUS", "REASON", Column("MESSAGE", overflow="fold"), "SINCE", title="conditions",
                       box=None, title_justify="left")
    for condition in status.get("conditions") or []:
        conditions.add_row(condition["type"], condition["status"], condition["reason"],
                           Text(condition.get("message", "")), when(condition.get("lastTransitionTime")))
    if conditions.row_count:
        parts.append(conditions)
    history = list(rollout.get("history") or [])
    shown = history[-recent:]
    title = "history" if len(shown) == len(history) else f"history (latest {len(shown)} of {len(history)})"
    transitions = Table("AT", "TYPE", "REASON", "RING", "REVISION", Column("MESSAGE", overflow="fold"), title=title,
                        box=None, title_justify="left")
    for entry in shown:
        transitions.add_row(when(entry["at"]), styled(entry["type"], {"Warning": "red"}), entry["reason"],
                            entry.get("ring") or "-", entry.get("revision") or "-", Text(entry["message"]))
    if transitions.row_count:
        parts.append(transitions)
    return Group(*parts)


def _flag_text(rollout: Mapping[str, Any]) -> Text:
    key = ((rollout.get("spec") or {}).get("flag") or {}).get("key", "-")
    promoted = rollout.get("promotedRings") or []
    flag = Text()
    flag.append(key, style="bold")
    if promoted:
        flag.append(" on for ")
        flag.append(", ".join(promoted), style="green")
    else:
        flag.append(" off for every ring", style="dim")
    return flag


def _rings_table(rollout: Mapping[str, Any], spec: Mapping[str, Any], names: list[str], now: datetime) -> Table:
    status = rollout.get("status") or {}
    pin = status.get("pin") or {}
    bakes = {ring["name"]: ring.get("bake", DEFAULT_BAKE) for ring in spec.get("rings") or [] if "name" in ring}
    records = {record["ring"]: record for record in status.get("history") or []
               if record.get("revision") == rollout.get("revision")}
    table = Table("", Column("RING", no_wrap=True), "STATE", "FLAG", Column("NEW REPLICAS", justify="right"),
                  Column("SHARE", justify="right"), "BAKE",
                  *(Column(header, no_wrap=True) for header in ("STARTED", "READY", "PROMOTED")), title="rings",
                  box=None, title_justify="left")
    replicas, shares = pin.get("replicas") or [], pin.get("cumulativeShares") or []
    for index, state in enumerate(ring_states(rollout, now)):
        record = records.get(state.name) or {}
        table.add_row(Text(state.mark, style=state.style), state.name, Text(state.note, style=state.style),
                      Text("on", style="green") if state.flag_on else Text("off", style="dim"),
                      str(replicas[index]) if index < len(replicas) else "-",
                      f"{shares[index]:g}%" if index < len(shares) else "-", bakes.get(state.name, DEFAULT_BAKE),
                      clock(record.get("startedAt"), now), clock(record.get("readyAt"), now),
                      clock(record.get("promotedAt"), now))
    if not names:
        table.add_row("", "-", Text("the rings are not known yet", style="dim"), "", "", "", "", "", "", "")
    return table


def _gate_table(gates: list[dict[str, Any]], ring: str | None) -> Table:
    table = Table("GATE", "KIND", "PHASE", "MEASURED", "LAST", Column("VALUES", overflow="fold"),
                  Column("THRESHOLD", overflow="fold"), "NEXT", title=f"gates of ring {ring or '-'}", box=None,
                  title_justify="left")
    for gate in gates:
        last = gate.get("last") or {}
        table.add_row(Text(gate["name"]), gate["kind"], styled(gate["phase"], GATE_PHASE_STYLES),
                      str(gate["measurements"]), styled(last.get("verdict"), VERDICT_STYLES),
                      Text(values_text(last.get("values") or {})), Text(last.get("threshold") or "-"),
                      when(gate.get("nextAt")))
    return table


# The live board


def render_board(snapshot: BoardSnapshot) -> RenderableType:
    """The cord at the top, then a panel a rollout: phase, rings, old and new ready replicas against the
    target, where the flag is on, the current ring's gates, the message."""
    parts: list[RenderableType] = []
    if snapshot.error is not None:
        parts.append(Panel(Text(snapshot.error), title="cannot read Ringmaster", border_style="red",
                           title_align="left"))
    parts.append(_cord(snapshot.andon, snapshot.taken_at))
    for rollout in snapshot.rollouts:
        key = f"{rollout['namespace']}/{rollout['name']}"
        parts.append(_rollout_panel(rollout, snapshot.gates.get(key), snapshot.taken_at))
    if not snapshot.rollouts and snapshot.error is None:
        parts.append(Text("no rollouts", style="dim"))
    parts.append(Text(f"read at {snapshot.taken_at.astimezone(UTC):%H:%M:%S} UTC", style="dim"))
    return Group(*parts)


def _scope(scope: Mapping[str, Any]) -> str:
    if scope.get("kind") == "namespace":
        return f"namespace {scope.get('namespace')}"
    if scope.get("kind") == "rollout":
        return f"rollout {scope.get('namespace')}/{scope.get('rollout')}"
    return "every rollout"


def _cord(andon: Mapping[str, Any] | None, now: datetime) -> RenderableType:
    if andon is None:
        return Text("andon cord: not read", style="dim")
    active = andon.get("active") or []
    if not active:
        return Text("● andon cord released: the line runs", style="bold green")
    lines = Text()
    for number, pull in enumerate(active):
        if number:
            lines.append("\n")
        pulled_at = _moment(pull.get("at"))
        since = f"{age((now - pulled_at).total_seconds())} ago" if pulled_at else "-"
        lines.append(f"pull {pull['id']} over {_scope(pull.get('scope') or {})} by {pull['actor']} "
                     f"({pull.get('via', '-')}, {since}): ", style="bold")
        lines.append(pull["reason"])
    return Panel(lines, title="ANDON CORD PULLED: rollouts in scope are halted", title_align="left",
                 style="white on red", border_style="bold white")


def _rollout_panel(rollout: Mapping[str, Any], gates_answer: Mapping[str, Any] | None, now: datetime) -> Panel:
    status = rollout.get("status") or {}
    phase = rollout.get("phase")
    target = rollout.get("targetReplicas")
    grid = Table.grid(Column(style="bold", min_width=8), Column(overflow="fold"), padding=(0, 2))
    rings = ring_progress(rollout)
    for state in ring_states(rollout, now):
        rings.append("  ")
        rings.append(f"{state.mark} {state.name}", style=state.style)
        if state.mark == "▶":
            rings.append(f" ({state.note})", style=state.style)
    grid.add_row("rings", rings)
    grid.add_row("old", replica_bar(rollout["oldReady"], target, "yellow"))
    grid.add_row("new", replica_bar(rollout["newReady"], target, PHASE_STYLES.get(phase or "", "")))
    grid.add_row("flag", _flag_text(rollout))
    gates = _gates_of(rollout, gates_answer)
    if gates:
        gate_lines = Text()
        for number, gate in enumerate(gates):
            if number:
                gate_lines.append("\n")
            gate_lines.append_text(_gate_line(gate))
        grid.add_row("gates", gate_lines)
    grid.add_row("message", Text(rollout.get("message") or "-"))
    title = Text()
    title.append(f"{rollout['namespace']}/{rollout['name']}", style="bold")
    title.append("  ")
    title.append_text(phase_text(phase))
    if status.get("step") and status["step"] != "Done":
        title.append("  ")
        title.append_text(styled(status["step"], STEP_STYLES))
    if rollout.get("revision"):
        title.append(f"  revision {rollout['revision']}", style="dim")
    return Panel(grid, title=title, title_align="left", border_style=PHASE_STYLES.get(phase or "", "dim"))
