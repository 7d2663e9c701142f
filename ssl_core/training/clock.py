"""Where an optimizer step sits in a run: what per-iteration schedules (and method hooks) read."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepClock:
    """Where an optimizer step sits in the run: what per-iteration schedules are functions of."""
    step: int               # 0-based index of this optimizer step over the whole run
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> float:
        """Epochs finished before this step, fractional: 0.5 = half-way through the first epoch."""
        return self.step / max(self.steps_per_epoch, 1)

    @property
    def progress(self) -> float:
        """Fraction of the run finished before this step, in [0, 1)."""
        return self.step / max(self.total_steps, 1)
