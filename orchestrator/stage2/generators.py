"""A completed trial's generator (AE decoder, LDM, normalisation), stored before its `trials` row."""

from __future__ import annotations

import io

import torch

from orchestrator.store import paths
from orchestrator.store.tables import Store
from pdiff.pipeline import PdiffConfig, PdiffRun, generator_state


def save_trial_model(store: Store, cell_id: str, trial_id: str, run: PdiffRun, cfg: PdiffConfig, seed: int) -> str:
    """Write a completed trial's generator (before its `trials` row, the commit marker)."""
    buf = io.BytesIO()
    torch.save(generator_state(run, cfg, seed) | {"cell_id": cell_id, "trial_id": trial_id}, buf)
    return store.write_bytes(paths.trial_model(cell_id, trial_id), buf.getvalue())
