"""The benchmarks' own judgement: eval_speed's agreement survives float noise and still catches real errors."""

from __future__ import annotations

import torch

from benchmarks.eval_speed import agreement


def _logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 50, 10, generator=g) * 3
    ref[0, 0, :2] = torch.tensor([5.0, 5.0 - 1e-6])  # a near-tie: top-2 margin far below any tolerance
    return ref


def test_float_noise_and_near_ties_agree():
    ref = _logits()
    noisy = ref + 1e-5 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    noisy[0, 0, :2] = torch.tensor([5.0 - 1e-6, 5.0])  # the near-tie flips its argmax: float noise, skipped
    check = agreement(noisy, ref, rel_tol=1e-3)
    assert check["agree"] and check["disagree"] == 0
    assert check["skipped"] >= 1 and check["skipped_differ"] == 1
    assert check["compared"] + check["skipped"] == check["pairs"] == 4 * 50


def test_a_decided_argmax_that_differs_disagrees():
    ref = _logits()
    wrong = ref.clone()
    top = ref[2, 7].argmax()
    wrong[2, 7, top] -= 100.0  # a clear winner loses: a real error, not noise
    check = agreement(wrong, ref, rel_tol=1e-3)
    assert not check["agree"] and check["disagree"] == 1


def test_logits_off_by_more_than_the_tolerance_disagree_even_with_the_same_argmax():
    ref = _logits()
    check = agreement(ref * 1.01, ref, rel_tol=1e-3)  # same argmax everywhere, logits 1% off
    assert check["disagree"] == 0 and not check["agree"]
