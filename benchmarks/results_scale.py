"""Results at sweep scale: the summary, a one-table query and the report of a synthetic 400-cell sweep.

    python -m benchmarks.results_scale [--cells 400] [--trials 24] [--keep DIR]

Builds a sweep folder of `--cells` cells x `--trials` trials with the tables' real schemas
(`orchestrator.store.tables.TABLES`) and the sizes of the smoke sweep (K = 50 snapshots, N = 50
generated models per trial, 3 baselines x 50, parameter vectors of 394..650 float32, packed
wrong-prediction sets of digits' 144 val / 359 test examples, 24 loss-curve points per phase):
one file per writer, as stage 1 and stage 2 write them. The cells span 4 archs x 2 datasets
(names only: nothing is trained, the rows are random but consistent).

Then, each in a fresh Python process (peak memory from `os.wait4`'s ru_maxrss):

- the per-cell summary and the one-table query (`select count(*) from trials`), on the folder as
  written (for comparison) and after compaction;
- the compaction itself (`orchestrator.store.tables.compact_sweep`, as the sweep runs it after stage 2);
- the report (`orchestrator.report`), after compaction.

The targets (at 400 x 24): summary <= 3 s, one-table query <= 1 s, report <= 60 s and <= 2 GB;
each is printed MET or MISSED, and the exit status is 1 when one is missed. A target's time is the
tool's own work inside its process (`summary()`, `run_query()`, `write_report()`); the whole
command's wall time, with Python's start-up and imports, is printed beside it. The folder (about
1.2 GB at 400 x 24) is deleted at the end unless `--keep DIR` (then it is built in DIR and kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.store.schema import SCHEMA_VERSION, TABLES
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store
from pdiff.names import METHODS
from pdiff.pipeline import PdiffConfig

from .targets import exit_status, mark

SWEEP = "scale"
ARCHS = {"mlp": 650, "cnn_small": 394, "cnn_medium": 522, "resnet_tiny": 586}  # arch -> subset size
DATASETS = ("digits", "digits_shifted")
K, N, N_VAL, N_TEST, CURVE_POINTS = 50, 50, 144, 359, 24
TARGETS = {"summary": 3.0, "query": 1.0, "report": 60.0}  # seconds at 400 x 24
REPORT_RSS_GB = 2.0
ROOT = Path(__file__).resolve().parents[1]


# -- building the synthetic sweep -------------------------------------------------------------


def _cells(n: int) -> list[tuple[str, str, int]]:
    groups = [(a, d) for a in ARCHS for d in DATASETS]
    seeds = math.ceil(n / len(groups))
    return [(a, d, s) for s in range(seeds) for a, d in groups][:n]


def _wrong(rng: np.random.Generator, rows: int, n: int, rate: float) -> list[bytes]:
    bits = rng.random((rows, n)) < rate
    packed = np.packbits(bits, axis=1, bitorder="big")
    return [r.tobytes() for r in packed]


def _vectors(rng: np.random.Generator, rows: int, width: int) -> pa.Array:
    flat = rng.normal(0.0, 0.05, rows * width).astype(np.float32)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)), pa.array(flat))


def _table(name: str, columns: dict, extra: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Columns typed by the table's schema (and `extra`: added columns), in the schema's order."""
    schema = TABLES[name]
    if extra:
        schema = pa.schema(list(schema) + [pa.field(k, t) for k, t in extra.items()])
    rows = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        value = columns.get(field.name)
        if isinstance(value, pa.Array):
            arrays.append(value.cast(field.type))
        else:
            arrays.append(pa.array(value if value is not None else [None] * rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")  # as Store.write does (there: to a temporary name first)


def _types(defaults: dict) -> tuple[dict, dict]:
    """The Arrow types of the trials' added columns (knobs and collapse signals) and the baselines' family ones."""
    knob_types = pa.Table.from_pylist([defaults]).schema
    signal_types = {"trial_index": pa.int64(), "pairwise_iou": pa.float64(), "distinct_sets": pa.int64(),
                    "spread_ratio": pa.float64(), "collapsed": pa.bool_(), "ae_steps_taken": pa.int64(),
                    "ae_r2": pa.float64(), "ae_converged": pa.bool_()}
    family_extra = {"family_pairwise_iou": pa.float64(), "family_distinct_sets": pa.int64(),
                    "family_spread_ratio": pa.float64(), "family_collapsed": pa.bool_()}
    return {f.name: f.type for f in knob_types} | signal_types, family_extra


def _common(rows: int, cell: str) -> dict:
    return {"sweep": [SWEEP] * rows, "spec_hash": ["synthetic"] * rows, "schema_version": [SCHEMA_VERSION] * rows,
            "cell_id": [cell] * rows}


def _write_cell(root: Path, cell: str, arch: str, dataset: str, s: int, base: float, rng, K: int, N: int,  # noqa: N803
                family_extra: dict) -> None:
    """A cell's sources row, K snapshots and N models per baseline method."""
    width = ARCHS[arch]
    _write(root / "sources" / cell / "source.parquet", _table("sources", _common(1, cell) | {
        "arch": [arch], "dataset": [dataset], "seed": [s], "subset": [["fc2.weight", "fc2.bias"]],
        "n_subset": [width], "n_total": [20 * width], "k": [K], "test_acc": [base], "seconds": [30.0],
        "node_id": ["node"], "model_path": [f"models/{cell}.pt"], "resumed_from_epoch": [0],
        "n_val": [N_VAL], "n_test": [N_TEST], "snapshot_pairwise_iou": [0.6 + 0.2 * rng.random()],
        "snapshot_distinct_sets": [K], "snapshot_spread": [0.05]},
        {"snapshot_pairwise_iou": pa.float64(), "snapshot_distinct_sets": pa.int64(),
         "snapshot_spread": pa.float64()}))
    _write(root / "checkpoints" / cell / "snapshots.parquet", _table("checkpoints", _common(K, cell) | {
        "index": list(range(K)), "val_acc": base + 0.01 * rng.standard_normal(K),
        "test_acc": base + 0.01 * rng.standard_normal(K), "val_wrong": _wrong(rng, K, N_VAL, 0.08),
        "test_wrong": _wrong(rng, K, N_TEST, 0.08), "params": _vectors(rng, K, width)}))
    rows = len(METHODS) * N
    _write(root / "baselines" / cell / "baselines.parquet", _table("baselines", _common(rows, cell) | {
        "method": [m for m in METHODS for _ in range(N)], "index": [i for _ in METHODS for i in range(N)],
        "val_acc": base - 0.02 * rng.random(rows), "test_acc": base - 0.02 * rng.random(rows),
        "test_max_iou": 0.7 + 0.3 * rng.random(rows), "val_max_iou": 0.7 + 0.3 * rng.random(rows),
        "nearest_l2": rng.random(rows), "val_wrong": _wrong(rng, rows, N_VAL, 0.09),
        "test_wrong": _wrong(rng, rows, N_TEST, 0.09), "params": _vectors(rng, rows, width),
        "family_pairwise_iou": np.repeat(0.5 + 0.4 * rng.random(len(METHODS)), N),
        "family_distinct_sets": [N] * rows, "family_spread_ratio": np.repeat(rng.random(len(METHODS)), N),
        "family_collapsed": [False] * rows}, family_extra))


def _write_trial(root: Path, cell: str, trial: str, t: int, width: int, base: float, rng, N: int,  # noqa: N803
                 defaults: dict, trial_extra: dict) -> None:
    """A completed trial: its N generated models, its loss curves and its `trials` row (accuracy in percent)."""
    knobs = defaults | {"latent_dim": int(rng.choice([32, 64])),
                        "latent_noise": float(10 ** rng.uniform(-2, math.log10(0.3))),
                        "input_noise": float(10 ** rng.uniform(-4, -2)),
                        "ae_lr": float(10 ** rng.uniform(math.log10(3e-4), math.log10(3e-3)))}
    val, test = base - 0.03 * rng.random(N), base - 0.03 * rng.random(N)
    iou = 0.8 + 0.2 * rng.random(N)
    _write(root / "generated" / cell / f"{trial}.parquet", _table("generated", _common(N, cell) | {
        "trial_id": [trial] * N, "index": list(range(N)), "val_acc": val, "test_acc": test,
        "test_max_iou": iou, "val_max_iou": iou, "nearest_l2": rng.random(N),
        "val_wrong": _wrong(rng, N, N_VAL, 0.08), "test_wrong": _wrong(rng, N, N_TEST, 0.08),
        "params": _vectors(rng, N, width)}))
    steps = np.arange(CURVE_POINTS) * 10
    curve = {"trial_id": [trial] * 2 * CURVE_POINTS, "phase": ["ae"] * CURVE_POINTS + ["ldm"] * CURVE_POINTS,
             "step": np.concatenate([steps, steps]),
             "loss": np.concatenate([np.exp(-steps / 80.0), 0.5 * np.exp(-steps / 120.0)]) + 1e-3}
    _write(root / "curves" / cell / f"{trial}.parquet", _table("curves", _common(2 * CURVE_POINTS, cell) | curve))
    best = int(np.argmax(val))
    summary = {"selected_acc_pct": [100 * test[best]], "best_test_acc_pct": [100 * test.max()],
               "mean_acc_pct": [100 * test.mean()], "median_acc_pct": [100 * float(np.sort(test)[(N - 1) // 2])],
               "test_max_iou": [float(iou.mean())], "val_max_iou": [float(iou.mean())]}
    _write(root / "trials" / cell / f"{trial}.parquet", _table("trials", _common(1, cell) | summary | {
        "trial_id": [trial], "search_hash": ["synthetic"], "status": ["completed"],
        "val_acc_pct": [100 * float(val.max())], "ae_loss": [0.01], "ldm_loss": [0.1], "seconds": [60.0],
        "node_id": ["node"], "trial_index": [t], "pairwise_iou": [0.6 + 0.3 * rng.random()],
        "distinct_sets": [N], "spread_ratio": [0.3 + rng.random()], "collapsed": [False],
        "ae_steps_taken": [1000], "ae_r2": [0.96], "ae_converged": [True]}
        | {k: [v] for k, v in knobs.items()}, trial_extra))


def build(storage: Path, n_cells: int, n_trials: int, seed: int = 0, log=print, *, k: int = K, n: int = N) -> Store:
    """A sweep folder `<storage>/scale` of n_cells x n_trials (K = k snapshots, N = n models a trial and a
    baseline), one file per writer; returns its Store."""
    store = Store(str(storage), SWEEP, "synthetic")
    store.write_marker()
    root = Path(store.root)
    rng = np.random.default_rng(seed)
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in PdiffConfig().knobs().items()}
    defaults |= {"ae_steps": 3000, "ldm_steps": 400, "n_generated": n, "sampler": "ddim", "sample_steps": 20,
                 "ae_channels": [32, 64, 64], "ldm_channels": [16, 32]}
    trial_extra, family_extra = _types(defaults)
    t0 = time.perf_counter()
    cells = _cells(n_cells)
    for c, (arch, dataset, s) in enumerate(cells):
        cell = f"{arch}-{dataset}-s{s}-{c:08x}"
        base = 0.9 + 0.05 * rng.random()
        _write_cell(root, cell, arch, dataset, s, base, rng, k, n, family_extra)
        for t in range(n_trials):
            _write_trial(root, cell, f"t{c:06x}{t:04x}", t, ARCHS[arch], base, rng, n, defaults, trial_extra)
        if (c + 1) % 50 == 0 or c + 1 == len(cells):
            log(f"  built {c + 1}/{len(cells)} cells ({time.perf_counter() - t0:.0f}s)")
    RunRecord(store, "python -m benchmarks.results_scale").start().end("done", 0)
    return store


def folder_stats(root: str) -> tuple[int, int]:
    """(Parquet files, bytes) under a sweep folder's tables."""
    files = size = 0
    for table in TABLES:
        for dirpath, _, names in os.walk(os.path.join(root, table)):
            for name in names:
                if name.endswith(".parquet") and not name.startswith("."):
                    files += 1
                    size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


# -- measuring in fresh processes --------------------------------------------------------------

# Each prints one JSON line: {"seconds": the tool's own work, ...}. argv: storage, sweep, [out].
SNIPPETS = {
    "summary": """
import json, sys, time
t0 = time.perf_counter()
from orchestrator.results.summary import summary
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store
t1 = time.perf_counter()
from orchestrator.results import sql
sql.methods()  # part of summary()'s work: the baseline methods' names, from pdiff.names (no torch)
t2 = time.perf_counter()
df = summary(Store(sys.argv[1], sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t1, "methods": t2 - t1, "imports": t1 - t0, "rows": len(df)}))
""",
    "query": """
import json, sys, time
t0 = time.perf_counter()
from orchestrator.results.query import run_query
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store
t1 = time.perf_counter()
columns, rows = run_query(Store(sys.argv[1], sys.argv[2]), "select count(*) from trials")
print(json.dumps({"seconds": time.perf_counter() - t1, "imports": t1 - t0, "rows": rows[0][0]}))
""",
    "compact": """
import json, sys, time
t0 = time.perf_counter()
from orchestrator.store.compaction import compact_sweep
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store
t1 = time.perf_counter()
done = compact_sweep(Store(sys.argv[1], sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t1, "imports": t1 - t0, "rows": done}))
""",
    "report": """
import json, sys, time
t0 = time.perf_counter()
from orchestrator.report import write_report
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store
t1 = time.perf_counter()
index = write_report(Store(sys.argv[1], sys.argv[2]), sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t1, "imports": t1 - t0, "rows": str(index)}))
""",
}


# Runs argv[1:] and prints, last, {"wall", "rss_kb", "status"} of it. A child's ru_maxrss counts the memory of
# the process it was forked from (Linux keeps the high-water mark across exec), so the measured command is
# forked from this small launcher, not from the benchmark that built the tables.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall": time.perf_counter() - t0, "rss_kb": usage.ru_maxrss,
                  "status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def measure(what: str, store: Store, out: str = "", timeout: float = 1800) -> dict:
    """Run one snippet in a fresh Python; its own seconds, the process's wall seconds and peak RSS (GB)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-c", LAUNCHER, sys.executable, "-c", SNIPPETS[what], store.storage, store.sweep, out]
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"wall": timeout, "rss_gb": float("nan"), "ok": False, "seconds": float("nan"),
                "error": f"did not finish in {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    launched = json.loads(lines[-1])
    result = {"wall": launched["wall"], "rss_gb": launched["rss_kb"] * 1024 / 1e9, "ok": launched["status"] == 0}
    if result["ok"]:
        result |= json.loads(lines[-2])
    else:
        result |= {"seconds": float("nan"), "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return result


def _targets(r: dict, target: float | None = None, rss_target: float | None = None) -> list[tuple[str, bool]]:
    """A measured command's targets, each (text, met): its time and its peak memory."""
    out = []
    if target is not None:
        out.append((f"<= {target:g} s", r["ok"] and r["seconds"] <= target))
    if rss_target is not None:
        out.append((f"<= {rss_target:g} GB", r["ok"] and r["rss_gb"] <= rss_target))
    return out


def _line(label: str, r: dict, target: float | None = None, rss_target: float | None = None) -> str:
    text = (f"{label:<34}{r['seconds']:>9.2f} s{r['wall']:>10.2f} s{r['rss_gb']:>9.2f} GB")
    verdicts = [f"{what} {mark(ok)}" for what, ok in _targets(r, target, rss_target)]
    if not r["ok"]:
        verdicts.append(f"FAILED: {r.get('error')}")
    return text + ("   " + "; ".join(verdicts) if verdicts else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=400)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--keep", metavar="DIR", help="build the sweep in DIR and keep it (default: a temporary "
                                                       "folder, deleted at the end)")
    args = parser.parse_args(argv)
    storage = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pdiff-scale-"))
    storage.mkdir(parents=True, exist_ok=True)
    try:
        if Path(storage, SWEEP).exists():
            sys.exit(f"error: {storage / SWEEP} exists already: choose another --keep folder")
        print(f"building {args.cells} cells x {args.trials} trials in {storage / SWEEP}", flush=True)
        t0 = time.perf_counter()
        store = build(storage, args.cells, args.trials)
        files, size = folder_stats(store.root)
        print(f"  {files} Parquet files, {size / 1e9:.2f} GB, built in {time.perf_counter() - t0:.0f}s", flush=True)
        scale = f"{args.cells} x {args.trials}"
        head = f"{'':<34}{'work':>11}{'process':>12}{'peak RSS':>12}"
        lines = [head]
        before = {w: measure(w, store) for w in ("summary", "query")}
        lines.append(_line("summary, one file per writer", before["summary"]))
        lines.append(_line("query, one file per writer", before["query"]))
        compacted = measure("compact", store)
        files_after, size_after = folder_stats(store.root)
        lines.append(_line(f"compaction ({files} -> {files_after} files)", compacted))
        summary = measure("summary", store)
        query = measure("query", store)
        out = tempfile.mkdtemp(prefix="pdiff-scale-report-")
        try:
            report = measure("report", store, out)
            pages = len(list(Path(out).glob("*.html")))
            pngs = sorted(Path(out).glob("*.png"))
            biggest = max((p.stat().st_size for p in pngs), default=0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        lines.append(_line("summary (compacted)", summary, TARGETS["summary"]))
        lines.append(_line("query: select count(*) from trials", query, TARGETS["query"]))
        lines.append(_line("report (compacted)", report, TARGETS["report"], REPORT_RSS_GB))
        print(f"\nresults at scale: {scale} ({files_after} files, {size_after / 1e9:.2f} GB after compaction), "
              f"{os.cpu_count()} CPUs")
        print("\n".join(lines))
        print(f"report: {pages} HTML page(s), {len(pngs)} figure(s), largest {biggest / 1e6:.1f} MB; summary rows "
              f"{summary.get('rows')}, trials counted {query.get('rows')}")
        if summary["ok"]:
            print(f"summary: {summary['methods']:.2f} s of its {summary['seconds']:.2f} s is orchestrator.results.sql.methods() "
                  f"(the baseline names, from pdiff.names); the queries took {summary['seconds'] - summary['methods']:.2f} s")
        checks = [summary["ok"] and summary["rows"] == args.cells, query["ok"] and query["rows"] == args.cells * args.trials]
        if not all(checks):
            print("error: a measured command failed or returned the wrong count", file=sys.stderr)
            return 1
        return exit_status(_targets(summary, TARGETS["summary"]) + _targets(query, TARGETS["query"])
                           + _targets(report, TARGETS["report"], REPORT_RSS_GB))
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
