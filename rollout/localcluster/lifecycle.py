"""The life of a simulated pod: started, Ready, crashed and backing off, failed; and the status it shows.

The simulated kubelet keeps one `ContainerLife` per pod (a pod's containers live and die together)
and moves it on with `advance`, a pure function of the pod's behaviour and the time, so every delay
is exact however late the simulator gets round to a pod. `pod_status` renders a life as the status
a kubelet would write, and `life_from_status` reads one back, so a restarted simulator carries on
with the pods it was running instead of starting them all again.

A crash loop goes: Ready for `crash-after`, crash (restart count + 1, the run kept as the last
state), back off in CrashLoopBackOff for `ready-delay`, then run and be Ready again at once. Under
`restartPolicy: Never` a crash fails the pod for good.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rollout.localcluster.annotations import PodBehaviour

EXIT_CODE_ON_CRASH = 1
KUBELET_CONDITIONS = ("PodScheduled", "Initialized", "ContainersReady", "Ready")


class Stage(enum.StrEnum):
    STARTING = "starting"  # running, not Ready yet, or no longer
    READY = "ready"
    BACKING_OFF = "backing-off"  # crashed, waiting to be restarted
    FAILED = "failed"  # crashed under restartPolicy Never; the pod is over


@dataclass(frozen=True)
class Exit:
    """A run of the container that ended in a crash."""

    started_s: float
    finished_s: float


@dataclass(frozen=True)
class ContainerLife:
    """Where a pod's containers are in their life. Times are Unix seconds."""

    stage: Stage
    since_s: float  # when the stage began
    started_s: float  # when the current run started (the last run, while backing off or failed)
    pod_started_s: float
    restart_count: int = 0
    last_exit: Exit | None = None

    @property
    def ready(self) -> bool:
        return self.stage is Stage.READY


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str


def started(now_s: float) -> ContainerLife:
    """A pod whose containers the simulated kubelet starts now."""
    return ContainerLife(stage=Stage.STARTING, since_s=now_s, started_s=now_s, pod_started_s=now_s)


def next_change_s(life: ContainerLife, behaviour: PodBehaviour) -> float | None:
    """When the life moves on by itself, or None if it stays as it is until something changes."""
    if life.stage is Stage.STARTING:
        return None if behaviour.never_ready else life.since_s + behaviour.ready_delay_s
    if life.stage is Stage.READY:
        return None if behaviour.crash_after_s is None else life.since_s + behaviour.crash_after_s
    if life.stage is Stage.BACKING_OFF:
        return life.since_s + behaviour.ready_delay_s
    return None


def advance(life: ContainerLife, behaviour: PodBehaviour, now_s: float, *, restarts: bool = True) -> ContainerLife:
    """The life at `now_s`, having gone through every change due by then; `restarts` is False under
    restartPolicy Never."""
    if life.ready and behaviour.never_ready:
        # The annotation was added to a running pod: its readiness probe starts failing now.
        life = replace(life, stage=Stage.STARTING, since_s=now_s)
    while True:
        life = _skip_crash_cycles(life, behaviour, now_s, restarts)
        due_s = next_change_s(life, behaviour)
        if due_s is None or due_s > now_s:
            return life
        life = _change(life, behaviour, due_s, restarts)


def _change(life: ContainerLife, behaviour: PodBehaviour, at_s: float, restarts: bool) -> ContainerLife:
    if life.stage is Stage.STARTING:
        return replace(life, stage=Stage.READY, since_s=at_s)
    if life.stage is Stage.READY and not restarts:
        return replace(life, stage=Stage.FAILED, since_s=at_s)
    if life.stage is Stage.READY:
        return replace(
            life,
            stage=Stage.BACKING_OFF,
            since_s=at_s,
            restart_count=life.restart_count + 1,
            last_exit=Exit(started_s=life.started_s, finished_s=at_s),
        )
    back_stage = Stage.STARTING if behaviour.never_ready else Stage.READY
    return replace(life, stage=back_stage, since_s=at_s, started_s=at_s)


def _skip_crash_cycles(life: ContainerLife, behaviour: PodBehaviour, now_s: float, restarts: bool) -> ContainerLife:
    """Jump over whole crash-and-restart cycles at once, so a simulator that was down for a day does
    not step through thousands of them one by one."""
    crash_after_s = behaviour.crash_after_s
    if not life.ready or crash_after_s is None or not restarts or behaviour.never_ready:
        return life
    period_s = crash_after_s + behaviour.ready_delay_s
    cycles = math.floor((now_s - life.since_s) / period_s)
    if cycles < 1:
        return life
    last_run_start_s = life.started_s if cycles == 1 else life.since_s + (cycles - 1) * period_s
    last_ready_s = life.since_s + (cycles - 1) * period_s
    back_s = life.since_s + cycles * period_s
    return replace(
        life,
        since_s=back_s,
        started_s=back_s,
        restart_count=life.restart_count + cycles,
        last_exit=Exit(started_s=last_run_start_s, finished_s=last_ready_s + crash_after_s),
    )


def timestamp(unix_s: float) -> str:
    """Kubernetes' timestamp format: RFC 3339 in UTC, whole seconds."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_address(uid: str) -> str:
    """A stable address in the usual pod network range, the same for a pod whenever it is asked."""
    digest = hashlib.sha256(uid.encode()).digest()
    return f"10.244.{digest[0]}.{digest[1] % 254 + 1}"


def _condition(kind: str, holds: bool, since_s: float, reason: str | None, message: str | None) -> dict[str, Any]:
    # A condition that holds gives no reason; the nulls remove those of an earlier write from the patched status.
    return {
        "type": kind,
        "status": "True" if holds else "False",
        "reason": None if holds else reason,
        "message": None if holds else message,
        "lastProbeTime": None,
        "lastTransitionTime": timestamp(since_s),
    }


def _state(life: ContainerLife, container: ContainerSpec) -> dict[str, Any]:
    if life.stage is Stage.BACKING_OFF:
        message = f"back-off restarting failed container {container.name}"
        return {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
    if life.stage is Stage.FAILED:
        return {"terminated": _terminated(Exit(life.started_s, life.since_s))}
    return {"running": {"startedAt": timestamp(life.started_s)}}


def _terminated(run: Exit) -> dict[str, Any]:
    return {
        "exitCode": EXIT_CODE_ON_CRASH,
        "reason": "Error",
        "startedAt": timestamp(run.started_s),
        "finishedAt": timestamp(run.finished_s),
    }


def pod_status(
    life: ContainerLife, containers: Sequence[ContainerSpec], *, pod_ip: str, host_ip: str
) -> dict[str, Any]:
    """The status a kubelet would report for a pod whose containers are at `life`."""
    names = " ".join(container.name for container in containers)
    pod_reason = "PodFailed" if life.stage is Stage.FAILED else "ContainersNotReady"
    not_ready_message = f"containers with unready status: [{names}]"
    container_statuses = [
        {
            "name": container.name,
            "image": container.image,
            "imageID": f"sim://{container.image}",
            "containerID": f"sim://{container.name}-{life.restart_count}",
            "ready": life.ready,
            "started": life.stage in (Stage.STARTING, Stage.READY),
            "restartCount": life.restart_count,
            "state": _state(life, container),
            "lastState": {"terminated": _terminated(life.last_exit)} if life.last_exit else {},
        }
        for container in containers
    ]
    return {
        "phase": "Failed" if life.stage is Stage.FAILED else "Running",
        "conditions": [
            _condition("PodScheduled", True, life.pod_started_s, None, None),
            _condition("Initialized", True, life.pod_started_s, None, None),
            _condition("ContainersReady", life.ready, life.since_s, "ContainersNotReady", not_ready_message),
            _condition("Ready", life.ready, life.since_s, pod_reason, not_ready_message),
        ],
        "containerStatuses": container_statuses,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(life.pod_started_s),
    }


def status_fingerprint(status: Mapping[str, Any]) -> tuple[object, ...]:
    """What must match for a pod's status to say what `pod_status` would write: timestamps aside, which
    the API server keeps to whole seconds, and conditions the kubelet does not own, which someone else
    may set and which would otherwise have the simulator write the same status over and over."""
    conditions = sorted(
        (str(condition.get("type")), str(condition.get("status")))
        for condition in status.get("conditions") or ()
        if condition.get("type") in KUBELET_CONDITIONS
    )
    containers = tuple(
        (
            container.get("name"),
            container.get("image"),
            container.get("ready"),
            container.get("restartCount"),
            tuple(sorted((container.get("state") or {}).keys())),
        )
        for container in status.get("containerStatuses") or ()
    )
    return status.get("phase"), tuple(conditions), containers


def life_from_status(status: Mapping[str, Any]) -> ContainerLife | None:
    """The life a pod's status shows, as the simulator wrote it; None if it shows none, so the pod
    is started afresh."""
    try:
        return _life_from_status(status)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


def _life_from_status(status: Mapping[str, Any]) -> ContainerLife | None:
    container_statuses = status.get("containerStatuses") or []
    if not container_statuses or not status.get("startTime"):
        return None
    first = container_statuses[0]
    state = first.get("state") or {}
    last_terminated = (first.get("lastState") or {}).get("terminated")
    last_exit = (
        Exit(parse_timestamp(last_terminated["startedAt"]), parse_timestamp(last_terminated["finishedAt"]))
        if last_terminated
        else None
    )
    ready_since = [
        condition.get("lastTransitionTime")
        for condition in status.get("conditions") or ()
        if condition.get("type") == "Ready" and condition.get("lastTransitionTime")
    ]
    pod_started_s = parse_timestamp(status["startTime"])
    restart_count = int(first.get("restartCount", 0))
    if "running" in state:
        started_s = parse_timestamp(state["running"]["startedAt"])
        since_s = parse_timestamp(ready_since[0]) if ready_since else started_s
        stage = Stage.READY if first.get("ready") else Stage.STARTING
        return ContainerLife(stage, since_s, started_s, pod_started_s, restart_count, last_exit)
    if "terminated" in state:
        run = state["terminated"]
        finished_s = parse_timestamp(run["finishedAt"])
        started_s = parse_timestamp(run["startedAt"])
        return ContainerLife(Stage.FAILED, finished_s, started_s, pod_started_s, restart_count, last_exit)
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff" and last_exit is not None:
        return ContainerLife(
            Stage.BACKING_OFF, last_exit.finished_s, last_exit.started_s, pod_started_s, restart_count, last_exit
        )
    return None
