"""pdiff.compare: two families' differences with 95% intervals (a 1-2 example difference is a tie), and the
snapshots' leave-one-out reference, on hand-built wrong-prediction sets of digits' size (360 test examples)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pdiff.compare import Comparison, compare_families, judge, leave_one_out

N_TEST = 360


def _family(rows: list[range | list[int]], n: int = N_TEST) -> torch.Tensor:
    """(len(rows), n) wrong-prediction sets: model i misses the examples in rows[i]."""
    wrong = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        wrong[i, list(r)] = True
    return wrong


# Ten snapshots that miss overlapping sets among the first 75 examples; models that miss only examples from
# 100 on share no mistake with any snapshot (max-IoU 0).
SNAPSHOTS = _family([range(5 * i, 5 * i + 30) for i in range(10)])


def _away(n_models: int, mistakes: int, seed: int = 0, extra: list[int] = ()) -> torch.Tensor:
    """A family of different models, each missing `mistakes` examples among 100..299 (and `extra`)."""
    g = torch.Generator().manual_seed(seed)
    return _family([(100 + torch.randperm(200, generator=g)[:mistakes]).tolist() + list(extra)
                    for _ in range(n_models)])


def test_a_family_against_itself_is_a_tie():
    family = _away(12, 20)
    c = compare_families(family, family, SNAPSHOTS)
    assert c.acc_diff == 0 and c.iou_diff == 0
    assert c.acc_lo < 0 < c.acc_hi  # the members are resampled for each side: an interval around 0
    assert c.word == "tie"
    one = _family([range(10, 40)] * 8)  # eight copies of one model: nothing to resample
    c = compare_families(one, one, SNAPSHOTS)
    assert (c.iou_lo, c.iou_hi, c.acc_lo, c.acc_hi) == (0.0, 0.0, 0.0, 0.0) and c.word == "tie"


def test_copies_of_the_snapshots_are_less_novel_than_a_family_with_disjoint_mistakes():
    copies = SNAPSHOTS[torch.arange(12) % 10]  # max-IoU 1 each
    disjoint = _away(12, 30)  # as many mistakes (same accuracy), none shared with a snapshot: max-IoU 0
    c = compare_families(copies, disjoint, SNAPSHOTS)
    assert c.iou_diff == pytest.approx(1.0) and c.iou_lo > 0
    assert c.acc_diff == pytest.approx(0.0, abs=1e-4) and c.acc_lo < 0 < c.acc_hi
    assert c.word == "worse"
    assert compare_families(disjoint, copies, SNAPSHOTS).word == "more novel"


def test_clearly_fewer_mistakes_on_many_examples_is_more_accurate():
    better, worse = _away(12, 10, seed=1), _away(12, 40, seed=2)  # 30 examples apart: 8.3 points
    c = compare_families(better, worse, SNAPSHOTS)
    assert c.acc_diff == pytest.approx(100 * 30 / N_TEST, abs=1e-3) and c.acc_lo > 0
    assert (c.iou_lo, c.iou_hi) == (0.0, 0.0)  # neither shares a mistake with a snapshot
    assert c.word == "more accurate"
    assert compare_families(worse, better, SNAPSHOTS).word == "worse"


@pytest.mark.parametrize("extra", [[300], [300, 301]])
def test_one_or_two_examples_on_360_are_a_tie(extra):
    """Every model of B misses the same 1-2 examples more than its twin in A: B is worse on the split, but
    by an amount a resample of the test examples often erases."""
    a, b = _away(12, 20, seed=3), _away(12, 20, seed=3, extra=extra)
    c = compare_families(a, b, SNAPSHOTS)
    assert c.acc_diff == pytest.approx(100 * len(extra) / N_TEST, abs=1e-3)
    assert c.acc_lo <= 0 < c.acc_hi, c
    assert c.word == "tie"


def test_deterministic_for_a_seed():
    a, b = _away(12, 20, seed=4), _away(12, 25, seed=5)
    assert compare_families(a, b, SNAPSHOTS, seed=7) == compare_families(a, b, SNAPSHOTS, seed=7)
    assert compare_families(a, b, SNAPSHOTS, seed=7) != compare_families(a, b, SNAPSHOTS, seed=8)


def test_families_on_different_splits_are_refused():
    with pytest.raises(ValueError, match="360"):
        compare_families(SNAPSHOTS, SNAPSHOTS[:, :100], SNAPSHOTS)


def test_comparison_columns():
    cols = Comparison(1.0, 0.5, 1.5, -0.2, -0.3, -0.1).columns("vs_noise")
    assert cols == {"vs_noise_acc_diff": 1.0, "vs_noise_acc_lo": 0.5, "vs_noise_acc_hi": 1.5,
                    "vs_noise_iou_diff": -0.2, "vs_noise_iou_lo": -0.3, "vs_noise_iou_hi": -0.1,
                    "vs_noise": "dominates"}


def test_leave_one_out_by_hand():
    # Nearest other snapshot in parameter space: 0 -> 1 at 5; 1 -> 2 at 1; 2 -> 1 at 1. Mean 7/3.
    snapshots = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 5.0]])
    # Test mistakes: IoU 0-1 = 1/2, 0-2 = 0, 1-2 = 0, so the max to another is 1/2, 1/2, 0. Mean 1/3.
    test = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # Val mistakes: 0 and 1 alike (IoU 1), 2 unlike both (0). Mean 2/3.
    val = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    out = leave_one_out(snapshots, test, val)
    assert out["snapshot_loo_l2"] == pytest.approx(7 / 3)
    assert out["snapshot_loo_max_iou"] == pytest.approx(1 / 3)
    assert out["snapshot_loo_val_max_iou"] == pytest.approx(2 / 3)
    without_val = leave_one_out(snapshots, test)
    assert without_val["snapshot_loo_val_max_iou"] != without_val["snapshot_loo_val_max_iou"]  # NaN
    lone = leave_one_out(snapshots[:1], test[:1], val[:1])  # one snapshot has no other to measure against
    assert all(v != v for v in lone.values()), lone


def test_judge_gives_the_verdict_and_each_comparison():
    def family(wrong, collapsed, max_iou):
        return SimpleNamespace(scores=SimpleNamespace(test_wrong=wrong),
                               summary={"collapsed": collapsed, "test_max_iou": max_iou, "mean_acc": 95.0})

    pdiff = family(_away(12, 10, seed=1), False, 0.0)
    refs = {"noise": family(SNAPSHOTS[torch.arange(12) % 10], False, 1.0),
            "latent_gaussian": family(_away(12, 10, seed=6), False, 0.0)}
    cols = judge(pdiff, refs, SNAPSHOTS, snapshot_loo_max_iou=0.6)
    assert cols["verdict"] == "novel" and cols["snapshot_loo_max_iou"] == 0.6
    assert cols["vs_noise"] == "dominates" and cols["vs_noise_iou_hi"] < 0  # fewer mistakes, none shared
    assert cols["vs_latent_gaussian"] == "tie"
    assert cols["latent_gaussian_verdict"] == "novel" and cols["latent_gaussian_test_max_iou"] == 0.0
    assert judge(family(pdiff.scores.test_wrong, False, 0.7), {}, SNAPSHOTS, 0.6)["verdict"] == "memorising"
