"""The `curves` table: each trial's AE and LDM training losses, decimated to at most `CURVE_POINTS`
points per phase (each point the mean loss of the steps since the previous one)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from orchestrator.store.tables import Store

CURVE_POINTS = 200  # points per phase and trial in the `curves` table


# -- loss curves ---------------------------------------------------------------


def decimate(steps: Sequence[int], losses: Sequence[float], max_points: int = CURVE_POINTS) -> list[tuple[int, float]]:
    """At most `max_points` (step, loss) points of a curve: the points as they are when there are few
    enough, else `max_points` consecutive bins, each giving its last step and its mean loss."""
    steps, losses = np.asarray(steps, dtype=np.int64), np.asarray(losses, dtype=np.float64)
    n = len(losses)
    if n <= max_points:
        return [(int(s), float(v)) for s, v in zip(steps, losses)]
    edges = np.linspace(0, n, max_points + 1).round().astype(int)
    return [(int(steps[b - 1]), float(losses[a:b].mean())) for a, b in zip(edges[:-1], edges[1:])]


class LossRecorder:
    """`on_step(phase, step, loss)` for `pdiff.run_pdiff` that keeps what it sees and passes it on (to the
    progress reporter). The losses it saw are the curve of a run that raised (a diverged trial); a run that
    finished has every step's loss (`PdiffRun.ae.losses`, `.ldm.losses`), which `rows` prefers."""

    def __init__(self, forward: Callable[[str, int, float], None] | None = None):
        self.forward = forward
        self.seen: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, phase: str, step: int, loss: float) -> None:
        self.seen.setdefault(phase, []).append((int(step), float(loss)))
        if self.forward:
            self.forward(phase, step, loss)

    def curves(self, run=None) -> dict[str, tuple[list[int], list[float]]]:
        out = {phase: ([s for s, _ in points], [v for _, v in points]) for phase, points in self.seen.items()}
        for phase, model in (("ae", getattr(run, "ae", None)), ("ldm", getattr(run, "ldm", None))):
            losses = list(getattr(model, "losses", None) or [])
            if losses:
                out[phase] = (list(range(len(losses))), losses)
        return out

    def rows(self, trial_id: str, run=None, max_points: int = CURVE_POINTS) -> list[dict[str, Any]]:
        return [{"trial_id": trial_id, "phase": phase, "step": step, "loss": loss}
                for phase, (steps, losses) in sorted(self.curves(run).items())
                for step, loss in decimate(steps, losses, max_points)]


def write_curves(store: Store, cell_id: str, trial_id: str, recorder: LossRecorder, run=None) -> None:
    """The trial's `curves` file (before its `trials` row); none where no loss was seen."""
    rows = recorder.rows(trial_id, run)
    if rows:
        store.write("curves", cell_id, trial_id, rows)
    else:
        store.delete("curves", cell_id, trial_id)
