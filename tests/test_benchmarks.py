"""The benchmarks' own judgement: eval_speed's agreement survives float noise and still catches real errors,
and a benchmark that misses a target exits non-zero (so `make bench` fails)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmarks.eval_speed import agreement
from benchmarks.targets import exit_status

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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


SNAPSHOTS = {"mean_acc": 97.0, "pairwise_iou": 0.45, "test_max_iou": 0.9, "spread_ratio": 1.0}


def test_a_missed_quality_target_is_a_non_zero_exit(monkeypatch, capsys):
    from benchmarks import quality

    met = quality._targets(SNAPSHOTS | {"mean_acc": 96.8}, SNAPSHOTS)  # within 0.3 points of the snapshots
    missed = quality._targets(SNAPSHOTS | {"mean_acc": 96.6}, SNAPSHOTS)  # 0.4 points below: MISSED
    assert all(ok for _, ok in met) and [ok for _, ok in missed] == [False, True, True, True]
    assert exit_status(met) == 0 and exit_status(missed) == 1
    # main judges every cell's targets (run_cell stubbed: no benchmark runs here) and returns the status.
    cells = iter([met, missed])
    monkeypatch.setattr(quality, "run_cell", lambda cell, seed, args: {"targets": next(cells), "seconds": {}})
    assert quality.main(["--cells", "mlp", "--seeds", "0", "1"]) == 1
    assert "7/8 targets MET over 2 cell(s)" in capsys.readouterr().out
    monkeypatch.setattr(quality, "run_cell", lambda cell, seed, args: {"targets": met, "seconds": {}})
    assert quality.main(["--cells", "mlp", "--seeds", "0"]) == 0


def test_results_scale_misses_a_slow_a_large_or_a_failed_command():
    from benchmarks.results_scale import _line, _targets

    fast = {"ok": True, "seconds": 2.5, "wall": 4.0, "rss_gb": 1.0}
    assert exit_status(_targets(fast, 3.0, 2.0)) == 0 and "MISSED" not in _line("report", fast, 3.0, 2.0)
    failed = fast | {"ok": False, "seconds": float("nan"), "error": "boom"}
    for bad in (fast | {"seconds": 3.5}, fast | {"rss_gb": 2.5}, failed):
        assert exit_status(_targets(bad, 3.0, 2.0)) == 1 and "MISSED" in _line("report", bad, 3.0, 2.0), bad


def test_every_benchmark_that_judges_exits_with_its_verdict_and_make_bench_runs_it():
    judging = {p.stem for p in BENCHMARKS.glob("*.py")
               if p.stem != "targets" and re.search(r"MISSED|DISAGREE|\bmark\(", p.read_text())}
    assert {"quality", "eval_speed", "smoke_sweep", "results_scale"} <= judging
    for name in judging:
        assert "sys.exit(main())" in (BENCHMARKS / f"{name}.py").read_text(), name
    makefile = (BENCHMARKS.parent / "Makefile").read_text()
    listed = re.search(r"^BENCHMARKS := (.*)$", makefile, re.M)[1].split()
    assert judging <= set(listed), judging - set(listed)
