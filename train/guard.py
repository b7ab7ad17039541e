"""Never train on silently: NaN/inf losses and loss spikes stop the run or skip the batch, per the recipe."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from recipes.training import StageSection
from stagekit.io import StageError

MIN_HISTORY = 5  # accepted steps needed before the spike test means anything


class TrainingDiverged(StageError):
    """The loss went non-finite or spiked and the recipe says stop (or too many batches were skipped)."""


@dataclass
class LossGuard:
    factor: float
    window: int
    policy: str
    max_skipped: int
    history: list[float] = field(default_factory=list)
    skipped: int = 0
    consecutive: int = 0

    @classmethod
    def from_section(cls, section: StageSection) -> LossGuard:
        return cls(
            section.loss_spike_factor,
            section.loss_spike_window,
            section.loss_spike_policy,
            section.max_skipped_steps,
        )

    def problem(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self.factor and len(self.history) >= MIN_HISTORY:
            reference = statistics.median(self.history)
            if loss > self.factor * reference:
                return (
                    f"loss {loss:.4f} spiked above {self.factor} x {reference:.4f} "
                    f"(the median of the last {len(self.history)} steps)"
                )
        return None

    def accept(self, step: int, loss: float, stage: str) -> bool:
        """True: apply this step's update. False: skip it. Raises TrainingDiverged under policy stop."""
        problem = self.problem(loss)
        if problem is None:
            self.history = (self.history + [loss])[-self.window :]
            self.consecutive = 0
            return True
        hint = f"train.{stage}.loss_spike_policy"
        if self.policy == "stop":
            raise TrainingDiverged(
                f"{stage} step {step}: {problem}; stopping ({hint}=stop; 'skip' skips such batches)"
            )
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_skipped:
            raise TrainingDiverged(
                f"{stage} step {step}: {problem}; {self.consecutive} consecutive steps skipped, more than "
                f"train.{stage}.max_skipped_steps={self.max_skipped}"
            )
        return False

    def state_dict(self) -> dict:
        return {"history": self.history, "skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.skipped, self.consecutive = (
            list(state["history"]),
            state["skipped"],
            state["consecutive"],
        )
