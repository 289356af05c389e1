"""Wall time of the smoke sweep (`python -m orchestrator.sweep sweeps/smoke.yaml`), per stage.

    python -m benchmarks.smoke_sweep [--spec sweeps/smoke.yaml]

Runs the sweep from scratch into a temporary folder on the embedded local Ray,
then once more (a resume with nothing left to do), and prints when each stage
finished according to the sweep's own progress lines. Targets: the first run
within 5 minutes on a 2-core machine, and no cell's best (val-selected) trial
collapsed (`orchestrator.results.views`: pairwise IoU >= 0.99 or spread ratio < 0.05),
with each cell's p-diff pairwise IoU and max IoU to the snapshots printed. Exit status 1 when a
target is MISSED (or the sweep fails).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .targets import exit_status, mark

STAGE_DONE = re.compile(r"^\[\s*(\d+)s\] (sources|baselines|trials) (\d+)/(\d+):")


def run(spec: str, storage: str) -> tuple[float, dict[str, int], str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", spec, "--storage", storage],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    finished: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        m = STAGE_DONE.match(line)
        if m and m[3] == m[4]:
            finished[m[2]] = int(m[1])
    return wall, finished, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="sweeps/smoke.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        wall, stages, out = run(args.spec, storage)
        resume_wall, _, _ = run(args.spec, storage)
        cells = best_trials(args.spec, storage)
    summary = out[out.rfind("done; tables in"):].split("\n", 1)[1]
    print(f"smoke sweep on {os.cpu_count()} CPUs ({args.spec})")
    print(f"{'phase':<32}{'seconds':>10}")
    for stage in ("sources", "baselines", "trials"):
        if stage in stages:
            print(f"{stage + ' finished at':<32}{stages[stage]:>10}")
    print(f"{'whole command, first run':<32}{wall:>10.1f}")
    print(f"{'whole command, resume (no work)':<32}{resume_wall:>10.1f}")
    targets = [("first run <= 300 s", wall <= 300)]
    print(f"target <= 300 s: {mark(targets[0][1])}")
    print(f"{'cell (its best trial)':<34}{'pair-IoU':>10}{'max-IoU':>9}{'spread':>8}  collapsed  "
          f"(snapshots' pair-IoU)")
    for r in cells.itertuples():
        print(f"{r.cell_id:<34}{r.pdiff_pairwise_iou:>10.3f}{r.pdiff_max_iou:>9.3f}"
              f"{r.pdiff_spread_ratio:>8.2f}  {'YES' if r.pdiff_collapsed else 'no':<9}  ({r.snapshot_pairwise_iou:.3f})")
    collapsed = int(cells["pdiff_collapsed"].fillna(True).astype(bool).sum())
    targets.append(("no collapsed best trial", collapsed == 0))
    print(f"target no collapsed best trial: {mark(targets[-1][1])} "
          f"({collapsed} of {len(cells)} cells collapsed or without a completed trial)")
    print(summary)
    return exit_status(targets)


def best_trials(spec: str, storage: str):
    """Per cell, its best trial's collapse signals (the sweep's own summary, read from its tables)."""
    import yaml

    from orchestrator.results.summary import summary as cell_summary
    from orchestrator.store.tables import Store

    name = yaml.safe_load(Path(spec).read_text())["name"]
    return cell_summary(Store(storage, name))


if __name__ == "__main__":
    sys.exit(main())
