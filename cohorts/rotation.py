"""Rotation epochs: the numbered periods after which the rotating rings are drawn again."""

from __future__ import annotations

from datetime import datetime, timedelta

from cohorts.spec import Rotation


def epoch_at(rotation: Rotation | None, when: datetime) -> int:
    """The epoch `when` falls in; 0 for a cohort set that does not rotate."""
    if rotation is None:
        return 0
    elapsed_s = (when - rotation.anchor).total_seconds()
    return int(elapsed_s // rotation.period_s)


def epoch_window(rotation: Rotation, epoch: int) -> tuple[datetime, datetime]:
    """When an epoch starts and ends (end exclusive)."""
    start = rotation.anchor + timedelta(seconds=epoch * rotation.period_s)
    return start, start + timedelta(seconds=rotation.period_s)
