"""The smallest real sweep (two cells, K = 20, three two-objective trials each), shared by the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import load_spec
from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "sources": {
        "archs": ["mlp", "cnn_small"], "datasets": ["digits"], "seeds": [0],
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.05},
        "collect": {"k": 20, "interval": 1, "unit": "step", "lr": 0.05},
    },
    "pdiff": {
        "knobs": {
            "latent_noise": {"type": "loguniform", "low": 0.01, "high": 0.3},
            "latent_dim": {"type": "choice", "values": [16, 32]},
            "ae_steps": 40, "ldm_steps": 40, "ae_channels": [8, 8, 16, 16], "ldm_channels": [8, 16],
            "sampler": "ddim", "sample_steps": 5, "n_generated": 8,
        },
        "objective": ["accuracy", "novelty"],
        "num_samples": 3,
        "max_concurrent": 2,
        "baselines": True,
    },
    "resources": {"sources": {"cpus": 1}, "trials": {"cpus": 1}},
}
K, N, TRIALS, CELLS = 20, 8, 3, 2


def sweep_env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def sweep_command(spec: Path, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.sweep", str(spec), "--storage", str(storage), *extra]


def run_sweep(spec: Path, storage: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(sweep_command(spec, storage, *extra), cwd=ROOT, env=sweep_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="session")
def finished_run(tiny_spec, tmp_path_factory) -> tuple[Store, subprocess.CompletedProcess]:
    """The tiny sweep, run once per test session on a local Ray, and its console output."""
    storage = tmp_path_factory.mktemp("results")
    proc = run_sweep(tiny_spec, storage)
    return Store(str(storage), "tiny"), proc


@pytest.fixture(scope="session")
def finished_sweep(finished_run) -> Store:
    return finished_run[0]


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` (links not followed) with its size and mtime: compare two to show nothing changed."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for n in dirs + names:
            st = os.lstat(os.path.join(folder, n))
            found[os.path.relpath(os.path.join(folder, n), root)] = (st.st_size, st.st_mtime_ns)
    return found


def copy_sweep(finished: Store, tiny_spec: Path, dest: Path):
    """A copy of the finished tiny sweep (tables and models, not Ray's run folders), its spec and store."""
    shutil.copytree(finished.root, dest / "tiny", ignore=shutil.ignore_patterns("_ray", "report", "_lease*"))
    spec = load_spec(tiny_spec, storage=str(dest))
    return spec, Store(spec.storage, spec.name, spec.spec_hash)


def truncate(path: str) -> None:
    """Cut a file in half: what a crash mid-write or a full disk leaves."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
