"""Stage 1 and LDM step speed on this CPU: the `pdiff` of a git revision against the working tree, interleaved.

    python -m benchmarks.cpu_speed [--before 4b8b90a] [--rounds 3] [--threads 1]

Issue 9 moved source training onto the device (data, crop and flip augmentation,
no per-step host sync) and made the LDM's EMA one fused update with device-side
noise; its CPU target is that nothing gets slower. This benchmark extracts
`pdiff/` of `--before` (default: the commit before that work) into a temporary
folder and times, in fresh subprocesses alternating before / now in each round
(this machine is noisy, so only ratios measured side by side mean anything):

  source epoch   one epoch of `train_source` (cnn_small on digits, batch 64, with augmentation)
  collection     200 snapshot steps of the subset bn2 + fc (`collect_snapshots`)
  LDM step       `train_diffusion` at LDMConfig's defaults on 200 latents of 64 numbers

It prints the median of each phase per version and the ratio now / before.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a subprocess with PYTHONPATH at one version of pdiff; prints one JSON line.
WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from pdiff import CollectConfig, ParameterSubset, TrainConfig, build_model, load_dataset
from pdiff.collect import collect_snapshots, train_source
from pdiff.diffusion import LDMConfig, train_diffusion
data = load_dataset("digits", seed=0)
model = build_model("cnn_small", channels=data.channels, classes=data.classes, image_size=data.image_size, seed=0)
t0 = time.perf_counter()
train_source(model, data, TrainConfig(epochs=1, batch_size=64, lr=0.05), seed=0, log=lambda _: None)
epoch = time.perf_counter() - t0
subset = ParameterSubset.select(model, ("bn2.*", "fc.*"))
t0 = time.perf_counter()
collect_snapshots(model, subset, data, CollectConfig(k=200, interval=1, lr=0.05), seed=0, batch_size=64,
                  log=lambda _: None)
collection = time.perf_counter() - t0
latents = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
steps = 150
t0 = time.perf_counter()
train_diffusion(latents, LDMConfig(steps=steps), seed=0)
ldm = (time.perf_counter() - t0) / steps
print(json.dumps({"source epoch (s)": epoch, "collection (s)": collection, "LDM step (ms)": 1000 * ldm}))
"""


def extract(revision: str, into: Path) -> Path:
    """`pdiff/` as it was at `revision`, written under `into`."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "pdiff"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(pythonpath: Path, threads: int) -> dict[str, float]:
    env = os.environ | {"PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads)], env=env, cwd=pythonpath, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="4b8b90a", help="git revision whose pdiff is the baseline")
    p.add_argument("--rounds", type=int, default=3, help="before/now pairs, alternating")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each subprocess")
    args = p.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory(prefix="pdiff-before-") as tmp:
        versions = {"before": extract(args.before, Path(tmp)), "now": ROOT}
        for r in range(args.rounds):
            for name in (("before", "now") if r % 2 == 0 else ("now", "before")):
                runs[name].append(measure(versions[name], args.threads))
                print(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(
                    f"{k} {v:.3g}" for k, v in runs[name][-1].items()), flush=True)
    print(f"\nmedians over {args.rounds} round(s), {args.threads} thread(s); before = {args.before}")
    print(f"{'phase':<20}{'before':>10}{'now':>10}{'now/before':>12}")
    for phase in runs["now"][0]:
        b = statistics.median(x[phase] for x in runs["before"])
        n = statistics.median(x[phase] for x in runs["now"])
        print(f"{phase:<20}{b:>10.3f}{n:>10.3f}{n / b:>12.2f}")


if __name__ == "__main__":
    main()
