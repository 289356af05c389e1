"""How the autoencoder's and the latent denoiser's training step grow with the subset size, on CPU.

    python -m benchmarks.subset_scale [--sizes 10000 100000 1000000] [--ae chunked conv] [--k 200] [--steps 3]
                                      [--threads 1]

For each size n, K synthetic snapshots (a base vector plus a random walk along a few directions, as a
collection's trajectory) are built in a fresh subprocess per size and part, so each peak is its own:
  AE    `train_autoencoder`'s step of each `--ae` autoencoder at the default AEConfig (forward with both
        noises, MSE, backward, AdamW);
  LDM   `train_diffusion`'s step at the default LDMConfig on the latents of that autoencoder's shape.
Seconds per step are the median over at least `--steps` timed steps and 2 CPU seconds after one warm-up
step, as wall clock and as this process's CPU time; growth is judged on the CPU time, since on a shared
machine the wall clock also counts the time other work held the cores (torch runs on `--threads`
threads). Peak memory is the subprocess's `resource.getrusage(RUSAGE_SELF).ru_maxrss` (all of the
process: Python, torch, the snapshots, the models, the optimiser's state, the autograd graph); "work" is
that peak minus the RSS just after torch was imported and before the snapshots were built (the cost of
the size itself).
Targets: step time and working memory grow <= 12x per 10x in both parts, and the largest size's peak
(absolute) stays within 8 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.targets import exit_status, mark
from pdiff.autoencoder import AUTOENCODERS, AEConfig, Normalizer, build_autoencoder
from pdiff.diffusion import LatentDiffusion, LDMConfig

GROWTH = 12.0  # at most this factor per 10x numbers
PEAK_GB = 8.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synthetic_snapshots(k: int, n: int, seed: int = 0) -> torch.Tensor:
    """(k, n): a base vector plus a smooth random walk along 8 random directions and a little per-step
    noise, the shape of a collection's trajectory (variation far below the weights' own magnitude)."""
    g = torch.Generator().manual_seed(seed)
    base = 0.1 * torch.randn(n, generator=g)
    walk = torch.randn(k, 8, generator=g).cumsum(0) * 1e-3
    snaps = base + walk @ torch.randn(8, n, generator=g)
    snaps += 1e-4 * torch.randn(k, n, generator=g)
    return snaps


def _median_step(step, steps: int, min_cpu: float = 2.0) -> tuple[float, float]:
    """Median wall and CPU seconds of `step` over at least `steps` steps and `min_cpu` CPU seconds (a
    small step is timed many times: one 60 ms step on a shared machine is mostly noise). CPU time is
    this process's: on a shared machine the wall clock also counts the time other work held the cores."""
    step()  # warm-up: allocator, first-touch pages, lazy init
    wall, cpu = [], []
    while len(cpu) < steps or sum(cpu) < min_cpu:
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def measure_ae(arch: str, n: int, k: int, steps: int) -> tuple[float, float]:
    """Seconds per autoencoder training step: the step of `train_autoencoder`."""
    cfg = AEConfig()
    snaps = synthetic_snapshots(k, n)
    data = Normalizer(snaps, cfg.normalize)(snaps)
    del snaps
    model = build_autoencoder(n, cfg, arch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)  # as there
    gen = torch.Generator().manual_seed(0)
    noise = lambda shape: torch.randn(shape, generator=gen)  # noqa: E731

    def step():
        x = data[torch.randint(0, k, (min(cfg.batch_size, k),), generator=gen)]
        loss = F.mse_loss(model(x, noise), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_step(step, steps)


def latent_shape(arch: str, n: int) -> torch.Size:
    """The autoencoder's latent shape for n numbers, found on the meta device (no weights made)."""
    with torch.device("meta"):
        return build_autoencoder(n, AEConfig(), arch).encode(torch.zeros(1, n)).shape[1:]


def measure_ldm(arch: str, n: int, k: int, steps: int) -> tuple[float, float]:
    """Seconds per latent-diffusion training step (the step of `train_diffusion`) on K latents of the
    autoencoder's shape for n numbers."""
    cfg = LDMConfig()
    latents = torch.randn(k, *latent_shape(arch, n), generator=torch.Generator().manual_seed(0))
    ldm = LatentDiffusion(latents, cfg)
    opt = torch.optim.AdamW(ldm.denoiser.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = ldm.loss(latents[torch.randint(0, k, (min(cfg.batch_size, k),), generator=gen)], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ldm.ema.update(ldm.denoiser)

    return _median_step(step, steps)


def worker(arch: str, part: str, n: int, k: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    before = _rss_mb()
    wall, cpu = (measure_ae if part == "ae" else measure_ldm)(arch, n, k, steps)
    peak = _rss_mb()
    return {"arch": arch, "part": part, "n": n, "seconds": wall, "cpu_seconds": cpu, "peak_mb": peak,
            "work_mb": peak - before}


def _spawn(arch: str, part: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.subset_scale", "--worker", arch, part, str(n), "--k", str(args.k),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"{arch} {part} at n={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def judge(rows: list[dict]) -> list[tuple[str, bool]]:
    """Per autoencoder and part: growth per 10x in CPU time and working memory between consecutive sizes,
    and the largest size's peak."""
    targets = []
    for arch, part in dict.fromkeys((r["arch"], r["part"]) for r in rows):
        mine = sorted((r for r in rows if (r["arch"], r["part"]) == (arch, part)), key=lambda r: r["n"])
        name = f"{arch} {part.upper()}"
        for a, b in zip(mine, mine[1:]):
            decades = math.log10(b["n"] / a["n"])
            for key, unit in (("cpu_seconds", "step CPU time"), ("work_mb", "working memory")):
                growth = (b[key] / max(a[key], 1e-9)) ** (1 / decades)
                targets.append((f"{name} {unit} {a['n']:,} -> {b['n']:,}: x{growth:.1f} per 10x "
                                f"<= {GROWTH:g}", growth <= GROWTH))
        top = mine[-1]
        targets.append((f"{name} peak at {top['n']:,} numbers {top['peak_mb'] / 1024:.2f} GB <= "
                        f"{PEAK_GB:g} GB", top["peak_mb"] / 1024 <= PEAK_GB))
    return targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--ae", nargs="+", choices=tuple(AUTOENCODERS), default=[AEConfig().arch],
                   help="autoencoders measured (each with the latent DDPM on its latents)")
    p.add_argument("--k", type=int, default=200, help="snapshots")
    p.add_argument("--steps", type=int, default=3, help="timed steps per size (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", nargs=3, metavar=("AE", "PART", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        arch, part, n = args.worker
        print(json.dumps(worker(arch, part, int(n), args.k, args.steps, args.threads)))
        return 0
    print(__doc__.split("\n\n")[0])
    rows = []
    print(f"{'autoencoder':<12}{'part':<5}{'numbers':>11}{'s / step':>10}{'cpu s':>8}{'peak MB':>10}{'work MB':>10}",
          flush=True)
    for arch in args.ae:
        for part in ("ae", "ldm"):
            for n in args.sizes:
                r = _spawn(arch, part, n, args)
                rows.append(r)
                print(f"{arch:<12}{part:<5}{n:>11,}{r['seconds']:>10.3f}{r['cpu_seconds']:>8.3f}"
                      f"{r['peak_mb']:>10.0f}{r['work_mb']:>10.0f}", flush=True)
    targets = judge(rows)
    for text, ok in targets:
        print(f"  {mark(ok):<6} {text}")
    return exit_status(targets)


if __name__ == "__main__":
    sys.exit(main())
