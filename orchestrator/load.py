"""A model of a finished sweep as a ready `torch.nn.Module`: a generated model, a snapshot or the source.

    from orchestrator import load_model
    model = load_model("results/smoke", "<trial_id>", 0)    # generated model 0 of a trial
    model = load_model("results/smoke", "<cell_id>", 17)    # snapshot 17 of a cell
    model = load_model("results/smoke", "<cell_id>")        # the cell's source model (`sources.test_acc`)

Each is the cell's stored source network (`models/<cell>.pt`: its weights, and the BatchNorm buffers every
snapshot and generated model of the cell is scored with) with the subset replaced by the vector the tables hold
(`generated.params`, `checkpoints.params`), in eval mode: it scores what the tables report.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow.compute as pc

from orchestrator.store.locate import sweep_folder
from orchestrator.store.tables import Store

__all__ = ["load_model"]


def _row(store: Store, table: str, column: str, value: str, columns: list[str]) -> dict[str, Any] | None:
    rows = store.read(table, columns=columns, heavy=False, where=pc.field(column) == value).to_pylist()
    return rows[0] if rows else None


def _params(store: Store, table: str, cell_id: str, index: int, what: str, **match: str) -> list[float]:
    where = pc.field("index") == index
    for column, value in match.items():
        where &= pc.field(column) == value
    rows = store.read(table, cell_id, columns=["params"], where=where)
    if rows.num_rows == 0:
        raise ValueError(f"{what} has no model {index} in {table}")
    return rows.column("params")[0].as_py()


def _locate(store: Store, model_id: str, index: int | None) -> tuple[str, list[float] | None]:
    """(cell id, the subset's vector; None for the source) of what `model_id` and `index` name."""
    trial = _row(store, "trials", "trial_id", model_id, ["trial_id", "cell_id"])
    if trial is not None:
        if index is None:
            raise ValueError(f"{model_id} is a trial: name which of its generated models (an index)")
        return trial["cell_id"], _params(store, "generated", trial["cell_id"], index, f"trial {model_id}",
                                         trial_id=model_id)
    if _row(store, "sources", "cell_id", model_id, ["cell_id"]) is not None:
        return model_id, None if index is None else _params(store, "checkpoints", model_id, index, f"cell {model_id}")
    raise ValueError(f"{model_id!r} is neither a trial nor a cell of {store.uri}")


def load_model(sweep_dir: str, model_id: str, index: int | None = None, *, device: str = "cpu"):
    """The network `model_id` (a trial id with the index of one of its generated models, or a cell id with a
    snapshot index, or a cell id alone for its source) names in the sweep at `sweep_dir`; ValueError (one line)
    where it names nothing there."""
    # torch and pdiff load here, not with the package: `orchestrator.query` and the report import no torch.
    import torch

    from pdiff import ParameterSubset, build_model
    from pdiff.data import DATASET_SHAPES

    store = sweep_folder(str(sweep_dir))
    cell_id, vector = _locate(store, model_id, index)
    source = _row(store, "sources", "cell_id", cell_id, ["arch", "dataset", "subset", "model_path"])
    channels, classes, image_size = DATASET_SHAPES[source["dataset"]]
    model = build_model(source["arch"], channels=channels, classes=classes, image_size=image_size)
    model.load_state_dict(torch.load(io.BytesIO(store.read_bytes(source["model_path"])), map_location="cpu"))
    if vector is not None:
        ParameterSubset.select(model, source["subset"]).load(model, torch.tensor(vector, dtype=torch.float32))
    return model.to(device).eval()
