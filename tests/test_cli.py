"""`python -m orchestrator.sweep` as a user runs it: dry runs, bad specs, corrupt tables, impossible resources.

Every test runs the command in a subprocess, in a folder of its own. The runs
that exit before Ray starts are launched together (a few at a time) on first use,
since each spends its couple of seconds importing torch; the tests then check
one run each. Only the last test starts Ray (a local instance, to learn the node sizes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from orchestrator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
GARBAGE = b"\x00garbage, not parquet\xff" * 3


def run_cli(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # never join a cluster someone else runs
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "orchestrator.sweep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def smoke_with(folder: Path, changes: dict) -> Path:
    """sweeps/smoke.yaml with dotted paths replaced, written to folder/spec.yaml."""
    raw = yaml.safe_load((SWEEPS / "smoke.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def with_corrupt_table(storage: Path) -> Path:
    """storage, holding an unreadable file of the smoke sweep's trials table."""
    bad = storage / "smoke" / "trials" / "somecell" / "x.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(GARBAGE)
    return storage


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# A billion laughs under a valid key: ~1 KB that expands to 10**9 channel counts.
ALIAS_BOMB = "\n".join(
    ["name: smoke", "sources: {archs: [mlp], datasets: [digits]}", "pdiff:", "  knobs:", "    ae_channels:",
     "      - &l0 [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]"]
    + [f"      - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]) + "\n"


# name -> prepare(folder) -> command-line arguments. Each runs with cwd=folder.
CASES: dict[str, Callable[[Path], list]] = {
    # No --storage: the spec's s3:// URI must not be touched (this machine is offline).
    "dry-resnet18": lambda d: [SWEEPS / "resnet18.yaml", "--dry-run"],
    "dry-ablation": lambda d: [SWEEPS / "ablation_noise.yaml", "--dry-run", "--storage", d / "store"],
    "dry-with-corrupt-table": lambda d: [SWEEPS / "smoke.yaml", "--dry-run", "--storage", with_corrupt_table(d)],
    "bad-unknown-arch": lambda d: [smoke_with(d, {"sources.archs": ["cnn_small", "resnet99"]}),
                                   "--storage", d / "store"],
    "bad-bool-seed": lambda d: [smoke_with(d, {"seed": True}), "--storage", d / "store"],
    "bad-grid-too-small": lambda d: [smoke_with(d, {"pdiff.search": "grid", "pdiff.knobs.latent_noise": 0.1,
                                                    "pdiff.knobs.input_noise": 0.001, "pdiff.knobs.ae_lr": 0.001}),
                                     "--storage", d / "store"],
    "bad-yaml-syntax": lambda d: [write(d / "spec.yaml", "name: smoke\nsources: {archs: [mlp, datasets: [x]\n"),
                                  "--storage", d / "store"],
    "bad-missing-file": lambda d: [d / "spec.yaml", "--storage", d / "store"],
    "bad-alias-bomb": lambda d: [write(d / "spec.yaml", ALIAS_BOMB), "--dry-run", "--storage", d / "store"],
    "bad-name-dotdot-restart": lambda d: [smoke_with(d, {"name": ".."}), "--restart", "--storage", d / "store"],
    # Storage that is a file: refused by the probe before Ray starts (a regression would start Ray: slow).
    "storage-is-a-file": lambda d: [smoke_with(d, {}), "--storage", write(d / "store", "a file")],
    # A real run: it must stop at the table check, before Ray (a regression would run the sweep: time out).
}


@dataclass
class Run:
    folder: Path
    args: list
    proc: subprocess.CompletedProcess

    @property
    def spec(self) -> Path:
        return self.args[0]

    @property
    def log(self) -> str:
        return f"exit {self.proc.returncode}\n--- stdout\n{self.proc.stdout}\n--- stderr\n{self.proc.stderr}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    prepared = {}
    for name, prepare in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        prepared[name] = (folder, prepare(folder))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=folder, timeout=120)
                   for name, (folder, args) in prepared.items()}
        return {name: Run(*prepared[name], future.result()) for name, future in futures.items()}


def test_dry_run_resnet18(runs):
    run = runs["dry-resnet18"]
    spec = load_spec(SWEEPS / "resnet18.yaml")
    assert run.proc.returncode == 0, run.log
    out = run.proc.stdout
    assert f"sweep resnet18 (spec {spec.spec_hash}) -> s3://my-pdiff-bucket/sweeps/resnet18" in out
    assert "stage 1 sources: 4 cells" in out
    assert "stage 2 pdiff: 24 trials per cell = 96 trials, 8 at a time, 2 CPU / 0.25 GPU each" in out
    for cell in spec.cells:
        assert cell.cell_id in out
    assert "objective: accuracy + novelty" in out
    assert "error" not in run.proc.stderr.lower()
    assert tree(run.folder) == {}


def test_dry_run_ablation_with_storage(runs):
    run = runs["dry-ablation"]
    storage = run.folder / "store"
    spec = load_spec(SWEEPS / "ablation_noise.yaml", storage=str(storage))
    assert run.proc.returncode == 0, run.log
    out = run.proc.stdout
    assert f"sweep ablation_noise (spec {spec.spec_hash}) -> {storage / 'ablation_noise'}" in out
    assert "stage 1 sources: 1 cells" in out
    assert "stage 2 pdiff: 12 trials per cell = 12 trials" in out
    assert spec.cells[0].cell_id in out
    assert "input_noise ~ choice[0.0, 0.001, 0.01]" in out
    assert not storage.exists()
    assert tree(run.folder) == {}


def test_dry_run_does_not_open_existing_tables(runs):
    """A dry run only validates and plans: a corrupt table does not fail it, and is left alone."""
    run = runs["dry-with-corrupt-table"]
    assert run.proc.returncode == 0, run.log
    assert "stage 1 sources: 4 cells" in run.proc.stdout
    assert "stage 2 pdiff: 3 trials per cell = 12 trials" in run.proc.stdout
    assert tree(run.folder) == {"smoke/trials/somecell/x.parquet": GARBAGE}


@pytest.mark.parametrize("name, field, fragment", [
    ("bad-unknown-arch", "sources.archs[1]", "unknown architecture 'resnet99'"),
    ("bad-bool-seed", "seed", "expected an integer, got a boolean"),
    ("bad-grid-too-small", "pdiff.num_samples", "the grid has 2 points"),
    ("bad-yaml-syntax", "<file>", "not valid YAML"),
    ("bad-missing-file", "<file>", "no such file"),
    ("bad-alias-bomb", "pdiff.knobs.ae_channels[1][0]", "YAML aliases are not allowed"),
    ("bad-name-dotdot-restart", "name", "expected a slug"),
])
def test_bad_spec_exits_2_and_writes_nothing(runs, name, field, fragment):
    run = runs[name]  # a real run, not a dry run
    assert run.proc.returncode == 2, run.log
    assert f"{run.spec}: {field}: {fragment}" in run.proc.stderr, run.log
    assert "Traceback" not in run.proc.stderr
    assert "stage 1" not in run.proc.stdout  # no plan for a spec that cannot run
    assert not (run.folder / "store").exists()
    assert not (run.folder / "results").exists()
    assert sorted(p.name for p in run.folder.iterdir()) == ([] if name == "bad-missing-file" else ["spec.yaml"])


def test_bad_input_is_reported_in_one_short_line(runs):
    """(The other probes of issue 10 run in-process in test_safety.py: cheaper than a subprocess each.)"""
    for name in ("bad-alias-bomb", "bad-name-dotdot-restart", "storage-is-a-file"):
        run = runs[name]
        assert run.proc.returncode == 2, run.log
        assert run.proc.stderr.count("\n") == 1 and len(run.proc.stderr) < 400, run.log


def test_storage_that_is_a_file_exits_2_before_ray(runs):
    run = runs["storage-is-a-file"]
    assert run.proc.returncode == 2, run.log
    assert f"{run.spec}: storage: {run.folder / 'store'} is a file" in run.proc.stderr
    assert "Traceback" not in run.proc.stderr and "Ray instance" not in run.proc.stdout + run.proc.stderr
    assert tree(run.folder) == {"spec.yaml": run.spec.read_bytes(), "store": b"a file"}


def test_the_plan_prints_a_control_character_of_a_path_escaped(tmp_path):
    proc = run_cli(SWEEPS / "smoke.yaml", "--dry-run", "--storage", tmp_path / "new\x1bdir", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr and "new\\x1bdir" in proc.stdout.splitlines()[0]


# A corrupt table no longer stops a run: it is quarantined and its writer re-runs
# (tests/test_healing.py); a dry run still leaves it untouched (above).


@pytest.mark.slow
def test_impossible_resources_exit_2_and_write_nothing(tmp_path):
    spec = smoke_with(tmp_path, {"resources.trials.cpus": 64})
    storage = tmp_path / "store"
    proc = run_cli(spec, "--storage", storage, cwd=tmp_path, timeout=180)  # starts a local Ray to see the nodes
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{spec}: resources.trials: asks for 64 CPU" in proc.stderr
    assert "no node" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
