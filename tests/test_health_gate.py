"""Stage 1 checks its snapshots before stage 2 builds on them: a diverged collection is a failed cell.

The spec is the one that went through silently before the check existed: cnn_small's middle convolution
(`conv2.*`) collected at the source's own lr 0.05, where BatchNorm in eval mode no longer makes the
subset scale-invariant (the snapshots fall to chance within a few steps). The mlp cell beside it is healthy
and must go on.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from tiny_sweep import TINY, run_sweep

from orchestrator.store.tables import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    spec = copy.deepcopy(TINY) | {"name": "gate"}
    spec["sources"]["subset"] = {"cnn_small": ["conv2.*"]}
    spec["pdiff"] |= {"num_samples": 1, "objective": ["accuracy"]}
    path = tmp_path_factory.mktemp("spec") / "gate.yaml"
    path.write_text(yaml.safe_dump(spec))
    storage = tmp_path_factory.mktemp("results")
    proc = run_sweep(path, storage)
    return Store(str(storage), "gate"), proc


def test_a_diverged_collection_fails_its_cell_with_the_knob_to_change(gated):
    store, proc = gated
    sources = store.read_pandas("sources").set_index("arch")
    bad, good = sources.loc["cnn_small"], sources.loc["mlp"]
    assert bad.status == "failed", bad.to_dict()
    assert "collection diverged" in bad.reason and "lower sources.collect.lr (now 0.05)" in bad.reason
    assert 100 * (bad.source_val_acc - bad.snapshot_val_acc) > 5
    assert good.status != "failed", good.to_dict()
    # No baselines or trials for the failed cell; the healthy one went on.
    trials, baselines = store.read_pandas("trials"), store.read_pandas("baselines", heavy=False)
    assert set(trials.cell_id) == {good.cell_id} and set(baselines.cell_id) == {good.cell_id}
    # The console says so, in the sources line, before stage 2, and in the summary.
    out = proc.stdout
    assert f"{bad.cell_id}: no baselines or trials: collection diverged" in out
    assert "COLLECTION FAILED" in out


def test_every_cell_records_its_snapshots_leave_one_out_reference(gated):
    store, _ = gated
    sources = store.read_pandas("sources")
    for row in sources.itertuples():
        assert 0 < row.snapshot_loo_max_iou <= 1 and 0 < row.snapshot_loo_val_max_iou <= 1
        assert row.snapshot_loo_l2 > 0
    trial = store.read_pandas("trials").iloc[0]
    assert trial.verdict in ("collapsed", "memorising", "novel")
    cell = sources.set_index("cell_id").loc[trial.cell_id]
    assert trial.snapshot_loo_max_iou == pytest.approx(cell.snapshot_loo_max_iou)
