"""One paper-sized p-diff cell on one GPU, timed phase by phase.

    python -m benchmarks.gpu_cell [--epochs 100] [--k 300] [--n 200] [--images 10000] [--ae-amp] [--ldm-amp]

ResNet-18 with the CIFAR stem (`pdiff.zoo.build_model`) on CIFAR-10 when it is on
disk ($PDIFF_DATA or ./data; never downloaded here), else on synthetic
CIFAR-shaped data: 50,000 training images (45,000 train + 5,000 validation) and
10,000 test images, 32x32x3, ten classes of low-frequency colour templates (three
per class), each image a blend of its class's template with another class's plus
noise, so that accuracy is below 100% and means something. The paper's subset
layer4.1.bn1 + layer4.1.bn2 (2,048 numbers), K snapshots one per step, one p-diff
trial at the defaults (`pdiff.pipeline.run_pdiff`), N generated models, the three
baselines of Zeng et al. 2025, all scored on `--images` test images.

Prints seconds per phase (source epochs, collection, scoring, AE, LDM, generate,
evaluate, baselines), peak GPU memory, and beside each family's accuracy its
novelty and collapse figures: accuracy alone is not a result.

Without CUDA it runs a scaled-down cell (2 epochs of 400 images in batches of
32 at lr 0.02, K=10, N=10, 200 test images, 100 AE / 50 LDM steps, DDIM-20
sampling) and says so in its first line. Imports only pdiff, torch and the
standard library (the GPU image has no Ray).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from pdiff import (DEFAULT_SUBSET, AEConfig, CollectConfig, LDMConfig, ParameterSubset, PdiffConfig, TrainConfig,
                   build_model, load_dataset)
from pdiff.collect import collect_snapshots, train_source
from pdiff.data import Dataset, DatasetUnavailable, Split, data_root
from pdiff.evaluate import BatchedEvaluator, family_stats, summarize
from pdiff.pipeline import run_baselines, run_pdiff

# Full size (one GPU) and the scaled-down CPU version: flags left unset take these.
FULL = dict(epochs=100, k=300, n=200, images=10_000, train_images=50_000, batch_size=128, lr=0.1, ae_steps=None,
            ldm_steps=None)
# lr 0.1 (the paper's recipe) blows a ResNet-18 up within the first few dozen steps of batch 32.
SCALED = dict(epochs=2, k=10, n=10, images=200, train_images=400, batch_size=32, lr=0.02, ae_steps=100,
              ldm_steps=50)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None, help="source training epochs (GPU 100, CPU 2)")
    p.add_argument("--k", type=int, default=None, help="snapshots collected (GPU 300, CPU 10)")
    p.add_argument("--n", type=int, default=None, help="models generated, and drawn per baseline (GPU 200, CPU 10)")
    p.add_argument("--images", type=int, default=None, help="test images scored (GPU 10,000, CPU 200)")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images incl. the 10%% validation split (GPU 50,000, CPU 400)")
    p.add_argument("--ae-steps", type=int, default=None, help="AE step bound (GPU: AEConfig's default; CPU 100)")
    p.add_argument("--ldm-steps", type=int, default=None, help="LDM steps (GPU: LDMConfig's default; CPU 50)")
    p.add_argument("--ldm-amp", action="store_true", help="bf16 autocast for the LDM's training steps")
    p.add_argument("--ae-amp", action="store_true", help="bf16 autocast for the AE's training steps")
    p.add_argument("--batch-size", type=int, default=None, help="source and collection batch (GPU 128, CPU 32)")
    p.add_argument("--lr", type=float, default=None, help="source learning rate, SGD + cosine (GPU 0.1, CPU 0.02)")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even when CIFAR-10 is on disk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def synthetic_cifar(n_train: int, n_test: int, *, seed: int = 0, classes: int = 10, modes: int = 3,
                    amplitude: float = 0.25, val_fraction: float = 0.1) -> Dataset:
    """CIFAR-shaped data with learnable structure: image = amplitude * (lam * t_y + (1 - lam) * t_o)
    + N(0, 1) noise, t_y one of its class's `modes` smooth colour templates (unit RMS), t_o a
    template of another class, lam ~ U(0.5, 1). Blends near lam = 0.5 are ambiguous, so no
    model is perfect and models differ in the examples they get wrong."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.randn(classes * modes, 3, 8, 8, generator=g), size=32, mode="bilinear",
                              align_corners=False)
    templates = templates / templates.pow(2).mean((1, 2, 3), keepdim=True).sqrt()

    def draw(n: int) -> Split:
        y = torch.randint(0, classes, (n,), generator=g)
        other = (y + torch.randint(1, classes, (n,), generator=g)) % classes
        lam = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
        x = torch.empty(n, 3, 32, 32)
        for s in range(0, n, 5_000):  # in chunks: a few hundred MB at most
            e = min(n, s + 5_000)
            own = templates[y[s:e] * modes + torch.randint(0, modes, (e - s,), generator=g)]
            mix = templates[other[s:e] * modes + torch.randint(0, modes, (e - s,), generator=g)]
            x[s:e] = amplitude * (lam[s:e] * own + (1 - lam[s:e]) * mix) + torch.randn(e - s, 3, 32, 32, generator=g)
        return Split(x, y)

    full, test = draw(n_train), draw(n_test)
    n_val = max(1, round(val_fraction * n_train))
    return Dataset("synthetic_cifar10", 3, classes, 32, train=Split(full.x[n_val:], full.y[n_val:]),
                   val=Split(full.x[:n_val], full.y[:n_val]), test=test)


def _head(split: Split, n: int) -> Split:
    return split if n >= len(split) else Split(split.x[:n], split.y[:n])


def load_data(args: argparse.Namespace) -> Dataset:
    if not args.synthetic and (data_root() / "cifar-10-batches-py").is_dir():
        try:
            data = load_dataset("cifar10", seed=args.seed, download=False)
        except DatasetUnavailable:
            data = None
        if data is not None:
            n_val = max(1, round(0.1 * args.train_images))
            return dataclasses.replace(data, train=_head(data.train, args.train_images - n_val),
                                       val=_head(data.val, n_val), test=_head(data.test, args.images))
    return synthetic_cifar(args.train_images, args.images, seed=args.seed)


class Timer:
    """Wall seconds per phase, with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, name: str, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        self.seconds[name] = time.perf_counter() - t0
        return out


def _row(name: str, summary: dict, max_iou: float | None) -> str:
    iou = "-" if max_iou is None else f"{max_iou:.3f}"
    return (f"{name:<10}{summary['selected_acc']:>9.2f}{summary['best_test_acc']:>9.2f}{summary['mean_acc']:>9.2f}"
            f"{summary['median_acc']:>9.2f}{iou:>9}{summary['pairwise_iou']:>9.3f}{summary['distinct_sets']:>9d}"
            f"{summary['spread_ratio']:>9.3f}{'yes' if summary['collapsed'] else 'no':>10}")


def _print_families(source_acc: float, data, scores, snapshots, run, baselines) -> dict:
    """The accuracy and novelty table of the snapshots, p-diff and the baselines; returns the snapshots' row."""
    snap_summary = summarize(scores) | family_stats(snapshots, scores.test_wrong, snapshots)
    print(f"\nsource model test acc {100 * source_acc:.2f}%. Accuracies in % on {len(data.test):,} test images; "
          f"'selected' = best on validation; max_iou = test_max_iou, the mean over models of the max IoU of its "
          f"test wrong-prediction set to any snapshot's (1 = memorised); pairwise = mean IoU within the family; "
          f"spread = RMS spread over the snapshots'")
    print(f"{'family':<10}{'selected':>9}{'best':>9}{'mean':>9}{'median':>9}{'max_iou':>9}{'pairwise':>9}"
          f"{'distinct':>9}{'spread':>9}{'collapsed':>10}")
    print(_row("snapshots", snap_summary, None))
    print(_row("p-diff", run.generated.summary, run.generated.summary["test_max_iou"]))
    for name, a in baselines.items():
        print(_row(name, a.summary, a.summary["test_max_iou"]))
    return snap_summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    scaled = device.type != "cuda"
    for key, value in (SCALED if scaled else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if scaled:
        print(f"SCALED-DOWN CPU RUN (no CUDA device): {args.epochs} epochs of {args.train_images:,} images "
              f"(batch {args.batch_size}, lr {args.lr}), "
              f"K={args.k}, N={args.n}, {args.images:,} test images, AE <= {args.ae_steps} / LDM {args.ldm_steps} "
              f"steps, DDIM-20; the figures below are not the paper-sized cell", flush=True)
    else:
        print(f"paper-sized cell on {gpu}: {args.epochs} epochs, K={args.k}, N={args.n}, "
              f"{args.images:,} test images", flush=True)
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    torch.manual_seed(args.seed)

    data = timer("data", lambda: load_data(args))
    print(f"data: {data.name}, {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test "
          f"images ({timer.seconds['data']:.1f}s)", flush=True)
    model = build_model("resnet18", channels=3, classes=data.classes, image_size=32, seed=args.seed).to(device)
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["resnet18"])

    epochs: list[float] = []
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    source_acc = timer("source", lambda: train_source(
        model, data, train_cfg, seed=args.seed, log=lambda m: print(f"  {m}", flush=True),
        log_every=max(1, args.epochs // 10), on_epoch=lambda e, loss, s: epochs.append(s)))
    snapshots = timer("collection", lambda: collect_snapshots(
        model, subset, data, CollectConfig(k=args.k), seed=args.seed, batch_size=args.batch_size,
        log=lambda m: None))
    evaluator = BatchedEvaluator(model, subset, device=device)
    scores = timer("scoring", lambda: evaluator.score(snapshots, data))

    ae, ldm = AEConfig(amp=args.ae_amp), LDMConfig(amp=args.ldm_amp)
    ae = ae if args.ae_steps is None else dataclasses.replace(ae, steps=args.ae_steps)
    ldm = ldm if args.ldm_steps is None else dataclasses.replace(ldm, steps=args.ldm_steps)
    cfg = PdiffConfig(ae=ae, ldm=ldm, n_generated=args.n, **({"sampler": "ddim", "sample_steps": 20} if scaled else {}))
    run = timer("trial", lambda: run_pdiff(snapshots, evaluator, data, scores, cfg, seed=args.seed, device=device))
    baselines = timer("baselines", lambda: run_baselines(snapshots, evaluator, data, scores, args.n, seed=args.seed))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    phases = {
        f"source training ({args.epochs} epochs of {len(data.train):,} images)": timer.seconds["source"],
        f"collection (K={args.k} steps)": timer.seconds["collection"],
        f"scoring {args.k} snapshots (val + test)": timer.seconds["scoring"],
        f"AE ({run.ae_steps} steps{', bf16' if ae.amp and not scaled else ''})" if hasattr(run, "ae_steps") else "AE":
            run.seconds["ae"],
        f"LDM ({ldm.steps} steps{', bf16' if ldm.amp and not scaled else ''})": run.seconds["ldm"],
        f"generate {args.n} ({cfg.sampler.upper()}-{ldm.timesteps if cfg.sampler == 'ddpm' else cfg.sample_steps})":
            run.seconds["generate"],
        f"evaluate {args.n}": run.seconds["evaluate"],
        f"three baselines x {args.n}, evaluated": timer.seconds["baselines"],
    }
    print(f"\n{'phase':<52}{'seconds':>10}")
    for name, s in phases.items():
        print(f"{name:<52}{s:>10.2f}")
    print(f"{'total':<52}{sum(phases.values()):>10.2f}")
    if epochs:
        print(f"source epochs: first {epochs[0]:.2f}s, median {sorted(epochs)[len(epochs) // 2]:.2f}s, "
              f"last {epochs[-1]:.2f}s ({len(data.train) / sorted(epochs)[len(epochs) // 2]:,.0f} images/s); "
              f"per epoch: {' '.join(f'{s:.2f}' for s in epochs)}")
    print(f"LDM: {1000 * run.seconds['ldm'] / max(ldm.steps, 1):.1f} ms/step (including the final loss read); "
          f"AE: R2 {getattr(run, 'ae_r2', float('nan')):.3f}, converged {getattr(run, 'ae_converged', '?')}")
    print(f"peak GPU memory: {peak:.2f} GiB" if peak is not None else "peak GPU memory: n/a (CPU)")

    snap_summary = _print_families(source_acc, data, scores, snapshots, run, baselines)
    return {"scaled": scaled, "device": gpu or "cpu", "seconds": phases, "epoch_seconds": epochs,
            "peak_gib": peak, "source_acc": source_acc, "pdiff": run.generated.summary,
            "snapshots": snap_summary, "baselines": {k: a.summary for k, a in baselines.items()}}


if __name__ == "__main__":
    main()
