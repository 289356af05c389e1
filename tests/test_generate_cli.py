"""`python -m orchestrator.generate` on bad input: each refusal is exit 2 and one line, before any sampling and
before any file or folder is made; a good `--out` gets the vectors and nothing beside them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_sweep import tree_state

from orchestrator import generate
from orchestrator.generate import MAX_N, main
from orchestrator.store.tables import Store


@pytest.fixture(scope="module")
def sweep_copy(finished_sweep, tmp_path_factory) -> Store:
    dest = tmp_path_factory.mktemp("generate_cli")
    shutil.copytree(finished_sweep.root, dest / "tiny", ignore=shutil.ignore_patterns("_ray", "report", "_lease*"))
    return Store(str(dest), "tiny")


@pytest.fixture(scope="module")
def trial(sweep_copy) -> str:
    trials = sweep_copy.read_pandas("trials", columns=["trial_id", "status"])
    return trials[trials.status == "completed"].trial_id.iloc[0]




def status(argv: list[str]) -> int:
    """main(argv)'s exit status, argparse's own refusals (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def no_work(*_a, **_k):
    raise AssertionError("bad input reached the generator")


# probe 14 and its neighbours: (arguments, words of the one line)
CASES = [
    (["-n", "1000000000"], f"between 1 and {MAX_N}"),  # was: an attempt to allocate 128 GB
    (["-n", "0"], f"between 1 and {MAX_N}"),
    (["-n", "1e400"], "invalid int value"),
    (["--seed", str(10**23)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--device", "cuda:97"], "--device cuda"),
    (["--device", "meta"], "--device meta"),
    (["--device", "nonsense"], "not a device"),
    (["--out", "/proc/x.parquet"], "cannot write there"),
    (["--out", "newdir/sub/x.txt"], ".parquet or .pt"),  # was: refused after making newdir/sub
    (["--out", "newdir/sub/x.parquet"], "no folder"),
    (["--out", "taken.parquet"], "exists"),
    (["--out", "dangling.pt"], "exists"),
    (["--bogus"], "unrecognized arguments"),
    (["--score", "--no-score"], "--no-score skips"),
]


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_arguments_are_one_line_before_any_work(sweep_copy, trial, tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.parquet").write_text("mine")
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(generate, "restore_generator", no_work)
    monkeypatch.setattr(generate, "sample_vectors", no_work)
    if not torch.cuda.is_available():  # probe 14's own case: --device cuda on a machine without a GPU
        args = ["--device", "cuda"] if args == ["--device", "cuda:97"] else args
    before, sweep = tree_state(tmp_path), tree_state(Path(sweep_copy.root))
    assert status([sweep_copy.root, trial, *args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert tree_state(tmp_path) == before and tree_state(Path(sweep_copy.root)) == sweep


def test_an_out_inside_the_sweep_is_refused(sweep_copy, trial, capsys, monkeypatch):
    monkeypatch.setattr(generate, "sample_vectors", no_work)
    before = tree_state(Path(sweep_copy.root))
    for out in (sweep_copy.path("trials", "x.parquet"), sweep_copy.path("x.pt")):
        assert main([sweep_copy.root, trial, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "inside the sweep's folder" in err, err
    assert tree_state(Path(sweep_copy.root)) == before


@pytest.mark.parametrize("suffix", [".parquet", ".pt"])
def test_a_good_out_gets_the_vectors_and_nothing_else(sweep_copy, trial, tmp_path, suffix):
    out = tmp_path / f"more{suffix}"
    assert main([sweep_copy.root, trial, "-n", "5", "--seed", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no scratch file beside it
    if suffix == ".pt":
        vectors = torch.load(out)["vectors"]
    else:
        table = pq.read_table(out)
        assert table.schema.field("params").type == pa.list_(pa.float32())
        vectors = torch.tensor(table.column("params").to_pylist())
    assert vectors.shape[0] == 5 and torch.isfinite(vectors).all()
