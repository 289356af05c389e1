"""Collecting a subset that feeds a BatchNorm: BatchNorm in eval mode (the default) against train mode.

    python -m benchmarks.batchnorm_collection [--seeds 3 4] [--k 200] [--threads 1]

digits / cnn_small, the source trained 15 epochs at lr 0.05; K snapshots every 3 steps of the middle
convolution (`conv2.*`, which feeds bn2) at the source's lr 0.05 and at 0.01, and of the BatchNorm
layers themselves (`bn1.*`, `bn2.*`) at 0.05, each with `CollectConfig.batchnorm` eval and train.
Printed per collection: the source's val accuracy, the snapshots' mean val and test accuracy, their
distinct mistake sets and pairwise IoU, and the health check's verdict (`pdiff.health`). No targets:
it is the measurement behind the default (README, "Results that vouch for themselves").
"""

from __future__ import annotations

import argparse
import time

import torch

from pdiff import CollectConfig, ParameterSubset, TrainConfig, build_model, load_dataset
from pdiff.collect import collect
from pdiff.evaluate import family_stats

CASES = ((("conv2.*",), 0.05), (("conv2.*",), 0.01), (("bn1.*", "bn2.*"), 0.05))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'seed':>4}  {'subset':<12}{'lr':>6}  {'batchnorm':<10}{'source val':>11}{'snap val':>9}{'snap test':>10}"
          f"{'distinct':>9}{'pair IoU':>9}  health")
    for seed in args.seeds:
        data = load_dataset("digits", seed=seed)
        for patterns, lr in CASES:
            for mode in ("eval", "train"):
                t0 = time.perf_counter()
                model = build_model("cnn_small", channels=data.channels, classes=data.classes,
                                    image_size=data.image_size, seed=seed)
                subset = ParameterSubset.select(model, patterns)
                coll = collect(model, subset, data, TrainConfig(epochs=15, batch_size=64, lr=0.05),
                               CollectConfig(k=args.k, interval=3, lr=lr, batchnorm=mode), seed=seed,
                               log=lambda _: None)
                family = family_stats(coll.snapshots, coll.scores.test_wrong, coll.snapshots)
                print(f"{seed:>4}  {'+'.join(patterns):<12}{lr:>6g}  {mode:<10}"
                      f"{100 * float(coll.source_scores.val_acc[0]):>11.2f}{100 * float(coll.scores.val_acc.mean()):>9.2f}"
                      f"{100 * float(coll.scores.test_acc.mean()):>10.2f}{family['distinct_sets']:>9d}"
                      f"{family['pairwise_iou']:>9.3f}  {coll.health().status} ({time.perf_counter() - t0:.0f}s)",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
