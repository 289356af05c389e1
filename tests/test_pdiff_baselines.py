"""pdiff.baselines: noise, snapshot average, per-coordinate Gaussian (Zeng et al. 2025)."""

from __future__ import annotations

import pytest
import torch

from pdiff.baselines import BASELINES, coordinate_gaussian, snapshot_average, snapshot_noise
from pdiff.pipeline import run_baselines


@pytest.fixture
def snaps():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 30, generator=g) * torch.linspace(0.1, 2, 30) + torch.linspace(-5, 5, 30)


@pytest.mark.parametrize("name", list(BASELINES))
def test_shapes_and_seeding(snaps, name):
    out = BASELINES[name](snaps, 7, torch.Generator().manual_seed(1))
    assert out.shape == (7, 30) and torch.isfinite(out).all()
    again = BASELINES[name](snaps, 7, torch.Generator().manual_seed(1))
    other = BASELINES[name](snaps, 7, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_noise_with_zero_sigma_reproduces_snapshots(snaps):
    out = snapshot_noise(snaps, 25, torch.Generator().manual_seed(0), sigma=0.0)
    matches = (out[:, None, :] == snaps[None]).all(-1)  # (25, 40)
    assert matches.any(1).all()
    noisy = snapshot_noise(snaps, 2000, torch.Generator().manual_seed(0), sigma=0.1)
    residual = noisy - snaps[torch.cdist(noisy, snaps).argmin(1)]
    assert float(residual.std()) == pytest.approx(0.1, rel=0.1)


def test_average_of_16_lies_in_the_snapshots_range(snaps):
    out = snapshot_average(snaps, 50, torch.Generator().manual_seed(0), m=16)
    lo, hi = snaps.min(0).values, snaps.max(0).values
    assert ((out >= lo) & (out <= hi)).all()
    # An average of 16 has a quarter of the snapshots' spread (less, without replacement).
    assert float(out.std(0).mean()) < 0.4 * float(snaps.std(0).mean())
    # With fewer snapshots than m, every draw is the mean of all of them.
    few = snapshot_average(snaps[:5], 3, torch.Generator().manual_seed(0), m=16)
    torch.testing.assert_close(few, snaps[:5].mean(0).expand(3, -1))


def test_gaussian_matches_coordinate_moments(snaps):
    out = coordinate_gaussian(snaps, 20_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(0), snaps.mean(0), rtol=0, atol=0.05)
    torch.testing.assert_close(out.std(0), snaps.std(0), rtol=0.05, atol=0.0)


def test_run_baselines(collected, evaluator):
    c, data = collected.collection, collected.data
    out = run_baselines(c.snapshots, evaluator, data, c.scores, 6, seed=0)
    assert set(out) == {"noise", "average", "gaussian"}
    for name, a in out.items():
        assert a.vectors.shape == (6, c.subset.numel)
        assert a.scores.test_acc.shape == (6,)
        assert a.test_max_iou.shape == (6,) and a.val_max_iou.shape == (6,) and a.nearest_l2.shape == (6,)
        assert set(a.summary) >= {"selected_acc", "best_test_acc", "mean_acc", "median_acc", "test_max_iou",
                                  "val_max_iou"}
        assert 0.0 <= a.summary["test_max_iou"] <= 1.0 and 0.0 <= a.summary["val_max_iou"] <= 1.0
        # Every baseline stays near the snapshots on digits: far above chance.
        assert a.summary["mean_acc"] > 50.0, (name, a.summary)
    zero = run_baselines(c.snapshots, evaluator, data, c.scores, 4, seed=0, noise_sigma=0.0)["noise"]
    assert float(zero.nearest_l2.max()) < 1e-5
    torch.testing.assert_close(zero.test_max_iou, torch.ones(4))
    torch.testing.assert_close(zero.val_max_iou, torch.ones(4))
