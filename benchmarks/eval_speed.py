"""Batched evaluation of many subset vectors against one full forward pass per vector.

    python -m benchmarks.eval_speed [--n 40] [--images 256] [--device cuda|cpu]

ResNet-18 with the CIFAR stem (32x32 inputs, 10 classes) and the paper's subset
(layer4.1.bn1 + bn2, weight and bias = 2048 numbers). N vectors = the model's own
subset plus small noise; random images made here. Side by side in one run:

- batched: `BatchedEvaluator.logits`, the frozen prefix once per image batch and
  only layer4.1 + pool + fc once per vector (vmapped);
- naive: `ParameterSubset.load` each vector into the model and run the whole
  network on every image.

The paper's GPU scale is N = 200 vectors on 10,000 test images.

Agreement: the two sides' logits must differ by no more than a tolerance
(`--rel-tol` times the largest |logit|, or an absolute `--tol`), and their argmax
must match on every (vector, image) whose one-by-one top-2 logit margin exceeds
that tolerance. Near-ties within it are counted and skipped, not compared: there
the argmax is float noise (GPU kernels sum in different orders), not a result.
Exit status 1 when they DISAGREE.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from pdiff import DEFAULT_SUBSET, ParameterSubset, build_model
from pdiff.evaluate import BatchedEvaluator

from .targets import exit_status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=40, help="subset vectors")
    p.add_argument("--images", type=int, default=256, help="random 32x32 images")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (both sides)")
    p.add_argument("--vectors-per-pass", type=int, default=None,
                   help="vectors vmapped together (default: the evaluator's own default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per side; the fastest counts")
    p.add_argument("--rel-tol", type=float, default=1e-3, help="agreement tolerance, relative to the largest |logit|")
    p.add_argument("--tol", type=float, default=None, help="absolute agreement tolerance (overrides --rel-tol)")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Realistic BatchNorm statistics for the untrained network, so logits are O(1) as in a trained one."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model(x)
    model.eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)

    model = build_model("resnet18", channels=3, classes=10, image_size=32, seed=args.seed).to(device)
    images = torch.randn(args.images, 3, 32, 32, generator=gen)
    _calibrate_batchnorm(model, images[:64].to(device))
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["resnet18"])
    base = subset.flatten(model)
    vectors = base + 0.01 * base.abs().mean() * torch.randn(args.n, subset.numel, generator=gen)
    x = images.to(device)

    kwargs = {} if args.vectors_per_pass is None else {"vectors_per_pass": args.vectors_per_pass}
    evaluator = BatchedEvaluator(model, subset, batch_size=args.batch_size, device=device, **kwargs)
    reference = build_model("resnet18", channels=3, classes=10, image_size=32).to(device)
    reference.load_state_dict(model.state_dict())
    reference.eval()

    def naive() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for v in vectors:
                subset.load(reference, v.to(device))
                out.append(torch.cat([reference(x[s:s + args.batch_size])
                                      for s in range(0, len(x), args.batch_size)]))
        return torch.stack(out)

    # One small warm-up of each path (allocator, kernel selection, vmap tracing).
    evaluator.logits(vectors[:2], x[:8])
    with torch.no_grad():
        reference(x[:8])

    t_batched, batched = _timed(lambda: evaluator.logits(vectors, x), device, args.repeats)
    t_naive, ref = _timed(naive, device, args.repeats)

    check = agreement(batched, ref, rel_tol=args.rel_tol, tol=args.tol)
    diff, tol, agree = check["max_abs_diff"], check["tol"], check["agree"]
    ratio = t_naive / t_batched

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"ResNet-18 (CIFAR stem), subset {'+'.join(DEFAULT_SUBSET['resnet18'])} = {subset.numel} numbers; "
          f"N={args.n} vectors x {args.images} random 32x32 images; batch {args.batch_size}, "
          f"{evaluator.vectors_per_pass} vectors per pass; device {name}")
    print(f"frozen prefix: {len(evaluator.prefix)} modules run once per image batch; "
          f"suffix: {', '.join(q for q, _ in _suffix_names(evaluator))} run per vector\n")
    print(f"{'method':<44}{'seconds':>10}{'vectors/s':>12}")
    print(f"{'batched (BatchedEvaluator.logits)':<44}{t_batched:>10.2f}{args.n / t_batched:>12.1f}")
    print(f"{'naive (ParameterSubset.load + full forward)':<44}{t_naive:>10.2f}{args.n / t_naive:>12.1f}")
    print(f"\nspeed-up: {ratio:.1f}x")
    how = f"--tol {tol:.1e}" if args.tol is not None else f"{args.rel_tol:g} x max |logit| {check['scale']:.3g}"
    print(f"agreement: max |logit diff| = {diff:.2e}, tolerance {tol:.2e} ({how}); argmax compared on "
          f"{check['compared']:,} of {check['pairs']:,} (vector, image) pairs, {check['skipped']:,} near-ties "
          f"(top-2 margin <= tolerance) skipped ({check['skipped_differ']} of them with another argmax); "
          f"{check['disagree']} real disagreements -> {'AGREE' if agree else 'DISAGREE'}")
    return exit_status([("batched logits agree with the one-by-one reference", agree)])


def agreement(batched: torch.Tensor, ref: torch.Tensor, *, rel_tol: float = 1e-3,
              tol: float | None = None) -> dict:
    """Compare batched logits (N, n, classes) with the one-by-one reference, up to float noise.

    The tolerance is `tol`, else `rel_tol` times the largest |logit| of the reference. The
    logits must agree within it everywhere; the argmax only where the reference's top-2
    margin exceeds it (elsewhere it is a near-tie: counted as skipped, not compared).
    """
    scale = float(ref.abs().max())
    tol = float(tol) if tol is not None else rel_tol * scale
    diff = float((batched - ref).abs().max())
    top2 = ref.topk(2, dim=-1).values if ref.shape[-1] > 1 else torch.cat([ref, ref - float("inf")], -1)
    decided = (top2[..., 0] - top2[..., 1]) > tol
    differs = batched.argmax(-1) != ref.argmax(-1)
    disagree = int((differs & decided).sum())
    return {"max_abs_diff": diff, "tol": tol, "scale": scale, "pairs": decided.numel(),
            "compared": int(decided.sum()), "skipped": int((~decided).sum()),
            "skipped_differ": int((differs & ~decided).sum()), "disagree": disagree,
            "agree": disagree == 0 and diff <= tol}


def _suffix_names(evaluator: BatchedEvaluator):
    # The suffix modules by their qualified names in the model, for the printout.
    names = {id(m): q for q, m in evaluator.model.named_modules()}
    return [(names.get(id(m), type(m).__name__), m) for m, _ in evaluator.suffix]


if __name__ == "__main__":
    sys.exit(main())
