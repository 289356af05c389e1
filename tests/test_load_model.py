"""`from orchestrator import load_model`: a generated model, a snapshot or the source of the shared tiny sweep,
as a network that scores exactly what the tables report, read without writing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_sweep import tree_state

from orchestrator import load_model
from pdiff import ParameterSubset
from pdiff.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)  # the tiny sweep's cells all have seed 0


def _test_acc(model: torch.nn.Module, data) -> float:
    with torch.no_grad():
        return (model(data.test.x).argmax(1) == data.test.y).double().mean().item()


def _rows(store, table: str, columns: list[str], n: int):
    frame = store.read_pandas(table, columns=columns, heavy=False)
    return frame.iloc[[0, len(frame) // 2, len(frame) - 1]].head(n)


def test_models_score_what_the_tables_report(finished_sweep, digits):
    before = tree_state(Path(finished_sweep.root))
    for r in finished_sweep.read_pandas("sources", columns=["cell_id", "test_acc"]).itertuples():
        assert _test_acc(load_model(finished_sweep.root, r.cell_id), digits) == pytest.approx(r.test_acc, abs=1e-6)
    for r in _rows(finished_sweep, "checkpoints", ["cell_id", "index", "test_acc"], 3).itertuples():
        snapshot = load_model(finished_sweep.root, r.cell_id, int(r.index))
        assert _test_acc(snapshot, digits) == pytest.approx(r.test_acc, abs=1e-6)
    generated = _rows(finished_sweep, "generated", ["trial_id", "index", "test_acc"], 3)
    for r in generated.itertuples():
        model = load_model(finished_sweep.root, r.trial_id, int(r.index))
        assert not model.training
        assert _test_acc(model, digits) == pytest.approx(r.test_acc, abs=1e-6)
    assert tree_state(Path(finished_sweep.root)) == before  # a reader never writes


def test_a_generated_model_carries_its_own_vector(finished_sweep):
    """The subset of a loaded generated model is its stored vector, bit for bit; the rest is the source's."""
    row = finished_sweep.read_pandas("generated", columns=["cell_id", "trial_id", "index", "params"]).iloc[-1]
    source_row = finished_sweep.read_pandas("sources", columns=["cell_id", "subset"])
    subset_names = list(source_row[source_row.cell_id == row.cell_id].subset.iloc[0])
    model = load_model(finished_sweep.root, row.trial_id, int(row["index"]))
    subset = ParameterSubset.select(model, subset_names)
    assert torch.equal(subset.flatten(model), torch.tensor(row.params, dtype=torch.float32))
    source = load_model(finished_sweep.root, row.cell_id)
    assert not torch.equal(subset.flatten(source), subset.flatten(model))
    rest = [n for n, _ in model.named_parameters() if n not in subset.names]
    assert rest and all(torch.equal(dict(model.named_parameters())[n], dict(source.named_parameters())[n])
                        for n in rest)


@pytest.mark.parametrize("args, says", [
    (("no-such-model",), "neither a trial nor a cell"),
    (("<trial>",), "name which of its generated models"),
    (("<trial>", 10_000), "has no model 10000"),
    (("<cell>", -1), "has no model -1"),
])
def test_what_names_nothing_is_one_line(finished_sweep, args, says):
    trials = finished_sweep.read_pandas("trials", columns=["trial_id", "cell_id", "status"])
    done = trials[trials.status == "completed"].iloc[0]
    args = tuple(done.trial_id if a == "<trial>" else done.cell_id if a == "<cell>" else a for a in args)
    with pytest.raises(ValueError, match=says) as err:
        load_model(finished_sweep.root, *args)
    assert "\n" not in str(err.value)


def test_a_folder_that_is_no_sweep_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_model(tmp_path / "nothing", "x")
