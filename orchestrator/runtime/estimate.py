"""The plan's cost lines: per stage, wall time and GPU-hours for the resources the spec asks, here and on each
worker node type of a Ray cluster launcher file (`cluster.yaml`), and what the sweep's folder already holds.

`plan_cost_lines` and `done_lines` are what `python -m orchestrator.sweep --dry-run` prints; the arithmetic is
`orchestrator.runtime.cost`'s, the throughputs a `Calibration` (`orchestrator.runtime.calibrate`). A
throughput never measured on a device is said to be unmeasured, with the command that measures it, never
guessed; CPU figures on other machines scale from this machine's, and the lines say so. Torch-free.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import yaml

from orchestrator.runtime.cost import (CALIBRATE, DEFAULT_CACHE, GPU_OF_FAMILY, KINDS, TIMING_KNOBS, Calibration,
                                       Machine, Measurement, baselines_seconds, calibration_dir, cell_seconds,
                                       cell_work, needs, points, slots, splits, stage1_wall, stage2_wall,
                                       trial_seconds, trial_work)
from pdiff.config import PdiffConfig
from pdiff.names import METHODS

if TYPE_CHECKING:  # the spec's module imports torch; this one stays torch-free
    from orchestrator.spec import Cell, Resources, SweepSpec
    from orchestrator.store.tables import Store

__all__ = ["Target", "StageCost", "Estimate", "Done", "here", "node_types", "read_done", "plan_cost_lines",
           "done_lines", "wrap", "DEFAULT_CLUSTER", "WIDTH"]

DEFAULT_CLUSTER = "cluster.yaml"  # the launcher file `ray up` reads, in the folder the command runs in
WIDTH = 120  # the plan's lines
@dataclass(frozen=True)
class Target:
    """Where a sweep may run: this machine, or up to `nodes` workers of a cluster's node type."""

    name: str
    cpus: float  # per node
    gpus: float
    nodes: int
    gpu: str | None  # its GPU's device name
    about: str  # how the plan names it
    local: bool = False


def node_types(path: str | os.PathLike) -> list[Target]:
    """The worker node types of a Ray cluster launcher file (`available_node_types`: resources, max_workers,
    capped by the cluster's max_workers); a GPU named by its AWS instance family (GPU_OF_FAMILY)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    cap = doc.get("max_workers")
    out = []
    for name, node in (doc.get("available_node_types") or {}).items():
        res, nodes = node.get("resources") or {}, int(node.get("max_workers", 0))
        nodes = min(nodes, int(cap)) if cap is not None else nodes
        if nodes <= 0:
            continue
        instance = (node.get("node_config") or {}).get("InstanceType")
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        gpu = (GPU_OF_FAMILY.get(str(instance).split(".")[0]) or f"GPU of {instance or name}") if gpus else None
        about = (f"{name} ({instance + ', ' if instance else ''}up to {nodes} x {cpus:g} CPU, {gpus:g} GPU"
                 f"{' ' + gpu if gpu else ''})")
        out.append(Target(name, cpus, gpus, nodes, gpu, about))
    return out


def here(machine: Machine) -> Target:
    """This machine as a target: one node of all its cores and GPUs."""
    gpu = f"{machine.gpus} x {machine.gpu}" if machine.gpus else "no GPU"
    cpu = machine.cpu.removeprefix("cpu (").removesuffix(")")
    return Target("here", machine.cores, machine.gpus, 1, machine.gpu, f"here ({machine.cores} cores of {cpu}, {gpu})",
                  local=True)


# -- the estimate on one target -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageCost:
    tasks: int
    at_once: int  # 0: the target cannot run a task
    wall: float | None  # seconds; None: a throughput is unmeasured
    gpu_hours: float | None


class Estimate:
    """A target's stage costs, collecting the measurements used and the kinds unmeasured per device."""

    def __init__(self, spec: SweepSpec, cal: Calibration | None, target: Target):
        self.spec, self.cal, self.target = spec, cal, target
        self.missing: dict[str, set[str]] = {}
        self.used: dict[str, list[Measurement]] = {}

    def device(self, res: Resources) -> str:
        return self.target.gpu if res.gpus else self.cal.machine.cpu if self.cal else "this machine's CPU"

    def rates(self, need: dict[str, dict], res: Resources) -> dict[str, float] | None:
        """Seconds per unit of each kind on the device `res` runs on; CPU ones scaled from the threads they
        were timed with to the CPUs a task asks (assumed to scale linearly). None where one is unmeasured."""
        device, out = self.device(res), {}
        for kind, what in need.items():
            m = self.cal.find(device, kind, what) if self.cal else None
            if m is None:
                self.missing.setdefault(device, set()).add(kind)
                continue
            self.used.setdefault(device, []).append(m)
            out[kind] = m.seconds * (1.0 if res.gpus else m.threads / max(1, int(res.cpus)))
        return out if len(out) == len(need) else None

    def stage1(self, cells: list[Cell]) -> StageCost:
        res, t = self.spec.source_resources, self.target
        at_once = min(len(cells), slots(t.cpus, t.gpus, t.nodes, res) // res.workers)
        rates = [(c, self.rates(needs(c, None, 1), res)) for c in cells] if at_once else []
        durations = [cell_seconds(cell_work(c, res.workers), r) for c, r in rates if r is not None]
        if len(durations) < len(cells) or not at_once:
            return StageCost(len(cells), at_once, None, None)
        return StageCost(len(cells), at_once, stage1_wall(durations, at_once),
                         sum(durations) * res.workers * res.gpus / 3600)

    def stage2(self, cfg: PdiffConfig, todo: list[tuple[Cell, int, bool]]) -> StageCost:
        """`todo`: (cell, trials, whether its baselines task runs)."""
        spec, res, t = self.spec, self.spec.trial_resources, self.target
        n_ref = spec.pdiff_config({}).n_generated
        at_once = min(slots(t.cpus, t.gpus, t.nodes, res), len(todo) * spec.max_concurrent)
        tasks = sum(n for _, n, _ in todo)
        per_cell = []
        for cell, n, base in todo if at_once else []:
            rates = self.rates(needs(cell, cfg, 2), res)
            if rates is not None:
                images = sum(splits(cell.dataset)[1:])
                per_cell.append((n, trial_seconds(trial_work(cfg, n_ref, spec.baselines), images, rates),
                                 baselines_seconds(n_ref, images, rates) if base else 0.0))
        if len(per_cell) < len(todo) or not at_once:
            return StageCost(tasks, at_once, None, None)
        return StageCost(tasks, at_once, stage2_wall(per_cell, spec.max_concurrent, at_once),
                         sum(n * d + b for n, d, b in per_cell) * res.gpus / 3600)


# -- what the sweep's folder already holds --------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    """This spec's work stored in its folder: cells with a `sources` row (their status), finished trials of
    this search (`trials` rows with its search_hash: completed, stopped or failed), cells with baselines."""

    cells: dict[str, str]  # cell id -> healthy | uniform | failed
    cell_seconds: list[float]
    trials: dict[str, list[str]]  # cell id -> the statuses of its finished trials
    trial_seconds: list[float]
    baselines: set[str]

    def todo(self, spec: SweepSpec) -> tuple[list[Cell], list[tuple[Cell, int, bool]]]:
        """(cells stage 1 still runs, (cell, trials left, whether its baselines run) of stage 2). A cell that
        failed its health check gets neither baselines nor trials."""
        todo = []
        for c in spec.cells:
            if self.cells.get(c.cell_id) != "failed":
                left = max(0, spec.num_samples - len(self.trials.get(c.cell_id, [])))
                baselines = spec.baselines and c.cell_id not in self.baselines
                todo += [(c, left, baselines)] if left or baselines else []
        return [c for c in spec.cells if c.cell_id not in self.cells], todo


def read_done(spec: SweepSpec, store: Store) -> Done | None:
    """What `store` holds of `spec` (its cells, this search's trials); None where the sweep has no folder yet.
    Reads the bucket of a URI: not for a placeholder storage."""
    ids = {c.cell_id for c in spec.cells}
    sources = [r for r in store.read("sources", columns=["cell_id", "status", "seconds"]).to_pylist()
               if r["cell_id"] in ids]
    if not sources and store.marker() is None:
        return None
    trials = [r for r in store.read("trials", columns=["cell_id", "search_hash", "status", "seconds"]).to_pylist()
              if r["cell_id"] in ids and r["search_hash"] == spec.search_hash]
    statuses: dict[str, list[str]] = {}
    for r in trials:
        statuses.setdefault(r["cell_id"], []).append(r["status"])
    baselines = set(store.read("baselines", columns=["cell_id"]).column("cell_id").to_pylist()) & ids
    seconds = lambda rows: [r["seconds"] for r in rows if _finite(r.get("seconds"))]  # noqa: E731
    return Done({r["cell_id"]: r.get("status") or "healthy" for r in sources}, seconds(sources), statuses,
                seconds(trials), baselines)


def done_lines(spec: SweepSpec, store: Store) -> list[str]:
    """What is already done, and what is left with the time it took so far per cell and per trial; nothing
    where the sweep's folder does not exist."""
    done = read_done(spec, store)
    if done is None:
        return []
    failed = sum(s == "failed" for s in done.cells.values())
    searched = [c.cell_id for c in spec.cells if done.cells.get(c.cell_id) != "failed"]
    ended = Counter(s for cid in searched for s in done.trials.get(cid, [])[:spec.num_samples])
    pending, todo = done.todo(spec)
    left_trials = sum(n for _, n, _ in todo)
    text = (f"done: {len(done.cells)} of {len(spec.cells)} cells"
            + (f" ({failed} failed the health check: no trials)" if failed else "")
            + f", {sum(ended.values())} of {spec.num_samples * len(searched)} trials"
            + (f" ({', '.join(f'{n} {s}' for s, n in sorted(ended.items()))})" if ended else "")
            + (f", baselines of {len(done.baselines)} of {len(searched)} cells" if spec.baselines else ""))
    left = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in ((len(pending), "cell"), (left_trials, "trial")) if n]
    text += ": " + (" and ".join(left) + " left" if left else "nothing left")
    times = [f"~{_duration(n * _mean(s))} of {what} work ({_duration(_mean(s))} each, the mean so far)"
             for n, s, what in ((len(pending), done.cell_seconds, "stage-1"), (left_trials, done.trial_seconds,
                                                                                "trial")) if n and s]
    return _wrap(text + (", " + " and ".join(times) if times else ""))


# -- the plan's lines -----------------------------------------------------------------------------------------

def plan_cost_lines(spec: SweepSpec, store: Store | None = None, *, calibration: Calibration | None = None,
                    cluster: str | os.PathLike | None = DEFAULT_CLUSTER) -> list[str]:
    """The cost estimate: the searched knobs' values it assumes, the work, and per target (here, with a
    calibration; each worker node type of `cluster`, where that file exists) wall time and GPU-hours per stage,
    with what is left where `store` holds some of the sweep."""
    head = "cost estimate" + ("" if calibration else f" (no throughputs measured here: `{CALIBRATE} "
                                                     f"{spec.source_file}` measures them)")
    lines = [head + ":"] + _knob_lines(spec) + _work_lines(spec)
    done = read_done(spec, store) if store is not None else None
    targets = ([here(calibration.machine)] if calibration else []) + (
        node_types(cluster) if cluster and Path(cluster).is_file() else [])
    for target in targets:
        lines += _target_lines(spec, calibration, target, done)
    return lines


def _knob_lines(spec: SweepSpec) -> list[str]:
    searched = [k for k in TIMING_KNOBS if k in spec.search]
    if not searched:
        return []
    mean, high = (cfg.knobs() for cfg in points(spec).values())
    return _wrap("  searched knobs at their distribution's mean (at most: at its high end): "
                 + ", ".join(f"{k} {_number(mean[k])} ({_number(high[k])})" for k in searched))


def _work_lines(spec: SweepSpec) -> list[str]:
    works = [cell_work(c, spec.source_resources.workers) for c in spec.cells]
    n_ref = spec.pdiff_config({}).n_generated
    mean, high = (trial_work(cfg, n_ref, spec.baselines) for cfg in points(spec).values())
    at_most = lambda a, b: f" (at most {_number(b)})" if b != a else ""  # noqa: E731
    return _wrap(
        f"  work: stage 1 {sum(w.train_steps for w in works):,} training + {sum(w.collect_steps for w in works):,} "
        f"collection steps (per DDP worker), {sum(w.scored for w in works):,} models scored; stage 2 per trial "
        f"{_number(mean.ae_steps)}{at_most(mean.ae_steps, high.ae_steps)} AE steps (a bound: the AE stops once it "
        f"reconstructs the snapshots) + {_number(mean.ldm_steps)}{at_most(mean.ldm_steps, high.ldm_steps)} LDM "
        f"steps, {mean.scored:,} models scored" + (f"; per cell {len(METHODS) * n_ref:,} baseline models scored"
                                                   if spec.baselines else "")
        + "; not counted: Ray's start-up, loading data, checkpoints")


def _target_lines(spec: SweepSpec, cal: Calibration | None, target: Target, done: Done | None) -> list[str]:
    est = Estimate(spec, cal, target)
    mean, high = points(spec).values()
    full = [(c, spec.num_samples, spec.baselines) for c in spec.cells]
    s1, s2, s2_high = est.stage1(list(spec.cells)), est.stage2(mean, full), est.stage2(high, full)
    text = (f"  {target.about}: {_stage_text('stage 1', s1, 'cells', spec.source_resources)}; "
            f"{_stage_text('stage 2', s2, 'trials', spec.trial_resources, s2_high)}"
            + (f" + {len(spec.cells)} baselines tasks" if spec.baselines and s2.at_once else "")
            + f"; {_gpu_text(spec, s1, s2, s2_high)}")
    if done is not None:
        pending, todo = done.todo(spec)
        walls = [est.stage1(pending).wall if pending else 0.0, est.stage2(mean, todo).wall if todo else 0.0]
        if None not in walls:
            text += f"; left: ~{_duration(sum(walls))}" if sum(walls) else "; nothing left"
    return _wrap(text) + _throughput_lines(spec, est)


def _stage_text(name: str, cost: StageCost, unit: str, res: Resources, upper: StageCost | None = None) -> str:
    if not cost.at_once:
        asks = (f"{res.workers} x " if res.workers > 1 else "") + f"{res.cpus:g} CPU, {res.gpus:g} GPU"
        return f"{name} cannot run ({unit[:-1]} asks {asks})"
    count = f"{cost.tasks} {unit}, {cost.at_once} at once"
    if cost.wall is None:
        return f"{name} unmeasured ({count})"
    most = max(cost.wall, upper.wall if upper is not None and upper.wall is not None else 0.0)  # timing noise
    return f"{name} ~{_duration(cost.wall)}" + (f", at most ~{_duration(most)}" if _duration(most) !=
                                                  _duration(cost.wall) else "") + f" ({count})"


def _gpu_text(spec: SweepSpec, s1: StageCost, s2: StageCost, s2_high: StageCost) -> str:
    if not spec.source_resources.gpus and not spec.trial_resources.gpus:
        return "no GPU asked"
    if not s1.at_once and not s2.at_once:
        return "no GPU-hours"
    hours = lambda c: "?" if c.gpu_hours is None else f"{c.gpu_hours:.1f}"  # noqa: E731
    upper = f" (at most {hours(s2_high)})" if s2.gpu_hours is not None and s2_high.gpu_hours is not None and \
        s2_high.gpu_hours > s2.gpu_hours and hours(s2_high) != hours(s2) else ""
    return f"GPU-hours: stage 1 {hours(s1)}, stage 2 {hours(s2)}{upper}"


def _throughput_lines(spec: SweepSpec, est: Estimate) -> list[str]:
    """Where each throughput used comes from (device, torch, threads, how old), and the devices unmeasured."""
    lines, now = [], time.time()
    for device, used in est.used.items():
        ages = sorted(now - m.measured_at for m in used)
        age = _age(ages[0]) + (f" to {_age(ages[-1])}" if _age(ages[-1]) != _age(ages[0]) else "")
        threads = "/".join(str(t) for t in sorted({m.threads for m in used}))
        text = (f"    throughputs: {device}, torch {', '.join(sorted({m.torch for m in used}))}, {threads} "
                f"thread(s), measured {age}")
        if device.startswith("cpu") and not est.target.local:
            text += ("; this machine's CPU scaled to the CPUs a task asks, assuming the node's cores as fast "
                     "and the work to scale with cores")
        lines += _wrap(text)
    for device, kinds in est.missing.items():
        here = est.target.local or not est.target.gpu or device != est.target.gpu
        text = (f"    {device} unmeasured ({', '.join(KINDS[k] for k in sorted(kinds))}): on "
                f"{'this machine' if here else 'a ' + est.target.name + ' node'} run `{CALIBRATE} {spec.source_file}`")
        if not here:
            text += f", then copy its {DEFAULT_CACHE}/calibration/*.json into {_home(calibration_dir())}"
        lines += _wrap(text)
    return lines


def _wrap(text: str) -> list[str]:
    indent = " " * (len(text) - len(text.lstrip()) + 2)
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def wrap(text: str, phrases: Sequence[str] = ()) -> list[str]:
    """`text` as the plan's lines: at most WIDTH characters, the later ones indented two more than the first,
    broken between words but never inside one of `phrases` (a distribution, `ae_steps ~ int[1, 9] (log scale)`)."""
    for phrase in phrases:
        text = text.replace(phrase, phrase.replace(" ", "\0"))
    return [line.replace("\0", " ") for line in _wrap(text)]


def _duration(seconds: float) -> str:
    """20 s, 1.5 min, 40 min, 2.5 h, 3.2 d."""
    return (f"{max(1, round(seconds))} s" if seconds < 90 else f"{seconds / 60:.2g} min" if seconds < 600
            else f"{round(seconds / 60)} min" if seconds < 5400 else f"{seconds / 3600:.1f} h" if seconds < 172800
            else f"{seconds / 86400:.1f} d")


def _age(seconds: float) -> str:
    return "just now" if seconds < 60 else _duration(seconds) + " ago"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else \
        f"{value:.3g}" if isinstance(value, float) else str(value)


def _home(path: Path) -> str:
    home = os.path.expanduser("~")
    return "~" + str(path)[len(home):] if str(path).startswith(home + os.sep) else str(path)
