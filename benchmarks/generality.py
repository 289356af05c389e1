"""p-diff on subset positions its defaults were not tuned on: does each result vouch for itself?

    python -m benchmarks.generality [--cases bn-only mlp-fc3 mlp-fc1 conv2 conv2-eval] [--seeds 0 1]
                                    [--k 200] [--n 200] [--threads 1]

digits, source trained 15 epochs at lr 0.05; every collection at the source's own lr (0.05), K snapshots
every 3 steps; p-diff with its default knobs (PdiffConfig(), N generated); no per-case tuning beyond
what the spec documents. The cases:

  bn-only     cnn_small, bn1 + bn2 (BatchNorm weights and biases only)
  mlp-fc3     mlp, the last linear layer
  mlp-fc1     mlp, the first linear layer
  conv2       cnn_small, the middle convolution, with `sources.collect.batchnorm: train` (the remedy the
              health check names: in eval mode a subset that feeds a BatchNorm loses its scale invariance)
  conv2-eval  the same in eval mode: the collection diverges and must be refused (no p-diff run)

Per case and seed: the collection's health (pdiff.health), p-diff's mean test accuracy beside the
snapshots', pairwise IoU, the verdict (pdiff.verdicts: collapsed / memorising / novel, against the
snapshots' leave-one-out max-IoU), p-diff against the noise baseline and against its own latent Gaussian
with 95% intervals (pdiff.compare), the autoencoder's R2 and fidelity, seconds. Targets:

  every collection healthy, or refused with its reason where the case expects it
  p-diff mean test acc >= the snapshots' mean - 0.5 pp        (per p-diff cell-seed)
  not collapsed                                                (per p-diff cell-seed)
  `novel` in at least 6 of the 8 p-diff cell-seeds

Exit status 1 when a target is MISSED.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pdiff import CollectConfig, ParameterSubset, PdiffConfig, TrainConfig, build_model, load_dataset
from pdiff.collect import collect
from pdiff.compare import judge, leave_one_out
from pdiff.evaluate import BatchedEvaluator
from pdiff.pipeline import reference_families, run_pdiff

# name -> (architecture, subset patterns, BatchNorm mode during collection, must the collection be refused?)
CASES = {
    "bn-only": ("cnn_small", ("bn1.*", "bn2.*"), "eval", False),
    "mlp-fc3": ("mlp", ("fc3.*",), "eval", False),
    "mlp-fc1": ("mlp", ("fc1.*",), "eval", False),
    "conv2": ("cnn_small", ("conv2.*",), "train", False),
    "conv2-eval": ("cnn_small", ("conv2.*",), "eval", True),
}
SOURCE = TrainConfig(epochs=15, batch_size=64, lr=0.05)
NOVEL_AT_LEAST = 6  # of the p-diff cell-seeds (8 with the default cases and seeds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--k", type=int, default=200, help="snapshots collected")
    p.add_argument("--n", type=int, default=200, help="models generated (p-diff and each reference family)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def run_case(case: str, seed: int, args: argparse.Namespace) -> dict:
    arch, patterns, batchnorm, refuse = CASES[case]
    t0 = time.perf_counter()
    data = load_dataset("digits", seed=seed)
    model = build_model(arch, channels=data.channels, classes=data.classes, image_size=data.image_size, seed=seed)
    subset = ParameterSubset.select(model, patterns)
    coll = collect(model, subset, data, SOURCE,
                   CollectConfig(k=args.k, interval=3, lr=SOURCE.lr, batchnorm=batchnorm), seed=seed,
                   log=lambda _: None)
    health = coll.health()
    row = {"case": case, "seed": seed, "n": subset.numel, "health": health, "refuse": refuse,
           "snap_acc": 100 * float(coll.scores.test_acc.mean()), "collect_s": time.perf_counter() - t0}
    if health.status == "failed":
        return row
    evaluator = BatchedEvaluator(coll.model, subset)
    t0 = time.perf_counter()
    run = run_pdiff(coll.snapshots, evaluator, data, coll.scores, PdiffConfig(n_generated=args.n), seed=seed)
    loo = leave_one_out(coll.snapshots, coll.scores.test_wrong, coll.scores.val_wrong)["snapshot_loo_max_iou"]
    refs = reference_families(run, coll.snapshots, evaluator, data, coll.scores, args.n, seed=seed,
                              baseline_seed=seed)
    judged = judge(run.generated, {k: refs[k] for k in ("noise", "latent_gaussian")}, coll.scores.test_wrong, loo,
                   seed=seed)
    return row | {"run": run, "judged": judged, "summary": run.generated.summary,
                  "pdiff_s": time.perf_counter() - t0}


def _interval(j: dict, prefix: str, fmt: str) -> str:
    return f"{format(j[prefix + '_diff'], fmt)} [{format(j[prefix + '_lo'], fmt)}, {format(j[prefix + '_hi'], fmt)}]"


def report(rows: list[dict]) -> list[tuple[str, bool]]:
    """Print the table; return the targets as (text, met)."""
    print(f"{'case':<11}{'seed':>5}{'numbers':>8}  {'collection':<10}{'snap acc':>9}{'p-diff':>8}{'pair':>7}"
          f"{'max-IoU':>8}{'LOO':>7}  {'verdict':<11}{'vs noise: acc pp / max-IoU':<44}{'vs latent Gaussian':<20}"
          f"{'AE R2':>7}{'fid':>6}{'s':>6}")
    targets: list[tuple[str, bool]] = []
    for r in rows:
        h = r["health"]
        head = f"{r['case']:<11}{r['seed']:>5}{r['n']:>8}  {h.status:<10}{r['snap_acc']:>9.2f}"
        expected = "failed" if r["refuse"] else "healthy or uniform"
        ok = (h.status == "failed") == r["refuse"]
        targets.append((f"{r['case']} seed {r['seed']}: collection {h.status} (expected {expected})"
                        + (f": {h.reason}" if h.reason else ""), ok))
        if "run" not in r:
            print(head + f"  refused: {h.reason}")
            continue
        s, j, run = r["summary"], r["judged"], r["run"]
        print(head + f"{s['mean_acc']:>8.2f}{s['pairwise_iou']:>7.3f}{s['test_max_iou']:>8.3f}"
              f"{j['snapshot_loo_max_iou']:>7.3f}  {j['verdict']:<11}"
              f"{j['vs_noise'] + ' ' + _interval(j, 'vs_noise_acc', '+.2f'):<44}"
              f"{j['vs_latent_gaussian']:<20}{run.ae_r2:>7.3f}{run.ae_fidelity:>6.3f}"
              f"{r['collect_s'] + r['pdiff_s']:>6.0f}")
        print(f"{'':<53}vs noise max-IoU {_interval(j, 'vs_noise_iou', '+.3f')}; latent Gaussian: mean acc "
              f"{j['latent_gaussian_mean_acc']:.2f}, max-IoU {j['latent_gaussian_test_max_iou']:.3f}, "
              f"{j['latent_gaussian_verdict']}")
        label = f"{r['case']} seed {r['seed']}"
        targets.append((f"{label}: p-diff mean acc {s['mean_acc']:.2f} >= snapshots' {r['snap_acc']:.2f} - 0.5",
                        s["mean_acc"] >= r["snap_acc"] - 0.5))
        targets.append((f"{label}: not collapsed (pairwise IoU {s['pairwise_iou']:.3f}, spread "
                        f"{s['spread_ratio']:.2f}x)", not s["collapsed"]))
    generated = [r for r in rows if "run" in r]
    novel = sum(r["judged"]["verdict"] == "novel" for r in generated)
    need = min(NOVEL_AT_LEAST, len(generated))
    targets.append((f"novel in {novel} of {len(generated)} p-diff cell-seeds (target >= {need})", novel >= need))
    return targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(__doc__.split("\n\n")[0])
    t0 = time.perf_counter()
    rows = []
    for case in args.cases:
        for seed in args.seeds:
            rows.append(run_case(case, seed, args))
            print(f"[{time.perf_counter() - t0:.0f}s] {case} seed {seed}: done", flush=True)
    print()
    targets = report(rows)
    print()
    for text, ok in targets:
        print(f"{'MET   ' if ok else 'MISSED'} {text}")
    missed = sum(not ok for _, ok in targets)
    print(f"\n{len(targets) - missed}/{len(targets)} targets MET; {time.perf_counter() - t0:.0f} s in all")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
