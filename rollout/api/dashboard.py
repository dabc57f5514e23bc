"""The web dashboard of `ringmaster serve`: every rollout with its rings, replicas and gates, the andon cord
with its big red button, and the record of pulls, releases and transitions, as server-rendered HTML.

`/dashboard` is the page; three fragments of it (`/dashboard/fragments/rollouts`, `cord`, `history`)
are rendered here too, and static/dashboard.js fetches them again every 2 s. The script pulls and
releases the cord through the JSON API (`POST /api/v1/andon/pull`, `/release`) with the bearer token
the user typed, kept in sessionStorage, so these routes change nothing themselves and need no cookie
(hence no CSRF defence either). They read through the API routes' own functions (`rollout_objects`,
`summary`, `active_pulls`, `recorded_events`) and the history stores.

Reads are guarded like /api/v1's: the fragments take the `reader` dependency, so with
RINGMASTER_READS_REQUIRE_TOKEN the script must send a viewer token, and the page itself then carries
no data, only the shell that asks for a token (docs/dashboard.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import SQLAlchemyError

from rollout.andon.scope import MAX_REASON, MIN_REASON
from rollout.api.andon import VIA_HEADER, EventView, PullView, active_pulls, event_view, pull_view, recorded_events
from rollout.api.auth import reader
from rollout.api.problems import ApiProblem
from rollout.api.rollouts import CohortRings, rollout_objects, summary
from rollout.api.sparklines import Sparkline, sparkline
from rollout.controller.history import GateResultEntry, GateResults, HistoryEntry, RolloutHistory
from rollout.controller.status import RolloutStatus, parse_status
from rollout.settings import ServiceSettings

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", "favicon.svg": "image/svg+xml"}
REFRESH_MS = 2000
MEASUREMENTS_PER_ROLLOUT = 300
SERIES_PER_GATE = 3
RECORD_LENGTH = 25
# Only this origin's script and style; SVG is drawn inline, so no image source is needed beyond the icon.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

RingState = Literal["done", "current", "pending"]


@dataclass(frozen=True)
class Notice:
    """Why a part of the page shows no data: Kubernetes not configured, the database down, ..."""

    title: str
    detail: str


@dataclass(frozen=True)
class RingView:
    name: str
    state: RingState
    flag_on: bool


@dataclass(frozen=True)
class GateView:
    name: str
    kind: str
    ring: str
    phase: str | None  # None for a gate of an earlier ring, known only from its measurements
    verdict: str | None
    message: str
    threshold: str
    passed: int
    failed: int
    measurements: int
    lines: list[Sparkline] = field(default_factory=list)


@dataclass(frozen=True)
class RolloutView:
    namespace: str
    name: str
    phase: str | None
    revision: str | None
    step: str | None
    rings: list[RingView]
    bake_remaining_s: float | None
    bake_frozen: bool
    old_ready: int
    new_ready: int
    target_replicas: int | None
    message: str
    gates: list[GateView]

    @property
    def replicas_scale(self) -> int:
        """The number of replicas the capacity bar spans: the target, or more while both sides run."""
        return max(self.target_replicas or 0, self.old_ready + self.new_ready, 1)


def ring_views(names: Sequence[str], status: RolloutStatus) -> list[RingView]:
    """Each ring done (baked and promoted), current (moving capacity or baking) or pending."""
    moving = status.track in ("Pending", "Progressing") and status.current_ring is not None
    views = []
    for index, name in enumerate(names):
        state: RingState = "pending"
        if status.track == "Succeeded" or (moving and index < status.ring_index):
            state = "done"
        elif moving and index == status.ring_index:
            state = "current"
        views.append(RingView(name, state, name in status.promoted_rings))
    return views


def bake_left(status: RolloutStatus, now: datetime) -> tuple[float | None, bool]:
    """Seconds of the current ring's bake left, and whether they stand still (halted or paused)."""
    if status.bake_remaining_seconds is not None:
        return status.bake_remaining_seconds, True
    if status.bake_until is not None:
        return max(0.0, (status.bake_until - now).total_seconds()), False
    return None, False


def gate_views(status: RolloutStatus, measurements: Sequence[GateResultEntry]) -> list[GateView]:
    """The gates of the revision being rolled out: those of the ring baking now as the status has them,
    then those of earlier rings; each with a sparkline per value it measured, oldest to newest."""
    relevant = [entry for entry in measurements if status.revision is None or entry.revision == status.revision]
    by_gate: dict[str, list[GateResultEntry]] = defaultdict(list)
    for entry in relevant:
        by_gate[entry.gate].append(entry)
    views = []
    for gate in status.gates:
        entries = by_gate.pop(gate.name, [])
        last = gate.last
        views.append(GateView(
            name=gate.name, kind=gate.kind, ring=gate.ring, phase=gate.phase,
            verdict=last.verdict if last else None, message=last.message if last else "",
            threshold=last.threshold if last else "", passed=gate.passed, failed=gate.failed,
            measurements=gate.measurements, lines=_lines(entries)))
    for name, entries in by_gate.items():
        newest = entries[-1]
        views.append(GateView(
            name=name, kind=newest.kind, ring=newest.ring, phase=None, verdict=newest.verdict,
            message=newest.message, threshold=newest.threshold,
            passed=sum(entry.verdict == "Passed" for entry in entries),
            failed=sum(entry.verdict == "Failed" for entry in entries), measurements=len(entries),
            lines=_lines(entries)))
    return views


def _lines(entries: Sequence[GateResultEntry]) -> list[Sparkline]:
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for entry in entries:
        for label, value in entry.values.items():
            series[label].append((entry.at, value))
    drawn = (sparkline(label, points) for label, points in sorted(series.items()))
    return [line for line in drawn if line is not None][:SERIES_PER_GATE]


def rollout_view(obj: Mapping[str, Any], measurements: Sequence[GateResultEntry], cohort_rings: CohortRings,
                 now: datetime) -> RolloutView:
    shown = summary(obj, now, cohort_rings)
    status = parse_status(obj.get("status"))
    remaining, frozen = bake_left(status, now)
    return RolloutView(
        namespace=shown.namespace, name=shown.name, phase=shown.phase, revision=shown.revision, step=shown.step,
        rings=ring_views(shown.rings, status), bake_remaining_s=remaining, bake_frozen=frozen,
        old_ready=shown.old_ready, new_ready=shown.new_ready, target_replicas=shown.target_replicas,
        message=shown.message, gates=gate_views(status, measurements),
    )


def _rollouts_section(request: Request, now: datetime) -> dict[str, Any]:
    try:
        objects = rollout_objects(request)
    except ApiProblem as problem:
        return {"rollouts": [], "rollouts_notice": Notice(problem.title, problem.detail)}
    engine = request.app.state.engine
    gate_results = GateResults(engine)
    cohort_rings = CohortRings(request.app.state.store)
    try:
        views = [rollout_view(obj, gate_results.entries((obj.get("metadata") or {}).get("namespace", ""),
                                                         (obj.get("metadata") or {}).get("name", ""),
                                                         MEASUREMENTS_PER_ROLLOUT), cohort_rings, now)
                 for obj in objects]
    except SQLAlchemyError as error:
        return {"rollouts": [], "rollouts_notice": Notice(
            "The database cannot be reached", f"gate measurements cannot be read: {type(error).__name__}")}
    return {"rollouts": views, "rollouts_notice": None}


def _cord_section(request: Request) -> dict[str, Any]:
    try:
        pulls: list[PullView] = [pull_view(pull) for pull in active_pulls(request)]
    except ApiProblem as problem:
        return {"pulls": [], "cord_notice": Notice(problem.title, problem.detail)}
    return {"pulls": pulls, "cord_notice": None}


def _history_section(request: Request) -> dict[str, Any]:
    try:
        events: list[EventView] = [event_view(event) for event in recorded_events(request, RECORD_LENGTH)]
        transitions: list[HistoryEntry] = RolloutHistory(request.app.state.engine).recent(RECORD_LENGTH)
    except ApiProblem as problem:
        return {"events": [], "transitions": [], "history_notice": Notice(problem.title, problem.detail)}
    except SQLAlchemyError as error:
        return {"events": [], "transitions": [], "history_notice": Notice(
            "The database cannot be reached", f"transitions cannot be read: {type(error).__name__}")}
    return {"events": events, "transitions": transitions, "history_notice": None}


def duration(seconds: float | None) -> str:
    """4 s, 2m 05s, 1h 03m: a bake's time left, to the second."""
    if seconds is None:
        return ""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def number(value: float) -> str:
    """A measured value in four significant figures: 0.002, 12.5, 1.234e+06."""
    return f"{value:.4g}"


def clock(at: datetime, now: datetime) -> str:
    """The time of day (UTC) for today's events, the date too for older ones."""
    at = at.astimezone(UTC)
    return at.strftime("%H:%M:%S") if at.date() == now.astimezone(UTC).date() else at.strftime("%Y-%m-%d %H:%M")


_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)
_templates.filters.update(duration=duration, number=number)


def _render(template: str, **context: Any) -> HTMLResponse:
    now = datetime.now(UTC)
    body = _templates.get_template(template).render(
        now=now, clock=lambda at: clock(at, now), rendered_at=now.strftime("%H:%M:%S UTC"), **context)
    return HTMLResponse(body, headers=SECURITY_HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
def dashboard(request: Request) -> HTMLResponse:
    """The page: open to anyone, carrying data only when reads need no token."""
    settings: ServiceSettings = request.app.state.settings
    sections: dict[str, Any] = {}
    if not settings.reads_require_token:
        now = datetime.now(UTC)
        sections = {**_rollouts_section(request, now), **_cord_section(request), **_history_section(request)}
    return _render("dashboard.html", has_data=bool(sections), reads_require_token=settings.reads_require_token,
                   refresh_ms=REFRESH_MS, min_reason=MIN_REASON, max_reason=MAX_REASON, via_header=VIA_HEADER,
                   **sections)


@router.get("/dashboard/fragments/rollouts", dependencies=[Depends(reader)])
def rollouts_fragment(request: Request) -> HTMLResponse:
    return _render("_rollouts.html", **_rollouts_section(request, datetime.now(UTC)))


@router.get("/dashboard/fragments/cord", dependencies=[Depends(reader)])
def cord_fragment(request: Request) -> HTMLResponse:
    return _render("_cord.html", **_cord_section(request))


@router.get("/dashboard/fragments/history", dependencies=[Depends(reader)])
def history_fragment(request: Request) -> HTMLResponse:
    return _render("_history.html", **_history_section(request))


@router.get("/dashboard/static/{file_name}")
def static_file(file_name: str) -> FileResponse:
    """The page's script, style and icon: a fixed list of files shipped in the package, nothing else."""
    media_type = STATIC_FILES.get(file_name)
    if media_type is None:
        raise ApiProblem(404, "not-found", "No such file", f"the dashboard has no static file {file_name!r}")
    return FileResponse(HERE / "static" / file_name, media_type=media_type,
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
