"""The cells stage 1 has stored: their health, which are pending, the source model, the snapshots and their
scores, as later stages and commands read them back."""

from __future__ import annotations

import io

import torch

from orchestrator.spec import Cell, SweepSpec
from orchestrator.store import paths
from orchestrator.store.tables import Store
from pdiff import ParameterSubset, build_model
from pdiff.data import Dataset
from pdiff.evaluate import BatchedEvaluator, Scores


def save_object(store: Store, relpath: str, obj) -> None:
    """`torch.save` an object to a file of the sweep (local or object storage)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    store.write_bytes(relpath, buf.getvalue())


def load_object(store: Store, relpath: str, device: torch.device | str = "cpu"):
    """An object `save_object` wrote, its tensors on `device`."""
    return torch.load(io.BytesIO(store.read_bytes(relpath)), map_location=device)


def cell_health(store: Store) -> dict[str, tuple[str, str | None]]:
    """cell id -> (status, reason) of each collected cell (`healthy` where the tables predate the check)."""
    rows = store.read_pandas("sources")
    if rows.empty:
        return {}
    status = rows["status"] if "status" in rows else ["healthy"] * len(rows)
    reason = rows["reason"] if "reason" in rows else [None] * len(rows)
    return {c: (st if isinstance(st, str) else "healthy", r if isinstance(r, str) else None)
            for c, st, r in zip(rows["cell_id"], status, reason)}


def pending_cells(spec: SweepSpec, store: Store) -> list[Cell]:
    """Cells without a `sources` row (their commit marker)."""
    done = set(store.read("sources", columns=["cell_id"]).column("cell_id").to_pylist())
    return [c for c in spec.cells if c.cell_id not in done]


def load_source_model(store: Store, arch: str, model_path: str, data: Dataset,
                      device: torch.device | str = "cpu") -> torch.nn.Module:
    """A cell's trained source network, rebuilt from its saved weights (`sources.model_path`)."""
    model = build_model(arch, channels=data.channels, classes=data.classes, image_size=data.image_size)
    model.load_state_dict(load_object(store, model_path, device))
    return model.to(device).eval()


def source_evaluator(store: Store, cell_id: str, arch: str, subset, data: Dataset,
                     device: torch.device | str = "cpu") -> BatchedEvaluator:
    """What scores a cell's vectors: its source network, each vector put in as the `subset` parameters."""
    model = load_source_model(store, arch, paths.source_model(cell_id), data, device)
    return BatchedEvaluator(model, ParameterSubset.select(model, subset))


def load_snapshots(store: Store, cell_id: str) -> torch.Tensor:
    """The cell's K snapshots of its subset, in their collection order (K x subset size, float32)."""
    table = store.read("checkpoints", cell_id, columns=["index", "params"]).sort_by("index")
    return torch.tensor(table.column("params").to_pylist(), dtype=torch.float32)


def load_snapshot_scores(store: Store, cell_id: str) -> Scores:
    """The snapshots' scores as stage 1 measured them: trials compare against them without rescoring."""
    return Scores(**load_object(store, paths.snapshot_scores(cell_id)))


def drop_run(store: Store, cell_id: str) -> None:
    """Delete a finished cell's run folder, its checkpoints with it (only inside `<sweep>/_ray/`).
    A cell trained again later (healing) then starts afresh instead of resuming a finished run."""
    store.delete_inside(paths.source_run_dir(cell_id))
