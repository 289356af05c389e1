"""pdiff.collect: train a source, collect K distinct snapshots of only the subset, score them."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import TINY_COLLECT, _quiet

from pdiff import DEFAULT_SUBSET, CollectConfig, ParameterSubset, TrainConfig, build_model
from pdiff.collect import Collection, accuracy, collect, collect_snapshots, train_source
from pdiff.data import Dataset, Split


def test_source_model_learns(collected):
    c = collected.collection
    assert isinstance(c, Collection)
    assert c.test_acc > 0.9  # digits with cnn_small: ~96% after 10 epochs
    assert c.seconds > 0
    assert accuracy(collected.source, collected.data.test) == pytest.approx(c.test_acc, abs=0.02)


def test_collection_has_k_distinct_snapshots(collected):
    c = collected.collection
    k = TINY_COLLECT["k"]
    assert c.snapshots.shape == (k, c.subset.numel) and c.snapshots.dtype == torch.float32
    assert len(torch.unique(c.snapshots, dim=0)) == k
    # Consecutive snapshots are close (small steps) but not equal.
    steps = (c.snapshots[1:] - c.snapshots[:-1]).norm(dim=1)
    assert (steps > 0).all()
    assert float(steps.max()) < 0.2 * float(c.snapshots.norm(dim=1).mean())


def test_snapshot_scores(collected):
    c, data = collected.collection, collected.data
    k = len(c.snapshots)
    assert c.scores.val_acc.shape == (k,) and c.scores.test_acc.shape == (k,)
    assert c.scores.test_wrong.shape == (k, len(data.test))
    assert ((c.scores.val_acc >= 0) & (c.scores.val_acc <= 1)).all()
    assert float(c.scores.test_acc.min()) > 0.85
    torch.testing.assert_close(c.scores.test_acc, 1 - c.scores.test_wrong.float().mean(1))
    # Cross-check one snapshot against a plain forward pass of the loaded model.
    model = copy.deepcopy(c.model)
    c.subset.load(model, c.snapshots[7])
    assert accuracy(model, data.test) == pytest.approx(float(c.scores.test_acc[7]), abs=1e-6)
    assert accuracy(model, data.val) == pytest.approx(float(c.scores.val_acc[7]), abs=1e-6)


def test_only_the_subset_changes(collected):
    model = collected.fresh_source()
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
    before = copy.deepcopy(model.state_dict())
    snaps = collect_snapshots(model, subset, collected.data, CollectConfig(k=5, interval=1, lr=0.05),
                              seed=3, batch_size=64, log=_quiet)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(subset.names)  # BatchNorm running stats stay frozen too
    assert torch.equal(snaps[-1], subset.flatten(model))  # the last snapshot is the final state
    assert not torch.equal(snaps[0], subset.flatten(collected.source))  # taken after a step


def _tiny_collect(seed: int, unit: str = "step", k: int = 6) -> Collection:
    model = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=seed)
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
    from pdiff import load_dataset

    data = load_dataset("digits", seed=seed)
    return collect(model, subset, data, TrainConfig(epochs=2, batch_size=64, lr=0.05),
                   CollectConfig(k=k, interval=1, unit=unit, lr=0.05), seed=seed, log=_quiet)


def test_collection_is_deterministic_under_a_seed():
    a, b, c = _tiny_collect(1), _tiny_collect(1), _tiny_collect(2)
    assert a.test_acc == b.test_acc
    assert torch.equal(a.snapshots, b.snapshots)
    assert torch.equal(a.scores.val_acc, b.scores.val_acc)
    assert not torch.equal(a.snapshots, c.snapshots)


def test_unit_epoch(collected):
    model = collected.fresh_source()
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
    lines = []
    snaps = collect_snapshots(model, subset, collected.data, CollectConfig(k=3, interval=1, unit="epoch", lr=0.05),
                              seed=0, batch_size=256, log=lines.append)
    assert snaps.shape == (3, subset.numel)
    assert len(torch.unique(snaps, dim=0)) == 3
    steps_per_epoch = -(-len(collected.data.train) // 256)
    # One snapshot per epoch: the log reports the step count at the last one.
    assert any(f"after {3 * steps_per_epoch} steps" in line for line in lines), lines


def test_interval_spaces_snapshots(collected):
    runs = {}
    for interval in (1, 3):
        model = collected.fresh_source()
        subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
        runs[interval] = collect_snapshots(model, subset, collected.data,
                                           CollectConfig(k=6, interval=interval, lr=0.05),
                                           seed=0, batch_size=64, log=_quiet)
    # Same seed, same batches: every 3rd step snapshot of interval 1 is the interval-3 snapshot.
    torch.testing.assert_close(runs[3][:2], runs[1][[2, 5]], rtol=0, atol=1e-6)


def test_unknown_optimizer(collected):
    model = collected.fresh_source()
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
    with pytest.raises(ValueError, match="optimizer"):
        collect_snapshots(model, subset, collected.data, CollectConfig(k=2, optimizer="lion"), seed=0, log=_quiet)


def test_augment_is_a_per_image_reflect_crop_and_flip():
    import torch.nn.functional as F

    from pdiff.collect import _augment

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = _augment(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in _augment's order
    shift, flip = torch.randint(-4, 5, (2, 6, 1), generator=g), torch.rand(6, 1, generator=g) < 0.5
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for k in range(6):
        i, j = int(shift[0, k]) + 4, int(shift[1, k]) + 4
        expected = pad[k, :, i:i + 32, j:j + 32]
        assert torch.equal(out[k], expected.flip(-1) if flip[k] else expected), k
    # The channels_last layout (CUDA) gives the same images, still channels_last.
    out_cl = _augment(x.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(1))
    assert torch.equal(out_cl, out) and out_cl.is_contiguous(memory_format=torch.channels_last)
    small = torch.randn(4, 1, 8, 8)
    assert _augment(small, g) is small  # digits: neither crops nor flips


def test_on_epoch_reports_every_epoch(digits):
    from pdiff.collect import train_source

    seen = []
    model = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0)
    train_source(model, digits, TrainConfig(epochs=3, batch_size=128, lr=0.05), seed=0, log=_quiet, log_every=3,
                 on_epoch=lambda e, loss, s: seen.append((e, loss, s)))
    assert [e for e, _, _ in seen] == [0, 1, 2]
    assert all(loss > 0 and s > 0 for _, loss, s in seen) and seen[-1][1] < seen[0][1]


class _LostWorker(Exception):
    pass


def _save_until(epoch: int, saved: list[bytes]):
    """A save_state that serialises every state (as a checkpoint would) and dies after `epoch`."""
    def save(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())
        if state["epoch"] == epoch:
            raise _LostWorker
    return save


def _colour_images(n: int = 256) -> Dataset:
    """Random 32x32 colour images: big enough that training draws crops and flips from its augmentation RNG."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset("colour", 3, 10, 32, train=Split(x[:192], y[:192]), val=Split(x[192:224], y[192:224]),
                   test=Split(x[224:], y[224:]))


@pytest.mark.parametrize("images", ["digits", "colour"])
def test_a_resumed_run_equals_an_uninterrupted_one(digits, images):
    data = digits if images == "digits" else _colour_images()
    train = TrainConfig(epochs=4, batch_size=64 if images == "digits" else 32, lr=0.05)
    steps = -(-len(data.train) // train.batch_size)
    collect_cfg = CollectConfig(k=steps + 4, interval=1, lr=0.05)  # two passes over the data

    def fresh():
        model = build_model("cnn_small", channels=data.channels, classes=data.classes, image_size=data.image_size,
                            seed=0)
        return model, ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])

    model, subset = fresh()
    acc = train_source(model, data, train, seed=0, log=_quiet)
    snapshots = collect_snapshots(model, subset, data, collect_cfg, seed=0, batch_size=train.batch_size, log=_quiet)

    saved: list[bytes] = []
    model, subset = fresh()
    with pytest.raises(_LostWorker):  # the worker is lost after source epoch 2
        train_source(model, data, train, seed=0, log=_quiet, save_state=_save_until(2, saved))
    model, subset = fresh()  # a new worker: fresh model, unrelated global RNG
    torch.manual_seed(12345)
    resumed_acc = train_source(model, data, train, seed=0, log=_quiet, resume=torch.load(io.BytesIO(saved[-1])))
    assert resumed_acc == acc
    with pytest.raises(_LostWorker):  # and again after the first pass of the collection
        collect_snapshots(model, subset, data, collect_cfg, seed=0, batch_size=train.batch_size, log=_quiet,
                          save_state=_save_until(1, saved))
    model, subset = fresh()
    torch.manual_seed(54321)
    resumed = collect_snapshots(model, subset, data, collect_cfg, seed=0, batch_size=train.batch_size, log=_quiet,
                                resume=torch.load(io.BytesIO(saved[-1])))
    assert len(torch.load(io.BytesIO(saved[-1]))["snapshots"]) == steps  # it resumed mid-collection
    assert torch.equal(resumed, snapshots)
