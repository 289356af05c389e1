"""Throughputs for the cost estimate, timed with torch on this machine's device and cached.

What `orchestrator.runtime.cost.all_needs` lists for a spec, a few steps each (seconds in all): a source
training step of an arch at a dataset's shape on synthetic data (no download; on the CPU at a batch of at most
CPU_BATCH, scaled to the spec's), an AE step and an LDM step at the cell's subset size and the knobs' sizes,
sampling a trial's N models, and scoring (the frozen prefix per image, the rest per image and model). Steps go
through pdiff's own training functions, timed at 1 + n steps less 1 step, so fixed costs (building, the final
checks) cancel.

Each measurement is one JSON file in `orchestrator.runtime.cost.calibration_dir()` (under $PDIFF_SWEEP_CACHE,
default ~/.cache/pdiff-sweep), keyed by the device's name, torch's version, the CPU threads and what was timed
(kind, arch, dataset (its shape), sizes), with the time it was measured. Files measured on another machine (a
cluster node) may be copied in: they count for that machine's device.

`python -m orchestrator.runtime.calibrate SPEC` measures what SPEC needs here and prints the estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from orchestrator.console import ArgumentParser, refuse, run
from orchestrator.runtime.cost import Calibration, Machine, Measurement, all_needs, calibration_dir
from orchestrator.runtime.estimate import DEFAULT_CLUSTER, plan_cost_lines
from orchestrator.spec import SpecError, SweepSpec, load_spec
from pdiff import AEConfig, LDMConfig, ParameterSubset, TrainConfig, build_model
from pdiff.autoencoder import Normalizer, ParameterAutoencoder, TrainedAutoencoder, train_autoencoder
from pdiff.collect import train_source
from pdiff.data import DATASET_SHAPES, Dataset, Split
from pdiff.diffusion import LatentDiffusion, train_diffusion
from pdiff.evaluate import BatchedEvaluator
from pdiff.pipeline import sample_vectors

__all__ = ["this_machine", "load_cache", "save", "measure", "spec_calibration", "main"]

BUDGET = 0.3  # seconds the timed steps of one measurement aim at (after one step to size them)
MAX_STEPS = 50
CPU_BATCH = 64  # the largest source batch timed on a CPU; the time is scaled to the spec's batch
IMAGES = {"cpu": 64, "cuda": 1024}  # images scored per timing
VECTORS = 50  # models scored together (BatchedEvaluator's vectors per pass)


def this_machine() -> Machine:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Machine(_cpu_name(), os.cpu_count() or 1, torch.cuda.get_device_name(0) if gpus else None, gpus)


def _cpu_name() -> str:
    """`cpu (model name)`: CPU measurements of two machines never mix."""
    try:
        names = [line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"cpu ({' '.join((names[0] if names else platform.processor() or platform.machine()).split())})"


# -- the cache ------------------------------------------------------------------------------------------------

def _file_name(m: Measurement) -> str:
    key = json.dumps([m.kind, m.what, m.device, m.torch, m.threads], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16] + ".json"


def load_cache(folder: Path | None = None) -> list[Measurement]:
    """Every measurement cached in `folder` (default calibration_dir()); an unreadable file is skipped."""
    folder = folder or calibration_dir()
    names = {f.name for f in dataclasses.fields(Measurement)}
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(Measurement(**{k: v for k, v in json.loads(path.read_text()).items() if k in names}))
        except (OSError, ValueError, TypeError):  # a broken or foreign file is no throughput
            continue
    return out


def save(m: Measurement, folder: Path | None = None) -> Path:
    """Write one measurement (with its time in words too), whole: a temporary file renamed into place."""
    folder = folder or calibration_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _file_name(m)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    when = datetime.fromtimestamp(m.measured_at, timezone.utc).isoformat(timespec="seconds")
    tmp.write_text(json.dumps(dataclasses.asdict(m) | {"measured": when}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def spec_calibration(spec: SweepSpec, *, folder: Path | None = None, machine: Machine | None = None) -> Calibration:
    """Every cached throughput, and this machine's for what each stage of `spec` needs on the device the
    stage would use here (a GPU where it asks one and this machine has one, else the CPU; a stage asking a
    GPU this machine lacks is not timed), measured where the cache lacks it for this torch and thread count."""
    folder, machine = folder or calibration_dir(), machine or this_machine()
    known = load_cache(folder)
    for stage, res in ((1, spec.source_resources), (2, spec.trial_resources)):
        if res.gpus and not machine.gpus:
            continue
        device, name = ("cuda", machine.gpu) if res.gpus else ("cpu", machine.cpu)
        threads = min(max(1, int(res.cpus)), machine.cores)
        for kind, what in all_needs(spec, stage):
            if not any((m.device, m.kind, m.what, m.torch, m.threads) == (name, kind, what, torch.__version__,
                                                                          threads) for m in known):
                known.append(Measurement(kind, what, name, measure(kind, what, device, threads), time.time(),
                                         torch.__version__, threads))
                save(known[-1], folder)
    return Calibration(machine, tuple(known))


# -- timing ---------------------------------------------------------------------------------------------------

def measure(kind: str, what: dict[str, Any], device: str, threads: int) -> float:
    """Seconds per unit of `kind` (cost.KINDS) of `what` on `device` ("cpu" or "cuda"), with `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _MEASURES[kind](what, torch.device(device))
    finally:
        torch.set_num_threads(previous)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds `fn` takes: on a GPU the wall time; on the CPU the wall time or, where less, the process's CPU time
    per thread, so that other work on a busy machine does not count (a one-thread figure is then exact)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return min(time.perf_counter() - t0, (time.process_time() - c0) / torch.get_num_threads())


def _per_step(run_steps: Callable[[int], Any], device: torch.device) -> float:
    """Seconds per step of `run_steps(n)`: after a warm-up, (time of 1 + n steps - time of 1 step) / n."""
    run_steps(1)  # lazy initialisation, kernel selection
    one = _timed(lambda: run_steps(1), device)
    n = max(2, min(MAX_STEPS, int(BUDGET / max(one, 1e-4))))
    more = _timed(lambda: run_steps(1 + n), device)
    return (more - one) / n if more > one else more / (1 + n)


def _images(dataset: str, n: int) -> Split:
    channels, classes, size = DATASET_SHAPES[dataset]
    gen = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, channels, size, size, generator=gen), torch.randint(classes, (n,), generator=gen))


def _model(what: dict[str, Any], device: torch.device | str) -> torch.nn.Module:
    channels, classes, size = DATASET_SHAPES[what["dataset"]]
    with torch.device("meta") if device == "meta" else contextlib.nullcontext():
        model = build_model(what["arch"], channels=channels, classes=classes, image_size=size)
    return model if device == "meta" else model.to(device)


def _subset_size(what: dict[str, Any]) -> int:
    return ParameterSubset.select(_model(what, "meta"), what["subset"]).numel


def _source_step(what: dict[str, Any], device: torch.device) -> float:
    batch = what["batch"] if device.type == "cuda" else min(what["batch"], CPU_BATCH)
    cfg = TrainConfig(epochs=1, batch_size=batch, optimizer=what["optimizer"], augment=what["augment"])
    shape = DATASET_SHAPES[what["dataset"]]

    def run_steps(steps: int) -> None:
        data = Dataset(what["dataset"], *shape, train=_images(what["dataset"], batch * steps),
                       val=_images(what["dataset"], 1), test=_images(what["dataset"], batch))
        train_source(_model(what, device), data, cfg, seed=0, log=lambda *_: None)

    return _per_step(run_steps, device) * what["batch"] / batch


def _ae_config(what: dict[str, Any], **more: Any) -> AEConfig:
    return AEConfig(**(what["ae"] | {"channels": tuple(what["ae"]["channels"])} | more))


def _ldm_config(what: dict[str, Any], **more: Any) -> LDMConfig:
    return LDMConfig(**(what["ldm"] | {"channels": tuple(what["ldm"]["channels"])} | more))


def _ae_step(what: dict[str, Any], device: torch.device) -> float:
    snapshots = torch.randn(what["k"], _subset_size(what), generator=torch.Generator().manual_seed(0))
    return _per_step(lambda steps: train_autoencoder(  # min_r2 1: no early stop, one check at the end
        snapshots, _ae_config(what, steps=steps, check_every=steps, min_r2=1.0), device=device), device)


def _ldm_step(what: dict[str, Any], device: torch.device) -> float:
    latents = torch.randn(what["k"], what["latent_dim"], generator=torch.Generator().manual_seed(0)).to(device)
    return _per_step(lambda steps: train_diffusion(latents, _ldm_config(what, steps=steps)), device)


def _sample(what: dict[str, Any], device: torch.device) -> float:
    """A trial's N models drawn (its sampler, its steps) and decoded, by untrained networks of its sizes."""
    n = _subset_size(what)
    ae = TrainedAutoencoder(ParameterAutoencoder(n, _ae_config(what)).to(device),
                            Normalizer(torch.randn(4, n)).to(device), [])
    ldm = LatentDiffusion(torch.randn(4, what["ae"]["latent_dim"]), _ldm_config(what)).to(device)
    sample_vectors(ae, ldm, 2, sampler="ddim", steps=2)  # warm-up
    return _timed(lambda: sample_vectors(ae, ldm, what["n"], sampler=what["sampler"], steps=what["sample_steps"]),
                  device)


def _evaluator(what: dict[str, Any], device: torch.device) -> tuple[BatchedEvaluator, Split, torch.Tensor]:
    model = _model(what, device)
    ev = BatchedEvaluator(model, ParameterSubset.select(model, what["subset"]))
    return ev, _images(what["dataset"], IMAGES[device.type]), ev.subset.flatten(model)[None].repeat(VECTORS, 1)


def _score_prefix(what: dict[str, Any], device: torch.device) -> float:
    ev, split, _ = _evaluator(what, device)
    x = split.x.to(device)
    ev.features(x[:8])  # warm-up
    return _timed(lambda: ev.features(x), device) / len(split)


def _score_vector(what: dict[str, Any], device: torch.device) -> float:
    """Per image and model: scoring VECTORS models less scoring one, the prefix shared."""
    ev, split, vectors = _evaluator(what, device)
    ev.predictions(vectors[:1], split)  # warm-up
    one = _timed(lambda: ev.predictions(vectors[:1], split), device)
    many = _timed(lambda: ev.predictions(vectors, split), device)
    return (many - one) / ((VECTORS - 1) * len(split)) if many > one else many / (VECTORS * len(split))


_MEASURES = {"source_step": _source_step, "ae_step": _ae_step, "ldm_step": _ldm_step, "sample": _sample,
             "score_prefix": _score_prefix, "score_vector": _score_vector}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.runtime.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="sweep YAML file, e.g. sweeps/smoke.yaml")
    parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help="Ray cluster launcher file (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError) as err:
        return refuse(err)
    calibration = spec_calibration(spec)
    print(f"throughputs of {spec.source_file} in {calibration_dir()}")
    print("\n".join(plan_cost_lines(spec, calibration=calibration, cluster=args.cluster)))
    return 0


if __name__ == "__main__":
    run(main)
