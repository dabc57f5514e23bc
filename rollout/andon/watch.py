"""The controller's view of the andon cord: the active pulls, polled from the database.

A thread reads the newest event's id every `poll_s` (0.25 s: one indexed `max(id)`) and the active
pulls whenever it moves, and calls `on_change` so the controller looks at its rollouts again at
once. When the database cannot be read, the cord counts as pulled over everything (fail-safe): a
rollout must not go on while nobody can know whether someone stopped the line. The first read is
made before `start()` returns, so a controller never acts on an unknown cord.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from rollout.andon.store import AndonStore, Pull
from rollout.controller.observed import AndonView

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.25
# The active pulls are read again this often even when nothing moved, as a safety net.
REFRESH_S = 30.0


@dataclass(frozen=True)
class CordState:
    pulls: tuple[Pull, ...] = ()
    unreadable: str | None = None  # why the cord's state cannot be read, when it cannot


class CordWatcher:
    def __init__(self, store: AndonStore, on_change: Callable[[], None] = lambda: None,
                 poll_s: float = DEFAULT_POLL_S) -> None:
        self.store = store
        self.on_change = on_change
        self.poll_s = poll_s
        self._state = CordState(unreadable="not read yet")
        self._marker: int | None = None
        self._read_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="andon-cord", daemon=True)

    @property
    def state(self) -> CordState:
        return self._state

    @property
    def running(self) -> bool:
        """Whether it watches the cord: started and not stopped."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def view(self, namespace: str, name: str) -> AndonView:
        """Whether the cord is pulled over rollout namespace/name, and why (the oldest pull covering it)."""
        state = self._state
        if state.unreadable is not None:
            return AndonView(pulled=True, reason=f"the andon cord's state cannot be read ({state.unreadable}); "
                                                 "halted to be safe until the database answers",
                             cause="AndonStateUnknown")
        for pull in state.pulls:
            if pull.scope.covers(namespace, name):
                return AndonView(pulled=True, reason=f"{pull.reason} (pull {pull.id} by {pull.actor}, "
                                                     f"{pull.scope})")
        return AndonView()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def _poll(self) -> None:
        before = self._state
        try:
            marker = self.store.marker()
            if marker != self._marker or before.unreadable is not None or \
                    time.monotonic() - self._read_at > REFRESH_S:
                self._state = CordState(pulls=tuple(self.store.active()))
                self._marker = marker
                self._read_at = time.monotonic()
        except SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
            if before.unreadable is None:
                log.error("the andon cord's state cannot be read (%s): every rollout is halted until it can", reason)
            self._state = CordState(pulls=before.pulls, unreadable=reason)
        if _meaning(self._state) != _meaning(before):
            if before.unreadable is not None and self._state.unreadable is None:
                log.info("the andon cord's state is readable again: %d active pull(s)", len(self._state.pulls))
            self.on_change()


def _meaning(state: CordState) -> tuple[tuple[int, ...], bool]:
    """What the rollouts see of a state: which pulls, and whether it could be read (not the error's text)."""
    return tuple(pull.id for pull in state.pulls), state.unreadable is None
