"""Progress of a generation, reported through a callback: the pipeline draws nothing itself.

A callback receives a `Progress` when a stage starts (done = 0) and after each of its steps. It may
raise to stop the generation there (the exception reaches the caller; nothing is kept of the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    stage: str  # "semantic", "coarse" or "fine"
    done: int  # steps done so far
    total: int  # steps in this stage (an upper bound for "semantic": a text may stop early)
    unit: str  # what a step is: "token" or "window"


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Counts one stage's steps and tells the callback (if any)."""

    def __init__(self, callback: ProgressCallback | None, stage: str, total: int, unit: str):
        self._callback, self._stage, self._total, self._unit, self.done = callback, stage, total, unit, 0
        self._tell()

    def _tell(self) -> None:
        if self._callback is not None:
            self._callback(Progress(self._stage, self.done, self._total, self._unit))

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tell()
