"""Draw more parameter vectors from a finished trial, without retraining.

    python -m orchestrator.generate RESULTS_DIR TRIAL_ID -n 1000 [--seed S] [--out FILE] [--score]

Each completed trial saves its autoencoder, normaliser and EMA denoiser (with the
configs and its seed) to `models/trials/<cell>/<trial>.pt` before its `trials` row.
This command restores them, samples and decodes n vectors and writes them to
`<sweep>/generated_more/<trial>-<n>-<seed>.parquet` (or `--out FILE`, `.parquet` or
`.pt`); an existing file is never overwritten. With the trial's own seed (the
default) the first vectors are the trial's stored `generated` ones. `--score`
evaluates them on the cell's test split and prints the mean accuracy beside the
novelty and collapse signals (max IoU to the snapshots, family statistics).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, Sequence

import torch

from pdiff.pipeline import PdiffRun, PdiffConfig, generator_state, restore_generator, sample_vectors

from . import paths
from .tables import Store

__all__ = ["trial_model_relpath", "save_trial_model", "load_trial_model", "main"]


class Refused(Exception):
    """A one-line reason to stop with exit status 2."""


trial_model_relpath = paths.trial_model  # the old name


def save_trial_model(store: Store, cell_id: str, trial_id: str, run: PdiffRun, cfg: PdiffConfig, seed: int) -> str:
    """Write a completed trial's generator (before its `trials` row, the commit marker)."""
    buf = io.BytesIO()
    torch.save(generator_state(run, cfg, seed) | {"cell_id": cell_id, "trial_id": trial_id}, buf)
    return store.write_bytes(paths.trial_model(cell_id, trial_id), buf.getvalue())


def load_trial_model(store: Store, cell_id: str, trial_id: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(store.read_bytes(paths.trial_model(cell_id, trial_id))), map_location="cpu")


def _find_trial(store: Store, trial_id: str) -> dict[str, Any]:
    trials = store.read_pandas("trials")  # small (no vectors); older tables lack some columns, e.g. `reason`
    if trials.empty:
        raise Refused(f"no trials in {store.uri}")
    rows = trials[trials.trial_id == trial_id]
    if rows.empty:
        known = trials[trials.status == "completed"].trial_id.tolist()[:5]
        raise Refused(f"unknown trial {trial_id!r} in {store.uri}; completed trials include: {', '.join(known)}")
    row = rows.iloc[0].to_dict()
    if row["status"] != "completed":
        why = f" ({row['reason']})" if isinstance(row.get("reason"), str) else ""
        raise Refused(f"trial {trial_id} {row['status']}{why}: it has no model to sample from")
    return row


def _score(store: Store, cell_id: str, vectors: torch.Tensor, device: str) -> str:
    from pdiff import ParameterSubset, load_dataset
    from pdiff.evaluate import BatchedEvaluator, family_stats, novelty

    from .sources import load_snapshot_scores, load_source_model

    src = store.read_pandas("sources", columns=["cell_id", "arch", "dataset", "seed", "subset"])
    src = src[src.cell_id == cell_id].iloc[0]
    data = load_dataset(src["dataset"], seed=int(src["seed"]))
    model = load_source_model(store, src["arch"], paths.source_model(cell_id), data, device)
    evaluator = BatchedEvaluator(model, ParameterSubset.select(model, list(src["subset"])))
    scores = evaluator.score(vectors, data)
    snaps = store.read("checkpoints", cell_id, columns=["index", "params"]).sort_by("index")
    snapshots = torch.tensor(snaps.column("params").to_pylist(), dtype=torch.float32)
    snap_scores = load_snapshot_scores(store, cell_id)
    near = novelty(vectors, scores, snapshots, snap_scores)
    fam = family_stats(vectors, scores.test_wrong, snapshots)
    return (f"test accuracy: mean {100 * float(scores.test_acc.mean()):.2f}%, "
            f"best {100 * float(scores.test_acc.max()):.2f}% | max IoU to the snapshots (lower = more novel): "
            f"test_max_iou mean {float(near.test_max_iou.mean()):.3f}, val_max_iou mean "
            f"{float(near.val_max_iou.mean()):.3f} | family: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fam.items()))


def _write(store: Store, out: str | None, trial_id: str, seed: int, vectors: torch.Tensor) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"trial_id": [trial_id] * len(vectors), "index": list(range(len(vectors))), "seed": [seed] * len(vectors),
            "params": vectors.tolist()}
    if out is None:  # under the sweep, through the store (local or object storage)
        relpath = paths.generated_more(trial_id, len(vectors), seed)
        if store.fs.get_file_info(store.path(relpath)).type.name != "NotFound":
            raise Refused(f"{store.path(relpath)} exists; remove it or pass --out FILE or another --seed")
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table(rows), buf, compression="zstd")
        return store.write_bytes(relpath, buf.getvalue().to_pybytes())
    if os.path.exists(out):
        raise Refused(f"{out} exists; not overwriting it")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.endswith(".pt"):
        torch.save({"trial_id": trial_id, "seed": seed, "vectors": vectors}, out)
    elif out.endswith(".parquet"):
        pq.write_table(pa.table(rows), out, compression="zstd")
    else:
        raise Refused(f"--out {out}: use a .parquet or .pt file name")
    return out


def generate(store: Store, trial_id: str, n: int, *, seed: int | None = None, out: str | None = None,
             score: bool = False, device: str = "cpu", say=print) -> str:
    row = _find_trial(store, trial_id)
    try:
        state = load_trial_model(store, row["cell_id"], trial_id)
    except FileNotFoundError:
        raise Refused(f"trial {trial_id} has no saved model ({paths.trial_model(row['cell_id'], trial_id)}): "
                      f"it ran before trials kept their models; re-run it to sample more") from None
    ae, ldm, cfg = restore_generator(state, device)
    seed = state["seed"] if seed is None else seed
    vectors = sample_vectors(ae, ldm, n, sampler=cfg.sampler, steps=cfg.sample_steps, seed=seed)
    if not torch.isfinite(vectors).all():
        raise Refused(f"{int((~torch.isfinite(vectors).all(1)).sum())} of {n} vectors are non-finite")
    path = _write(store, out, trial_id, seed, vectors)
    say(f"wrote {n} vectors of trial {trial_id} (cell {row['cell_id']}, seed {seed}) to {path}")
    if score:
        say(_score(store, row["cell_id"], vectors, device))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from .query import parse_results_dir

    parser = argparse.ArgumentParser(prog="python -m orchestrator.generate", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's folder, e.g. results/smoke or s3://...")
    parser.add_argument("trial_id", metavar="TRIAL_ID")
    parser.add_argument("-n", type=int, default=1000, help="vectors to draw (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the trial's own)")
    parser.add_argument("--out", default=None, help="a .parquet or .pt file (default: <sweep>/generated_more/...)")
    parser.add_argument("--score", action="store_true", help="score them on the cell's test split")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be >= 1")
    try:
        generate(parse_results_dir(args.results_dir), args.trial_id, args.n, seed=args.seed, out=args.out,
                 score=args.score, device=args.device)
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
