"""The cost estimate: its arithmetic on hand-made throughputs (exact numbers), the slots of a cluster file, a GPU
never measured (said, never guessed), what a sweep's folder already holds, and the calibration's cache.

CPU, offline, no Ray; a store on tmp_path; the cache under PDIFF_SWEEP_CACHE=tmp_path.
"""

from __future__ import annotations

import copy
import json
import math
import time

import pytest

from orchestrator.runtime import calibrate
from orchestrator.runtime.cost import (Calibration, Machine, Measurement, all_needs, baselines_seconds, cell_seconds,
                                       cell_work, knob_value, needs, points, slots, splits, stage1_wall, stage2_wall,
                                       trial_seconds, trial_work)
from orchestrator.runtime.estimate import (Estimate, Target, done_lines, here, node_types, plan_cost_lines)
from orchestrator.spec import Distribution, Resources, parse_spec
from orchestrator.store.tables import Store
from pdiff import PdiffConfig

RAW = {
    "name": "costs", "storage": "results", "seed": 0,
    "sources": {"archs": ["mlp"], "datasets": ["digits"], "seeds": [0, 1],
                "train": {"epochs": 2, "batch_size": 100}, "collect": {"k": 10, "interval": 2, "unit": "step"}},
    "pdiff": {"knobs": {"latent_dim": {"type": "choice", "values": [32, 64]}, "ae_steps": 100, "ldm_steps": 50,
                        "n_generated": 10, "sampler": "ddim", "sample_steps": 5},
              "num_samples": 3, "max_concurrent": 2, "baselines": True},
    "resources": {"sources": {"cpus": 1, "gpus": 0}, "trials": {"cpus": 1, "gpus": 0}},
}
# Seconds per unit of each kind; an AE step at the high end (latent_dim 64) takes HIGH_AE.
RATES = {"source_step": 0.5, "ae_step": 0.01, "ldm_step": 0.02, "sample": 3.0, "score_prefix": 0.001,
         "score_vector": 0.0001}
HIGH_AE = 0.02
CPU = "cpu (test)"
CELL = 46 * 0.5 + 503 * (2 * 0.001 + 11 * 0.0001)  # (26 training + 20 collection steps), 11 models on 503 images
TRIAL = 100 * 0.01 + 50 * 0.02 + 3.0 + 503 * (5 * 0.001 + 50 * 0.0001)  # 10 generated + 4 families of 10
BASELINES = 503 * (3 * 0.001 + 30 * 0.0001)

CLUSTER = """
max_workers: 2
available_node_types:
  head:
    node_config: {InstanceType: m5.2xlarge}
    resources: {"CPU": 0, "pdiff_head": 1}
    max_workers: 0
  gpu_worker:
    node_config: {InstanceType: g5.2xlarge}
    resources: {"CPU": 8, "GPU": 1}
    max_workers: 3
  odd_worker:
    node_config: {InstanceType: x9.big}
    resources: {"CPU": 4, "GPU": 2}
    max_workers: 1
"""


def make_spec(**resources) -> object:
    raw = copy.deepcopy(RAW)
    raw["resources"] |= resources
    return parse_spec(raw, "sweeps/costs.yaml")


@pytest.fixture(scope="module")
def spec():
    return make_spec()


@pytest.fixture(scope="module")
def gpu_spec():
    return make_spec(sources={"cpus": 1, "gpus": 1}, trials={"cpus": 1, "gpus": 0.25})


def calibration(spec, device: str = CPU, threads: int = 1) -> Calibration:
    """Every throughput the spec needs, on `device`, at RATES, measured two hours ago."""
    made = []
    for stage in (1, 2):
        for kind, what in all_needs(spec, stage):
            seconds = HIGH_AE if kind == "ae_step" and what["ae"]["latent_dim"] == 64 else RATES[kind]
            made.append(Measurement(kind, what, device, seconds, time.time() - 7200, "2.x", threads))
    return Calibration(Machine(CPU, 2), tuple(made))


HERE = Target("here", 2, 0, 1, None, "here", local=True)


# -- the arithmetic -------------------------------------------------------------------------------------------

def test_splits_and_the_work_of_a_cell(spec):
    assert splits("digits") == (1294, 144, 359)
    assert splits("cifar10") == (45000, 5000, 10000)
    cell = spec.cells[0]
    work = cell_work(cell)
    assert (work.train_steps, work.collect_steps, work.scored, work.calls, work.images) == (26, 20, 11, 2, 503)
    assert cell_work(cell, workers=2).train_steps == 2 * 7  # each DDP worker takes every other batch
    by_epoch = cell.collect.__class__(k=10, interval=2, unit="epoch")
    assert cell_work(cell.__class__(**{**cell.__dict__, "collect": by_epoch})).collect_steps == 10 * 2 * 13
    assert cell_seconds(work, RATES) == pytest.approx(CELL, abs=1e-12)


def test_the_work_and_seconds_of_a_trial():
    cfg = PdiffConfig.from_knobs(ae_steps=100, ldm_steps=50, n_generated=10)
    work = trial_work(cfg, n_ref=10, baselines=True)
    assert (work.ae_steps, work.ldm_steps, work.scored, work.calls) == (100, 50, 50, 5)
    assert trial_work(cfg, n_ref=10, baselines=False).scored == 20  # its own and its latent Gaussian
    assert trial_seconds(work, 503, RATES) == pytest.approx(TRIAL, abs=1e-12)
    assert baselines_seconds(10, 503, RATES) == pytest.approx(BASELINES, abs=1e-12)


def test_a_searched_knob_counts_at_its_mean_and_its_high_end():
    log_int = Distribution("int", 10000, 30000, log=True)
    assert knob_value("ae_steps", log_int, "mean") == round(20000 / math.log(3)) == 18205
    assert knob_value("ae_steps", log_int, "high") == 30000
    assert knob_value("ae_lr", Distribution("loguniform", 1.0, math.e), "mean") == pytest.approx(math.e - 1)
    assert knob_value("ae_lr", Distribution("uniform", 0.0, 1.0), "mean") == 0.5
    sizes = Distribution("choice", values=(64, 128, 256))
    assert (knob_value("latent_dim", sizes, "mean"), knob_value("latent_dim", sizes, "high")) == (128, 256)
    counts = Distribution("choice", values=(1000, 2000, 6000))
    assert knob_value("ae_steps", counts, "mean") == 3000  # a count: the mean itself
    names = Distribution("choice", values=("mlp", "unet"))
    assert (knob_value("ldm_denoiser", names, "mean"), knob_value("ldm_denoiser", names, "high")) == ("mlp", "unet")


def test_points_slots_and_walls(spec):
    assert [cfg.ae.latent_dim for cfg in points(spec).values()] == [32, 64]
    assert slots(8, 1, 8, Resources(cpus=2, gpus=0.25)) == 32
    assert slots(8, 1, 8, Resources(cpus=8, gpus=1)) == 8
    assert slots(2, 0, 1, Resources(cpus=1, gpus=0)) == 2
    assert slots(2, 0, 1, Resources(cpus=1, gpus=1)) == 0  # a GPU asked of a machine without one
    assert stage1_wall([10, 10, 10, 30], 2) == 30  # the longest cell
    assert stage1_wall([10, 10, 10, 10], 2) == 20  # the work per slot
    assert stage2_wall([(3, 10, 1), (3, 10, 1)], max_concurrent=2, at_once=4) == 20  # ceil(3 / 2) x 10
    assert stage2_wall([(3, 10, 1), (3, 10, 1)], max_concurrent=2, at_once=1) == 62


def test_an_estimate_from_hand_made_throughputs(spec):
    est = Estimate(spec, calibration(spec), HERE)
    s1 = est.stage1(list(spec.cells))
    assert (s1.tasks, s1.at_once, s1.gpu_hours) == (2, 2, 0)
    assert s1.wall == pytest.approx(CELL)
    mean, high = points(spec).values()
    full = [(c, 3, True) for c in spec.cells]
    s2 = est.stage2(mean, full)
    assert (s2.tasks, s2.at_once) == (6, 2)
    assert s2.wall == pytest.approx(2 * (3 * TRIAL + BASELINES) / 2)  # the work per slot beats ceil(3 / 2) trials
    assert est.stage2(high, full).wall == pytest.approx(3 * (TRIAL + 100 * (HIGH_AE - 0.01)) + BASELINES)
    # A CPU task asking 2 CPUs: the one-thread figures halve (and the lines say they were scaled).
    halved = est.rates(needs(spec.cells[0], mean, 2), Resources(cpus=2))
    assert halved == pytest.approx({k: v / 2 for k, v in RATES.items() if k != "source_step"})


# -- the cluster file and a GPU never measured ----------------------------------------------------------------

def test_node_types_from_a_cluster_file(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    gpu, odd = node_types(path)  # the head (max_workers 0) runs nothing
    assert (gpu.name, gpu.cpus, gpu.gpus, gpu.nodes, gpu.gpu) == ("gpu_worker", 8, 1, 2, "NVIDIA A10G")  # capped
    assert (odd.nodes, odd.gpu) == (1, "GPU of x9.big")
    assert slots(gpu.cpus, gpu.gpus, gpu.nodes, Resources(cpus=1, gpus=0.25)) == 8


def test_an_unmeasured_gpu_is_said_never_guessed(gpu_spec, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    lines = plan_cost_lines(gpu_spec, calibration=calibration(gpu_spec), cluster=path)
    assert all(len(line) <= 120 for line in lines)
    text = " ".join(line.strip() for line in lines)
    assert "here (2 cores of test, no GPU): stage 1 cannot run (cell asks 1 CPU, 1 GPU)" in text
    assert "stage 1 unmeasured (2 cells, 2 at once); stage 2 unmeasured (6 trials, 4 at once)" in text
    assert "GPU-hours: stage 1 ?, stage 2 ?" in text
    assert "NVIDIA A10G unmeasured (" in text
    assert "on a gpu_worker node run `python -m orchestrator.sweep --dry-run --calibrate sweeps/costs.yaml`" in text
    assert "~" not in text.split("gpu_worker (")[1].split("odd_worker")[0].split("copy its")[0]  # no figure


def test_a_measured_gpu_gives_wall_time_and_gpu_hours(gpu_spec, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    cal = calibration(gpu_spec, device="NVIDIA A10G")
    node = node_types(path)[0]
    est = Estimate(gpu_spec, cal, node)
    s1 = est.stage1(list(gpu_spec.cells))
    assert (s1.at_once, s1.wall, s1.gpu_hours) == (2, pytest.approx(CELL), pytest.approx(2 * CELL / 3600))
    s2 = est.stage2(points(gpu_spec)["mean"], [(c, 3, True) for c in gpu_spec.cells])
    assert s2.at_once == 4 and s2.wall == pytest.approx(2 * TRIAL)  # ceil(3 / 2) trials of a cell
    assert s2.gpu_hours == pytest.approx(2 * (3 * TRIAL + BASELINES) * 0.25 / 3600)
    text = " ".join(line.strip() for line in plan_cost_lines(gpu_spec, calibration=cal, cluster=path))
    assert "GPU-hours: stage 1 0.0, stage 2 0.0" in text and "throughputs: NVIDIA A10G, torch 2.x" in text
    assert "measured 2.0 h ago" in text


# -- what is already done -------------------------------------------------------------------------------------

def write_done(spec, store: Store, second_cell_failed: bool = False) -> None:
    c0, c1 = spec.cells
    store.write("sources", c0.cell_id, "source", [{"status": "healthy", "seconds": 60.0}])
    if second_cell_failed:
        store.write("sources", c1.cell_id, "source", [{"status": "failed", "seconds": 30.0}])
    store.write("trials", c0.cell_id, "t1", [{"trial_id": "t1", "search_hash": spec.search_hash,
                                              "status": "completed", "seconds": 120.0}])
    store.write("trials", c0.cell_id, "t2", [{"trial_id": "t2", "search_hash": spec.search_hash,
                                              "status": "failed", "seconds": 60.0}])
    store.write("trials", c0.cell_id, "t3", [{"trial_id": "t3", "search_hash": "another", "status": "completed",
                                              "seconds": 1.0}])  # another search's: not this one's
    store.write("baselines", c0.cell_id, "baselines", [{"method": "noise", "index": 0}])


def test_done_lines_count_cells_trials_and_time_left(spec, tmp_path):
    store = Store(str(tmp_path / "results"), spec.name, spec.spec_hash)
    assert done_lines(spec, store) == []  # no sweep folder yet
    write_done(spec, store)
    lines = done_lines(spec, store)
    assert all(len(line) <= 120 for line in lines)
    assert " ".join(line.strip() for line in lines) == (
        "done: 1 of 2 cells, 2 of 6 trials (1 completed, 1 failed), baselines of 1 of 2 cells: 1 cell and 4 trials "
        "left, ~60 s of stage-1 work (60 s each, the mean so far) and ~6 min of trial work (1.5 min each, the "
        "mean so far)")
    # What is left, timed on this machine: the second cell, then 1 + 3 trials and its baselines.
    text = " ".join(line.strip() for line in plan_cost_lines(spec, store, calibration=calibration(spec)))
    left = CELL + max(math.ceil(3 / 2) * TRIAL, (4 * TRIAL + BASELINES) / 2)
    assert f"left: ~{round(left)} s" in text


def test_a_failed_cell_gets_no_trials(spec, tmp_path):
    store = Store(str(tmp_path / "results"), spec.name, spec.spec_hash)
    write_done(spec, store, second_cell_failed=True)
    assert " ".join(line.strip() for line in done_lines(spec, store)) == (
        "done: 2 of 2 cells (1 failed the health check: no trials), 2 of 3 trials (1 completed, 1 failed), "
        "baselines of 1 of 1 cells: 1 trial left, ~1.5 min of trial work (1.5 min each, the mean so far)")


# -- the calibration: measured once, then read from the cache -------------------------------------------------

def test_calibration_is_cached(spec, gpu_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PDIFF_SWEEP_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(calibrate, "measure", lambda kind, what, device, threads: calls.append(kind) or 0.5)
    machine = Machine(CPU, 2)
    first = calibrate.spec_calibration(spec, machine=machine)
    unique = {(k, json.dumps(w, sort_keys=True)) for stage in (1, 2) for k, w in all_needs(spec, stage)}
    assert len(calls) == len(unique) == len(list((tmp_path / "calibration").glob("*.json")))
    second = calibrate.spec_calibration(spec, machine=machine)
    assert len(calls) == len(unique)  # all read back from the cache
    what = needs(spec.cells[0], None, 1)["source_step"]
    assert first.find(CPU, "source_step", what) == second.find(CPU, "source_step", what)
    assert second.find(CPU, "source_step", what).seconds == 0.5
    calibrate.spec_calibration(gpu_spec, machine=machine)  # asks a GPU this machine lacks: nothing timed
    assert len(calls) == len(unique)


def test_every_kind_is_measured_with_torch(spec, monkeypatch):
    monkeypatch.setattr(calibrate, "BUDGET", 0.0)  # two steps each
    monkeypatch.setattr(calibrate, "IMAGES", {"cpu": 8})
    monkeypatch.setattr(calibrate, "VECTORS", 3)
    cell, cfg = spec.cells[0], points(spec)["mean"]
    for kind, what in (needs(cell, None, 1) | needs(cell, cfg, 2)).items():
        assert calibrate.measure(kind, what, "cpu", 1) > 0, kind


def test_here_names_this_machine():
    target = here(Machine("cpu (Some CPU)", 16, "NVIDIA H100 80GB HBM3", 1))
    assert target.about == "here (16 cores of Some CPU, 1 x NVIDIA H100 80GB HBM3)"
    assert (target.cpus, target.gpus, target.nodes, target.local) == (16, 1, 1, True)


def test_the_dry_run_prints_the_estimate_and_what_a_finished_sweep_holds(tiny_spec, finished_sweep, capsys):
    """`--dry-run` on the finished tiny sweep's folder: the plan, its cost estimate (no throughput cached in the
    suite's own cache, so none is invented) and the done line counting the stored cells and trials."""
    from tiny_sweep import CELLS, TRIALS

    from orchestrator.sweep import main

    assert main([str(tiny_spec), "--dry-run", "--storage", finished_sweep.storage]) == 0
    out = capsys.readouterr().out
    assert "cost estimate:" in out and "unmeasured" in out and "--dry-run --calibrate" in out
    done = " ".join(line.strip() for line in out[out.index("done:"):].splitlines())
    assert done.startswith(f"done: {CELLS} of {CELLS} cells, {CELLS * TRIALS} of {CELLS * TRIALS} trials")
    assert "nothing left" in done
