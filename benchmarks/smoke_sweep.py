"""Wall time of the smoke sweep (`python -m orchestrator.sweep sweeps/smoke.yaml`), per stage.

    python -m benchmarks.smoke_sweep [--spec sweeps/smoke.yaml]

Runs the sweep from scratch into a temporary folder on the embedded local Ray,
then once more (a resume with nothing left to do), and prints when each stage
finished according to the sweep's own progress lines. Target: the first run
within 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="sweeps/smoke.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        wall, stages, out = run(args.spec, storage)
        resume_wall, _, _ = run(args.spec, storage)
    summary = out[out.rfind("done; tables in"):].split("\n", 1)[1]
    print(f"smoke sweep on {os.cpu_count()} CPUs ({args.spec})")
    print(f"{'phase':<32}{'seconds':>10}")
    for stage in ("sources", "baselines", "trials"):
        if stage in stages:
            print(f"{stage + ' finished at':<32}{stages[stage]:>10}")
    print(f"{'whole command, first run':<32}{wall:>10.1f}")
    print(f"{'whole command, resume (no work)':<32}{resume_wall:>10.1f}")
    print(f"target <= 300 s: {'met' if wall <= 300 else 'NOT met'}")
    print(summary)


if __name__ == "__main__":
    main()
