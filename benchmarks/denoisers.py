"""The latent denoisers side by side: does the sampled family keep the snapshots' spread?

    python -m benchmarks.denoisers [--seed 0] [--unet-steps 1500] [--mlp-steps 2000]

On digits / mlp fc3 (650 numbers), K = 200 snapshots collected at subset lr 0.2, one
autoencoder is trained to quality; then each denoiser's DDPM is trained on the same
latents and sampled (N = 200, DDIM-100). Printed per generator: the sampled latents'
RMS spread over the encoded latents', and the decoded family's mean test accuracy,
pairwise IoU, mean max-IoU to the snapshots, distinct mistake sets and spread over the
snapshots'; with the seconds it took to train and sample. Two references: the snapshots
themselves and a Gaussian fitted to the latents (mean and sample covariance), which
needs no training and shows what a generator that keeps the latents' spread decodes to.
"""

from __future__ import annotations

import argparse
import time

import torch

from pdiff import CollectConfig, ParameterSubset, PdiffConfig, TrainConfig, build_model, load_dataset
from pdiff.collect import collect
from pdiff.diffusion import LDMConfig, train_diffusion
from pdiff.evaluate import BatchedEvaluator
from pdiff.pipeline import assess, run_pdiff

from .quality import snapshot_summary


def _rms(z: torch.Tensor) -> float:
    return float((z - z.mean(0)).pow(2).sum(1).mean().sqrt())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--mlp-steps", type=int, default=LDMConfig.steps)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=args.seed)
    model = build_model("mlp", channels=data.channels, classes=data.classes, image_size=data.image_size,
                        seed=args.seed)
    subset = ParameterSubset.select(model, ("fc3.*",))
    coll = collect(model, subset, data, TrainConfig(epochs=15, batch_size=64, lr=0.05),
                   CollectConfig(k=200, interval=1, lr=0.2), seed=args.seed, log=lambda _: None)
    evaluator = BatchedEvaluator(coll.model, subset)
    # One autoencoder for all (the LDM is not used: 1 step).
    run = run_pdiff(coll.snapshots, evaluator, data, coll.scores, PdiffConfig.from_knobs(latent_dim=64, ldm_steps=1,
                    n_generated=1), seed=args.seed)
    ae, latents = run.ae, run.ae.encode(coll.snapshots)
    print(f"digits / mlp fc3 ({subset.numel} numbers), seed {args.seed}, K=200, N=200, DDIM-100; AE "
          f"{run.ae_steps} steps, R2 {run.ae_r2:.4f}, fidelity {run.ae_fidelity:.3f}")
    print(f"{'generator':<30}{'latent spread':>14}{'mean acc':>9}{'pair-IoU':>9}{'max-IoU':>8}{'distinct':>9}"
          f"{'spread':>7}{'seconds':>8}")

    def row(name: str, z: torch.Tensor | None, s: dict, seconds: float) -> None:
        lat = f"{_rms(z) / _rms(latents):.2f}x" if z is not None else "-"
        print(f"{name:<30}{lat:>14}{s['mean_acc']:>9.2f}{s['pairwise_iou']:>9.3f}{s['test_max_iou']:>8.3f}"
              f"{s['distinct_sets']:>9d}{s['spread_ratio']:>7.2f}{seconds:>8.0f}")

    row("snapshots (max-IoU: to others)", None, snapshot_summary(coll), 0)
    gen = torch.Generator().manual_seed(args.seed)
    centred = latents - latents.mean(0)
    z = latents.mean(0) + torch.randn(200, len(latents), generator=gen) @ centred / (len(latents) - 1) ** 0.5
    row("Gaussian fitted to latents", z, assess(evaluator, data, ae.decode(z), coll.snapshots, coll.scores).summary, 0)
    for name, cfg in ((f"unet [32, 64], {args.unet_steps} steps",
                       LDMConfig(denoiser="unet", channels=(32, 64), steps=args.unet_steps)),
                      (f"mlp (default), {args.mlp_steps} steps", LDMConfig(steps=args.mlp_steps))):
        t0 = time.perf_counter()
        ldm = train_diffusion(latents, cfg, seed=args.seed)
        z = ldm.sample(200, sampler="ddim", steps=100, generator=torch.Generator().manual_seed(args.seed + 2))
        seconds = time.perf_counter() - t0
        row(name, z, assess(evaluator, data, ae.decode(z), coll.snapshots, coll.scores).summary, seconds)


if __name__ == "__main__":
    main()
