"""pdiff.evaluate: the batched evaluator agrees with plain forward passes; IoU, summary, novelty, packed sets,
the collapse signals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pdiff import ARCHS, DEFAULT_SUBSET, ParameterSubset, build_model
from pdiff.collect import accuracy
from pdiff.data import Dataset, Split
from pdiff.evaluate import (COLLAPSE_SPREAD, BatchedEvaluator, Scores, family_stats, iou_matrix, max_iou, novelty,
                            pack_wrong, summarize, unpack_wrong, unpack_wrong_rows)


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Give an untrained model realistic BatchNorm statistics so its logits are O(1)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model(x)
    model.eval()


def _reference_logits(model: nn.Module, subset: ParameterSubset, vectors: torch.Tensor, x: torch.Tensor):
    model = copy.deepcopy(model).eval()
    out = []
    for v in vectors:
        subset.load(model, v)
        with torch.no_grad():
            out.append(model(x))
    return torch.stack(out)


CASES = [  # arch, channels, classes, image size, vectors, images
    ("cnn_small", 1, 10, 8, 4, 4),
    ("mlp", 1, 10, 8, 4, 4),
    ("mlp_wide", 1, 10, 8, 3, 4),
    ("resnet18", 3, 10, 32, 3, 4),
    ("resnet50", 1, 10, 8, 2, 4),
    ("vit_tiny", 1, 10, 8, 2, 4),
    ("convnext_tiny", 1, 10, 8, 2, 4),
]


@pytest.mark.parametrize("arch,channels,classes,size,n_vec,n_img", CASES, ids=[c[0] for c in CASES])
def test_batched_logits_match_full_forward(arch, channels, classes, size, n_vec, n_img):
    g = torch.Generator().manual_seed(0)
    model = build_model(arch, channels=channels, classes=classes, image_size=size, seed=0)
    _calibrate_batchnorm(model, torch.randn(16, channels, size, size, generator=g))
    subset = ParameterSubset.select(model, DEFAULT_SUBSET[arch])
    vectors = subset.flatten(model) + 0.05 * torch.randn(n_vec, subset.numel, generator=g)
    x = torch.randn(n_img, channels, size, size, generator=g)

    # Small batch and vector chunks so that the chunking loops are exercised too.
    evaluator = BatchedEvaluator(copy.deepcopy(model), subset, batch_size=3, vectors_per_pass=2)
    logits = evaluator.logits(vectors, x)
    ref = _reference_logits(model, subset, vectors, x)
    assert logits.shape == (n_vec, n_img, classes)
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    assert not torch.allclose(ref[0], ref[1], atol=1e-4)  # the vectors really differ in effect
    if arch in ("cnn_small", "resnet18", "resnet50", "convnext_tiny", "mlp", "mlp_wide"):
        assert len(evaluator.prefix) > 0  # a chain: the frozen prefix runs once per batch


def test_every_arch_is_covered():
    assert {c[0] for c in CASES} == set(ARCHS)


def _random_dataset(n: int, g: torch.Generator) -> Dataset:
    def split():
        return Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    return Dataset("random", 3, 10, 32, split(), split(), split())


def test_score_matches_per_model_accuracy_on_resnet18():
    g = torch.Generator().manual_seed(1)
    model = build_model("resnet18", channels=3, classes=10, image_size=32, seed=0)
    _calibrate_batchnorm(model, torch.randn(16, 3, 32, 32, generator=g))
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["resnet18"])
    data = _random_dataset(6, g)
    vectors = subset.flatten(model) + 0.3 * torch.randn(3, 2048, generator=g)
    scores = BatchedEvaluator(copy.deepcopy(model), subset, batch_size=4).score(vectors, data)
    for i, v in enumerate(vectors):
        single = copy.deepcopy(model)
        subset.load(single, v)
        assert float(scores.test_acc[i]) == pytest.approx(accuracy(single, data.test))
        assert float(scores.val_acc[i]) == pytest.approx(accuracy(single, data.val))
        with torch.no_grad():
            wrong = single(data.test.x).argmax(-1) != data.test.y
        assert torch.equal(scores.test_wrong[i], wrong)


def test_score_on_digits(collected, evaluator):
    c, data = collected.collection, collected.data
    scores = evaluator.score(c.snapshots[:5], data)
    torch.testing.assert_close(scores.test_acc, c.scores.test_acc[:5])
    torch.testing.assert_close(scores.val_acc, c.scores.val_acc[:5])
    preds = evaluator.predictions(c.snapshots[:2], data.test)
    assert preds.shape == (2, len(data.test)) and preds.dtype == torch.int64


def test_iou_matrix_known_values():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([
        [1 / 3, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],  # both empty: identical sets, IoU 1
    ])
    torch.testing.assert_close(iou_matrix(a, b), expected)
    torch.testing.assert_close(iou_matrix(b, a), expected.T)


def test_summarize_selects_on_validation():
    scores = Scores(
        val_acc=torch.tensor([0.50, 0.95, 0.70, 0.60, 0.80]),
        test_acc=torch.tensor([0.97, 0.80, 0.99, 0.90, 0.85]),
        test_wrong=torch.zeros(5, 3, dtype=torch.bool),
    )
    s = summarize(scores)
    assert s["selected_acc"] == pytest.approx(80.0)  # argmax of val is index 1
    assert s["best_test_acc"] == pytest.approx(99.0)  # the paper's test-selected number
    assert s["mean_acc"] == pytest.approx(90.2)
    assert s["median_acc"] == pytest.approx(90.0)


def test_novelty_of_a_copied_snapshot(collected, evaluator):
    c, data = collected.collection, collected.data
    copies = c.snapshots[[3, 20]].clone()
    far = c.snapshots[:1] + 0.5
    vectors = torch.cat([copies, far])
    scores = evaluator.score(vectors, data)
    near = novelty(vectors, scores, c.snapshots, c.scores)
    assert near.test_max_iou.shape == (3,) and near.val_max_iou.shape == (3,) and near.nearest_l2.shape == (3,)
    torch.testing.assert_close(near.test_max_iou[:2], torch.ones(2))
    torch.testing.assert_close(near.val_max_iou[:2], torch.ones(2))  # a copy makes the same val mistakes too
    assert float(near.nearest_l2[:2].max()) < 1e-5  # an exact copy is at distance 0
    assert float(near.nearest_l2[2]) > 1.0
    # The val column is the val sets' own max IoU, not the test one's.
    expected = iou_matrix(scores.val_wrong, c.scores.val_wrong).max(1).values
    torch.testing.assert_close(near.val_max_iou, expected)


def test_max_iou_to_the_others_excludes_self():
    wrong = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # 0 vs 1: 1/2; 0 vs 2: 0; 1 vs 2: 0. To itself every set has IoU 1, which must not count.
    torch.testing.assert_close(max_iou(wrong), torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(max_iou(wrong[:1], wrong), torch.tensor([1.0]))
    assert max_iou(wrong[:1]).isnan().all()  # a family of one has no other member


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1797])
def test_packed_wrong_sets_round_trip(n):
    g = torch.Generator().manual_seed(n)
    masks = torch.rand(5, n, generator=g) < 0.3
    blobs = [pack_wrong(m) for m in masks]
    assert all(isinstance(b, bytes) and len(b) == (n + 7) // 8 for b in blobs)
    assert torch.equal(unpack_wrong_rows(blobs, n), masks)
    assert torch.equal(unpack_wrong(blobs[0], n), masks[0])
    assert pack_wrong(masks[0].numpy()) == blobs[0]  # numpy or torch: the same bytes


def test_packed_bit_order_is_fixed():
    # Example 0 is the most significant bit of byte 0; the last byte is padded with zeros.
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[0, 7, 9]] = True
    assert pack_wrong(mask) == bytes([0b1000_0001, 0b0100_0000])
    with pytest.raises(ValueError):
        unpack_wrong(b"\x00", 10)  # 10 examples need 2 bytes
    with pytest.raises(ValueError):
        pack_wrong(torch.zeros(2, 3, dtype=torch.bool))


# -- collapse signals, one at a time (issue 16: turning the rule's `or` into `and` must fail a test) --------

def _pair(common: int, extra: int, n: int = 400) -> torch.Tensor:
    """Two wrong-prediction sets: both miss `common` examples, the second misses `extra` more (IoU c/(c+e))."""
    wrong = torch.zeros(2, n, dtype=torch.bool)
    wrong[:, :common] = True
    wrong[1, common:common + extra] = True
    return wrong


def _vectors(half_width: float) -> torch.Tensor:
    """Two vectors at +-half_width on one axis: spread (RMS distance to their centre) = half_width."""
    return torch.tensor([[half_width, 0.0], [-half_width, 0.0]])


UNIT_SPREAD = _vectors(1.0)  # snapshots of spread 1: a family's spread ratio is its half-width


@pytest.mark.parametrize("common, extra, collapsed", [(199, 1, True), (99, 1, True), (98, 2, False)],
                         ids=["0.995", "0.99", "0.98"])
def test_family_stats_collapses_on_pairwise_iou_alone(common, extra, collapsed):
    """The snapshots' spread (ratio 1), and a pairwise IoU at, above or below COLLAPSE_IOU."""
    s = family_stats(_vectors(1.0), _pair(common, extra), UNIT_SPREAD)
    assert s["pairwise_iou"] == pytest.approx(common / (common + extra), abs=1e-6)
    assert s["spread_ratio"] == pytest.approx(1.0) and s["distinct_sets"] == 2
    assert s["collapsed"] is collapsed, s


@pytest.mark.parametrize("half_width, collapsed", [(COLLAPSE_SPREAD, False), (COLLAPSE_SPREAD * 0.98, True),
                                                   (0.0, True)])
def test_family_stats_collapses_on_spread_alone(half_width, collapsed):
    """Disjoint mistakes (pairwise IoU 0), and a spread at, just below, or far below COLLAPSE_SPREAD."""
    wrong = torch.zeros(2, 10, dtype=torch.bool)
    wrong[0, :3], wrong[1, 3:6] = True, True
    s = family_stats(_vectors(half_width), wrong, UNIT_SPREAD)
    assert s["pairwise_iou"] == 0.0 and s["spread_ratio"] == pytest.approx(half_width)
    assert s["collapsed"] is collapsed, s
