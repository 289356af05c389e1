"""Drawing more vectors from a finished trial (issue 11, part 3), on a copy of the shared tiny sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_sweep import N, tree_state

from orchestrator import generate
from orchestrator.generate import main
from orchestrator.store.paths import trial_model as trial_model_relpath
from orchestrator.store.tables import Store


@pytest.fixture(scope="module")
def sweep_copy(finished_sweep, tmp_path_factory) -> Store:
    dest = tmp_path_factory.mktemp("generate")
    shutil.copytree(finished_sweep.root, dest / "tiny", ignore=shutil.ignore_patterns("_ray", "report", "_lease*"))
    return Store(str(dest), "tiny")


def _completed(store: Store):
    trials = store.read_pandas("trials")
    return trials[trials.status == "completed"].iloc[0]


SCORES = ["val_acc", "test_acc", "test_max_iou", "val_max_iou", "nearest_l2"]


def test_same_seed_reproduces_the_trials_generated_rows(sweep_copy, tmp_path, monkeypatch, capsys):
    """The default file (under ./generated/, not the sweep's folder) holds the trial's own vectors bit for bit,
    with its cell and the scores its `generated` rows hold (fractions, as that table's)."""
    monkeypatch.chdir(tmp_path)
    trial = _completed(sweep_copy)
    stored = sweep_copy.read_pandas("generated", trial.cell_id)
    stored = stored[stored.trial_id == trial.trial_id].sort_values("index")
    seed = _seed(sweep_copy, trial)
    sweep_before = tree_state(Path(sweep_copy.root))
    assert main([sweep_copy.root, trial.trial_id, "-n", str(N)]) == 0
    out = tmp_path / "generated" / f"tiny-{trial.trial_id}-n{N}-s{seed}.parquet"
    assert tree_state(Path(sweep_copy.root)) == sweep_before  # nothing written into the sweep
    table = pq.read_table(out)
    assert table.column_names == ["trial_id", "cell_id", "index", "seed", *SCORES, "params"]
    assert set(table.column("cell_id").to_pylist()) == {trial.cell_id}
    again = torch.tensor(table.column("params").to_pylist())
    torch.testing.assert_close(again, torch.tensor(np.stack(stored.params)), rtol=0, atol=0)  # same path and batch
    for column in SCORES:  # scored as stage 2 scored them
        np.testing.assert_allclose(table.column(column).to_numpy(), stored[column].to_numpy(), rtol=1e-6, atol=0,
                                   err_msg=column)
    assert 0 < table.column("test_acc").to_numpy().min() <= 1  # a fraction, not a percent
    meta = table.schema.field("test_acc").metadata
    assert meta[b"unit"] == b"fraction 0..1" and b"test split" in meta[b"meaning"]
    # 1,000 more, as the README says (`-n 1000`, to its default file): all written, all finite, and the
    # trial's own vectors come first (same noise stream, bigger batch).
    assert main([sweep_copy.root, trial.trial_id, "-n", "1000"]) == 0
    table = pq.read_table(tmp_path / "generated" / f"tiny-{trial.trial_id}-n1000-s{seed}.parquet")
    assert table.num_rows == 1000 and table.column("index").to_pylist() == list(range(1000))
    assert set(table.column("seed").to_pylist()) == {seed}
    assert set(table.column("trial_id").to_pylist()) == {trial.trial_id}
    more = torch.tensor(table.column("params").to_pylist())
    assert more.shape == (1000, again.shape[1]) and torch.isfinite(more).all()
    torch.testing.assert_close(more[:N], again, rtol=1e-3, atol=1e-4)
    assert table.column("test_acc").null_count == 0
    # Never overwritten silently.
    assert main([sweep_copy.root, trial.trial_id, "-n", str(N)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and err.count("\n") == 1


def test_no_score_writes_null_scores(sweep_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "_evaluate", no_work)
    trial = _completed(sweep_copy)
    out = tmp_path / "x.parquet"
    assert main([sweep_copy.root, trial.trial_id, "-n", "3", "--seed", "1", "--out", str(out), "--no-score"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 3 and all(table.column(c).null_count == 3 for c in SCORES)
    assert table.schema.field("val_acc").type == pa.float64()


def test_the_default_output_inside_the_sweep_is_refused(sweep_copy, monkeypatch, capsys):
    """Run from inside the sweep's folder, the default ./generated/ would be the sweep's: refused, nothing made."""
    monkeypatch.chdir(sweep_copy.root)
    monkeypatch.setattr(generate, "sample_vectors", no_work)
    before = tree_state(Path(sweep_copy.root))
    assert main([sweep_copy.root, _completed(sweep_copy).trial_id, "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the default output" in err and "inside the sweep's folder" in err, err
    assert tree_state(Path(sweep_copy.root)) == before


def test_a_failed_draw_leaves_no_default_folder(sweep_copy, tmp_path, monkeypatch, capsys):
    """Non-finite vectors: exit 2, one line, and the ./generated/ it made for the file is gone again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generate, "sample_vectors", lambda *a, **k: torch.full((2, 3), float("nan")))
    assert main([sweep_copy.root, _completed(sweep_copy).trial_id, "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 vectors are non-finite" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def no_work(*_a, **_k):
    raise AssertionError("reached work it should not")


def _seed(store: Store, trial) -> int:
    from orchestrator.generate import load_trial_model

    return load_trial_model(store, trial.cell_id, trial.trial_id)["seed"]


def test_score_prints_accuracy_beside_the_family_signals(sweep_copy, tmp_path, capsys):
    trial = _completed(sweep_copy)
    assert main([sweep_copy.root, trial.trial_id, "-n", "6", "--seed", "5", "--out", str(tmp_path / "x.parquet"),
                 "--score"]) == 0
    out = capsys.readouterr().out
    for signal in ("test accuracy: mean", "max IoU to the snapshots", "pairwise_iou", "distinct_sets",
                   "spread_ratio", "collapsed"):
        assert signal in out, out
    assert len(pq.read_table(tmp_path / "x.parquet")) == 6


def test_refusals_are_one_line_with_exit_2(sweep_copy, tmp_path, capsys):
    assert main([sweep_copy.root, "tdeadbeef00", "-n", "4", "--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err
    assert "unknown trial 'tdeadbeef00'" in err and _completed(sweep_copy).trial_id in err
    assert err.count("\n") == 1
    # A trial whose generator file is gone (from before trials kept their models, or deleted).
    trial = _completed(sweep_copy)
    model = Path(sweep_copy.path(trial_model_relpath(trial.cell_id, trial.trial_id)))
    moved = model.with_suffix(".bak")
    model.rename(moved)
    try:
        assert main([sweep_copy.root, trial.trial_id, "-n", "4", "--out", str(tmp_path / "b.pt")]) == 2
        assert "has no usable generator" in capsys.readouterr().err
    finally:
        moved.rename(model)
    assert not (tmp_path / "b.pt").exists()


def test_a_failed_trial_is_refused(sweep_copy, tmp_path, capsys):
    cell = _completed(sweep_copy).cell_id
    path = sweep_copy.write("trials", cell, "tfa11ed0000", [{"trial_id": "tfa11ed0000", "status": "failed",
                                                              "reason": "ldm loss went non-finite at step 3"}])
    try:
        assert main([sweep_copy.root, "tfa11ed0000", "-n", "4", "--out", str(tmp_path / "c.pt")]) == 2
        err = capsys.readouterr().err
        assert "trial tfa11ed0000 failed (ldm loss went non-finite" in err and err.count("\n") == 1
    finally:
        Path(path).unlink()


@pytest.mark.parametrize("denoiser", ["mlp", "unet"])
def test_generator_state_round_trip_samples_what_the_run_samples(denoiser):
    """pdiff level, no sweep: a saved and restored generator draws the same vectors as the trained one."""
    import io

    from pdiff.autoencoder import AEConfig, train_autoencoder
    from pdiff.diffusion import LDMConfig, train_diffusion
    from pdiff.pipeline import PdiffConfig, PdiffRun, generator_state, restore_generator, sample_vectors

    cfg = PdiffConfig(AEConfig(latent_dim=8, channels=(8, 8), steps=5, normalize="tensor"),
                      LDMConfig(timesteps=50, denoiser=denoiser, channels=(8, 16), steps=30, batch_size=4, lr=1e-2),
                      sampler="ddim", sample_steps=4)
    snapshots = torch.randn(6, 60, generator=torch.Generator().manual_seed(0))
    ae = train_autoencoder(snapshots, cfg.ae, seed=1, segments=[40, 20])
    ldm = train_diffusion(ae.encode(snapshots), cfg.ldm, seed=1)
    buf = io.BytesIO()
    torch.save(generator_state(PdiffRun(None, 0.0, 0.0, {}, ae=ae, ldm=ldm), cfg, seed=7), buf)
    ae2, ldm2, cfg2 = restore_generator(torch.load(io.BytesIO(buf.getvalue())))
    assert cfg2 == cfg
    want = sample_vectors(ae, ldm, 5, sampler="ddim", steps=4, seed=7)
    torch.testing.assert_close(sample_vectors(ae2, ldm2, 5, sampler="ddim", steps=4, seed=7), want, rtol=0, atol=0)
    # The test can tell the EMA denoiser from the raw one (which a generator must not use).
    ldm.ema.module.load_state_dict(ldm.denoiser.state_dict())
    assert (sample_vectors(ae, ldm, 5, sampler="ddim", steps=4, seed=7) - want).abs().max() > 1e-6
    if denoiser == "unet":  # a format-1 file (before the MLP denoiser) names no denoiser: it holds a UNet
        old = torch.load(io.BytesIO(buf.getvalue()))
        old["format"] = 1
        del old["config"]["ldm"]["denoiser"]
        ae3, ldm3, cfg3 = restore_generator(old)
        assert cfg3 == cfg
        torch.testing.assert_close(sample_vectors(ae3, ldm3, 5, sampler="ddim", steps=4, seed=7), want, rtol=0, atol=0)
