"""Draw more parameter vectors from a finished trial, without retraining.

    python -m orchestrator.generate RESULTS_DIR TRIAL_ID -n 1000 [--seed S] [--out FILE] [--score | --no-score]

Each completed trial saves its autoencoder, normaliser and EMA denoiser (with the
configs and its seed) to `models/trials/<cell>/<trial>.pt` before its `trials` row.
This command restores them, samples and decodes n vectors, scores each one as stage 2
scores a `generated` row (`val_acc`, `test_acc` as fractions; `test_max_iou`,
`val_max_iou`, `nearest_l2`: its distance from the snapshots) and writes them with the
trial and cell ids to `./generated/<sweep>-<trial>-n<n>-s<seed>.parquet` under the current
folder (or `--out FILE`, a new `.parquet` or `.pt` file in an existing folder), never
inside the sweep's folder: a reader never writes there. An existing file is never
overwritten. With the trial's own seed (the default) the first vectors are the trial's
stored `generated` ones, with the same scores. `--no-score` skips the scoring (its
columns are null); `--score` also prints the mean accuracy beside the novelty and
collapse signals (family statistics).

`-n` is at most 10,000 per call (MAX_N: every vector is sampled and held at once; draw
more with another `--seed`), `--seed` 0 to 2**63 - 1, `--device` cpu or a cuda / mps
device this machine has. Exit status: 0 done, 2 bad input (one line on stderr, checked
before any file or folder is made).
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator.console import ArgumentParser, printable, refuse, run
from orchestrator.results.views import one_line as summary_line
from orchestrator.runtime.heal import ModelFileError, read_model
from orchestrator.stage1.cells import load_snapshot_scores, load_snapshots, source_evaluator
from orchestrator.store import paths
from orchestrator.store.columns import COLUMNS, UNITS
from orchestrator.store.errors import CorruptTable, OldTables
from orchestrator.store.locate import parse_results_dir
from orchestrator.store.tables import Store
from pdiff import load_dataset
from pdiff.evaluate import Novelty, Scores, family_stats, novelty
from pdiff.pipeline import restore_generator, sample_vectors


class Refused(Exception):
    """A one-line reason to stop with exit status 2."""


def load_trial_model(store: Store, cell_id: str, trial_id: str) -> dict[str, Any]:
    """A completed trial's generator; Refused (one line) where its file is missing or does not load."""
    try:
        return read_model(store, paths.trial_model(cell_id, trial_id))
    except ModelFileError as err:
        raise Refused(f"trial {trial_id} has no usable generator: {store.path(err.relpath)} is {err.problem}. "
                      f"Re-running the sweep rebuilds it: healing runs the trial again, as a new trial with "
                      f"its own id") from None


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


def _evaluate(store: Store, cell_id: str, vectors: torch.Tensor, device: str,
              snapshots: torch.Tensor) -> tuple[Scores, Novelty]:
    """Each vector's scores as stage 2 scores a trial's `generated` rows: the cell's source network with the
    vector put in, on its val and test splits, and each one's max IoU to (and distance from) the snapshots."""
    src = store.read_pandas("sources", columns=["cell_id", "arch", "dataset", "seed", "subset"])
    src = src[src.cell_id == cell_id].iloc[0]
    data = load_dataset(src["dataset"], seed=int(src["seed"]))
    evaluator = source_evaluator(store, cell_id, src["arch"], list(src["subset"]), data, device)
    scores = evaluator.score(vectors, data)
    return scores, novelty(vectors, scores, snapshots, load_snapshot_scores(store, cell_id))


def _score(vectors: torch.Tensor, scores: Scores, near: Novelty, snapshots: torch.Tensor) -> str:
    """`--score`'s line: the vectors' test accuracy, their novelty and their family's collapse signals."""
    fam = family_stats(vectors, scores.test_wrong, snapshots)
    return (f"test accuracy: mean {100 * float(scores.test_acc.mean()):.2f}%, "
            f"best {100 * float(scores.test_acc.max()):.2f}% | max IoU to the snapshots (lower = more novel): "
            f"test_max_iou mean {float(near.test_max_iou.mean()):.3f}, val_max_iou mean "
            f"{float(near.val_max_iou.mean()):.3f} | family: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fam.items()))


MAX_N = 10_000  # vectors per call: all of them are sampled, decoded and held at once; more with another --seed
MAX_SEED = 2**63 - 1


def _device(text: str) -> str:
    """--device, checked before anything loads: cpu, or a cuda / mps device this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise Refused(f"--device {text}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Refused(f"--device {text}: no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise Refused(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Refused(f"--device {text}: no MPS device here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise Refused(f"--device {text}: use cpu, cuda, cuda:N or mps")
    return str(device)


OUT_DIR = "generated"  # the default output folder, under the current one (never the sweep's: readers do not write)
# Each vector's scores: the `generated` table's columns, under their names, units and meanings.
SCORED = [c for c in COLUMNS["generated"] if c.name in ("val_acc", "test_acc", "test_max_iou", "val_max_iou",
                                                         "nearest_l2")]


def default_out(store: Store, trial_id: str, n: int, seed: int) -> str:
    """`./generated/<sweep>-<trial>-n<n>-s<seed>.parquet` under the current folder."""
    return os.path.join(OUT_DIR, f"{store.sweep}-{trial_id}-n{n}-s{seed}.parquet")


def _out_path(store: Store, out: str, given: bool = True) -> str:
    """The output file, checked before any sampling: a new .parquet or .pt file in an existing folder (for the
    default, `generated/`, a folder made later) outside the sweep."""
    name = f"--out {out}" if given else f"the default output {out}"
    try:
        path = os.path.abspath(os.path.expanduser(out))
        if not path.endswith((".parquet", ".pt")):
            raise Refused(f"{name}: use a .parquet or .pt file name")
        if os.path.lexists(path):
            raise Refused(f"{name} exists; not overwriting it" + ("" if given else "; remove it, or pass --out "
                                                                                  "FILE or another --seed"))
        folder, sweep = os.path.dirname(path), os.path.realpath(store.root)
        if given and not os.path.isdir(folder):
            raise Refused(f"{name}: no folder {folder} (create it first)")
        real = os.path.realpath(path)
        if store.is_local and (real == sweep or real.startswith(sweep + os.sep)):
            raise Refused(f"{name}: inside the sweep's folder, which only the sweep writes; give --out a file "
                          f"outside it" + ("" if given else " or run from another folder"))
        if not given and os.path.lexists(folder) and not os.path.isdir(folder):
            raise Refused(f"{name}: {folder} is not a folder; pass --out FILE")
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        if isinstance(err, Refused):
            raise
        raise Refused(f"{name}: {err}") from None
    return path


def _rows(trial_id: str, cell_id: str, seed: int, vectors: torch.Tensor, scored: dict[str, torch.Tensor] | None
          ) -> pa.Table:
    """One row per vector: its ids, its scores (null where not scored) and the vector; the score columns carry
    their unit and meaning (`orchestrator.store.columns`) in the file's schema."""
    n, width = vectors.shape
    params = pa.ListArray.from_arrays(pa.array(range(0, n * width + 1, width), pa.int32()),
                                      pa.array(vectors.numpy().reshape(-1)))  # list<float32>, no Python floats
    columns = {"trial_id": pa.array([trial_id] * n), "cell_id": pa.array([cell_id] * n),
               "index": pa.array(range(n), pa.int64()), "seed": pa.array([seed] * n, pa.int64())}
    fields = [pa.field(k, v.type) for k, v in columns.items()]
    for c in SCORED:
        columns[c.name] = pa.nulls(n, c.type) if scored is None else pa.array(scored[c.name].double().numpy())
        fields.append(pa.field(c.name, c.type, metadata={"unit": UNITS[c.unit], "meaning": c.meaning}))
    fields.append(pa.field("params", params.type))
    return pa.Table.from_arrays([*columns.values(), params], schema=pa.schema(fields))


def _write(out: str, scratch: str, trial_id: str, cell_id: str, seed: int, vectors: torch.Tensor,
           scored: dict[str, torch.Tensor] | None) -> str:
    """Write the vectors to `out` through `scratch`, a file beside it made before sampling (so that an unwritable
    folder is refused before the work)."""
    if out.endswith(".pt"):
        torch.save({"trial_id": trial_id, "cell_id": cell_id, "seed": seed, "vectors": vectors,
                    "scores": scored}, scratch)
    else:
        pq.write_table(_rows(trial_id, cell_id, seed, vectors, scored), scratch, compression="zstd")
    if os.path.lexists(out):
        raise Refused(f"{out} exists; not overwriting it")
    os.rename(scratch, out)
    return out


def _scratch(out: str, given: bool) -> tuple[str, bool]:
    """An empty file beside `out` (its folder made first for the default output): the write is possible. And
    whether this made the folder (removed again, if empty, when the work fails)."""
    name = f"--out {out}" if given else f"the default output {out}"
    made = not given and not os.path.isdir(os.path.dirname(out))
    try:
        if made:
            os.makedirs(os.path.dirname(out))
        scratch = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        if made and os.path.isdir(os.path.dirname(out)):
            os.rmdir(os.path.dirname(out))
        raise Refused(f"{name}: cannot write there ({err.strerror or err})") from None
    return scratch, made


def generate(store: Store, trial_id: str, n: int, *, seed: int | None = None, out: str | None = None,
             score: bool = False, scored: bool = True, device: str = "cpu", say=print) -> str:
    """Sample `n` vectors of a completed trial, score them (unless not `scored`) and write them; `score`: also
    print their summary line. Refused (one line) for bad input, before any file or folder is made."""
    if not 1 <= n <= MAX_N:
        raise Refused(f"-n {n}: between 1 and {MAX_N} vectors per call (draw more with another --seed)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Refused(f"--seed {seed}: between 0 and 2**63 - 1")
    if score and not scored:
        raise Refused("--score prints the scores that --no-score skips: give one of them")
    device = _device(device)
    given = out is not None
    out = None if out is None else _out_path(store, out)
    row = _find_trial(store, trial_id)
    state = load_trial_model(store, row["cell_id"], trial_id)
    seed = state["seed"] if seed is None else seed
    out = out or _out_path(store, default_out(store, trial_id, n, seed), given=False)
    scratch, made = _scratch(out, given)
    path = None
    try:
        ae, ldm, cfg = restore_generator(state, device)
        vectors = sample_vectors(ae, ldm, n, sampler=cfg.sampler, steps=cfg.sample_steps, seed=seed).cpu()
        if not torch.isfinite(vectors).all():
            raise Refused(f"{int((~torch.isfinite(vectors).all(1)).sum())} of {n} vectors are non-finite")
        snapshots = load_snapshots(store, row["cell_id"]) if scored else None  # read once: scores and --score
        scores, near = _evaluate(store, row["cell_id"], vectors, device, snapshots) if scored else (None, None)
        values = None if scores is None else {"val_acc": scores.val_acc, "test_acc": scores.test_acc,
                                              "test_max_iou": near.test_max_iou, "val_max_iou": near.val_max_iou,
                                              "nearest_l2": near.nearest_l2}
        try:
            path = _write(out, scratch, trial_id, row["cell_id"], seed, vectors, values)
        except OSError as err:
            raise Refused(f"cannot write the vectors ({err})") from None
    finally:
        if os.path.lexists(scratch):
            os.remove(scratch)
        if made and path is None and not os.listdir(os.path.dirname(out)):
            os.rmdir(os.path.dirname(out))
    say(f"wrote {n} vectors of trial {trial_id} (cell {row['cell_id']}, seed {seed}) to {printable(path)}"
        + ("" if scored else " (not scored)"))
    if score:
        say(_score(vectors, scores, near, snapshots))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.generate", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's folder, e.g. results/smoke or s3://...")
    parser.add_argument("trial_id", metavar="TRIAL_ID")
    parser.add_argument("-n", type=int, default=1000, help=f"vectors to draw, 1 to {MAX_N} (default 1000)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed, 0 to 2**63 - 1 (default: the trial's own)")
    parser.add_argument("--out", default=None, help="a new .parquet or .pt file in an existing folder outside the "
                                                    f"sweep (default: ./{OUT_DIR}/<sweep>-<trial>-n<n>-s<seed>.parquet)")
    parser.add_argument("--score", action="store_true", help="also print their mean accuracy, novelty and the "
                                                             "family's collapse signals")
    parser.add_argument("--no-score", action="store_true", help="write the vectors unscored (null score columns)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    try:
        generate(parse_results_dir(args.results_dir), args.trial_id, args.n, seed=args.seed, out=args.out,
                 score=args.score, scored=not args.no_score, device=args.device)
    except (Refused, CorruptTable, OldTables) as err:
        return refuse(summary_line(err) if not isinstance(err, Refused) else err)
    except (ValueError, OSError, pa.ArrowException) as err:  # parse_results_dir: a bad URI; unreadable tables
        return refuse(summary_line(err))
    return 0


if __name__ == "__main__":
    run(main)
