"""Drawing more vectors from a finished trial (issue 11, part 3), on a copy of the shared tiny sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_sweep import N

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


def test_same_seed_reproduces_the_trials_generated_vectors(sweep_copy, capsys):
    trial = _completed(sweep_copy)
    stored = sweep_copy.read_pandas("generated", trial.cell_id)
    stored = torch.tensor(np.stack(stored[stored.trial_id == trial.trial_id].sort_values("index").params))
    seed = _seed(sweep_copy, trial)
    assert main([sweep_copy.root, trial.trial_id, "-n", str(N)]) == 0
    out = Path(sweep_copy.root) / "generated_more" / f"{trial.trial_id}-{N}-{seed}.parquet"
    again = torch.tensor(pq.read_table(out).column("params").to_pylist())
    torch.testing.assert_close(again, stored, rtol=0, atol=0)  # the same code path and batch: bit for bit
    # 1,000 more, as the README says (`-n 1000`, to its default file): all written, all finite, and the
    # trial's own vectors come first (same noise stream, bigger batch).
    assert main([sweep_copy.root, trial.trial_id, "-n", "1000"]) == 0
    table = pq.read_table(Path(sweep_copy.root) / "generated_more" / f"{trial.trial_id}-1000-{seed}.parquet")
    assert table.num_rows == 1000 and table.column("index").to_pylist() == list(range(1000))
    assert set(table.column("seed").to_pylist()) == {seed}
    assert set(table.column("trial_id").to_pylist()) == {trial.trial_id}
    more = torch.tensor(table.column("params").to_pylist())
    assert more.shape == (1000, stored.shape[1]) and torch.isfinite(more).all()
    torch.testing.assert_close(more[:N], stored, rtol=1e-3, atol=1e-4)
    # Never overwritten silently.
    assert main([sweep_copy.root, trial.trial_id, "-n", str(N)]) == 2
    assert "exists" in capsys.readouterr().err


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
