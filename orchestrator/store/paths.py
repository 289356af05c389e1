"""Where a sweep keeps what is not a table row: every artefact's path, relative to the sweep's folder, written once.

Stage 1 (`orchestrator.stage1.collection`), stage 2 (`orchestrator.stage2.search`), healing (`orchestrator.runtime.heal`), more models
(`orchestrator.generate`) and the report all name their files through here; `Store.path(relpath)` and
`Store.write_bytes(relpath, ...)` place them under the sweep (a local folder or an object store).

    models/<cell>.pt                            the source network's weights (stage 1; `sources.model_path`)
    models/<cell>.snapshot_scores.pt            the snapshots' scores on val and test (stage 1)
    models/trials/<cell>/<trial>.pt             a completed trial's generator: AE, normaliser, EMA denoiser
    _ray/                                       Ray Train / Tune storage; `_ray/source-<cell>/` a cell's stage-1
                                                run, its checkpoints, deleted once the cell's rows are written
    optuna/<cell>.log                           the cell's Optuna study, a journal optuna-dashboard opens
    generated_more/                             more vectors, from orchestrator.generate before it wrote outside
    report/                                     the report (`orchestrator.report`)
    quarantine/                                 files healing moved aside (never deleted)

The tables themselves are `<table>/<cell>/<writer>.parquet` (`orchestrator.store.tables`).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["GENERATED_MORE", "MODELS", "OPTUNA", "QUARANTINE", "RAY", "REPORT", "is_sweep_name",
           "journal", "snapshot_scores", "source_files", "source_model", "source_run", "source_run_dir", "trial_model"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a sweep name: one folder name, never . or ..

MODELS = "models"
RAY = "_ray"
OPTUNA = "optuna"
GENERATED_MORE = "generated_more"
REPORT = "report"
QUARANTINE = "quarantine"


def is_sweep_name(name: Any) -> bool:
    """A slug that names exactly one folder below the storage root (never '.', '..' or a path)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def source_model(cell_id: str) -> str:
    """The cell's trained source network (a state dict)."""
    return f"{MODELS}/{cell_id}.pt"


def snapshot_scores(cell_id: str) -> str:
    """The cell's snapshots' scores as stage 1 measured them (`pdiff.evaluate.Scores` as a dict)."""
    return f"{MODELS}/{cell_id}.snapshot_scores.pt"


def source_files(cell_id: str) -> tuple[str, str]:
    """The files stage 1 writes for a cell beside its rows (healing checks that they load)."""
    return source_model(cell_id), snapshot_scores(cell_id)


def trial_model(cell_id: str, trial_id: str) -> str:
    """A completed trial's generator (`pdiff.pipeline.generator_state`), written before its `trials` row."""
    return f"{MODELS}/trials/{cell_id}/{trial_id}.pt"


def source_run(cell_id: str) -> str:
    """The name of the cell's Ray Train run: one per cell, so that Train V2, which resumes a run whose
    name exists, continues it after any restart."""
    return f"source-{cell_id}"


def source_run_dir(cell_id: str) -> str:
    """The folder of the cell's Ray Train run (its checkpoints)."""
    return f"{RAY}/{source_run(cell_id)}"


def journal(cell_id: str) -> str:
    """The cell's Optuna study, as a journal file."""
    return f"{OPTUNA}/{cell_id}.log"

