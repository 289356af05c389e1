"""The reference of a sweep: every spec key, every p-diff knob and every table column, generated from the code.

    python -m orchestrator.explain            # print it (as `python -m orchestrator.sweep --explain`)
    python -m orchestrator.explain --write    # regenerate docs/reference.md (a test checks it matches)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from orchestrator.console import ArgumentParser, refuse, run
from orchestrator.spec import DISTRIBUTIONS, MAXIMA, OBJECTIVES, SEARCHES
from orchestrator.store.columns import COLUMNS, KNOB_TABLE
from pdiff import CollectConfig, PdiffConfig, TrainConfig
from pdiff.pipeline import KNOB_DOCS, KNOBS

__all__ = ["SPEC_KEYS", "TRAIN_DOCS", "COLLECT_DOCS", "spec_keys", "reference", "REFERENCE_PATH"]

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "docs" / "reference.md"

# (key, type, default, meaning). `sources.train.*`, `sources.collect.*` and `pdiff.knobs.*` are added
# from their dataclasses (TRAIN_DOCS, COLLECT_DOCS, pdiff.pipeline.KNOB_DOCS).
SPEC_KEYS: list[tuple[str, str, str, str]] = [
    ("name", "slug", "(required)", "the sweep's name and folder `<storage>/<name>`: letters, digits, - _ ., "
                                  "at most 128 characters"),
    ("storage", "folder or URI", "results", "results root: a local folder or a pyarrow URI (s3://bucket/prefix)"),
    ("seed", "int", "0", "base seed of the search and the baselines"),
    ("sources", "mapping", "(required)", "stage 1: the source models and their snapshots"),
    ("sources.archs", "list of names", "(required)", "architectures (pdiff.ARCHS)"),
    ("sources.datasets", "list of names", "(required)", "datasets (pdiff.DATASETS)"),
    ("sources.seeds", "list of ints", "[0]", "one source model per arch x dataset x seed (a cell)"),
    ("sources.train", "mapping", "{}", "how each source model is trained (keys below)"),
    ("sources.subset", "arch -> list of patterns", "pdiff.DEFAULT_SUBSET",
     "the parameter tensors p-diff learns, as name patterns"),
    ("sources.collect", "mapping", "{}", "how the K snapshots of the subset are collected (keys below)"),
    ("sources.max_failures", "int", "5", "restarts of a cell's Ray Train run (a lost node); it resumes"),
    ("sources.max_acc_drop", "float, points", "5.0", "a collection whose snapshots' mean val accuracy falls more "
     "than this below the source's fails its cell (sources.status = failed: no baselines, no trials)"),
    ("pdiff", "mapping", "(required)", "stage 2: the p-diff search per cell"),
    ("pdiff.knobs", "knob -> value or distribution", "{}",
     "a value is fixed; a mapping {type: " + " | ".join(DISTRIBUTIONS) + ", low, high | values, log} is searched"),
    ("pdiff.objective", "list", "[accuracy]", "objectives: " + ", ".join(OBJECTIVES) +
     " (accuracy or mean_accuracy first: maximise trials.val_acc, the best model's val accuracy, or "
     "trials.val_mean_acc, the family's mean, which does not saturate; novelty: minimise trials.val_max_iou, "
     "a multi-objective search)"),
    ("pdiff.num_samples", "int", "4", "trials per cell (with no searched knob: repeats of the fixed configuration)"),
    ("pdiff.max_concurrent", "int", "2", "trials of a cell running at once"),
    ("pdiff.search", "name", "tpe", " | ".join(SEARCHES) + " (grid: all searched knobs choices; "
                                    "NSGA-II replaces TPE for two objectives)"),
    ("pdiff.early_stopping", "mapping or null", "null", "ASHA on intermediate val accuracy; omit for none"),
    ("pdiff.early_stopping.grace_period", "int", "2", "probes a trial runs before it can be stopped"),
    ("pdiff.baselines", "bool", "true", "also score the baselines (pdiff.baselines) per cell"),
    ("pdiff.noise_sigma", "float > 0", "0.01", "noise std of the noise-added baselines"),
    ("resources", "mapping", "{}", "Ray resources per task"),
    ("resources.sources", "mapping", "{}", "per stage-1 worker"),
    ("resources.sources.cpus", "float > 0", "1.0", "CPUs per source worker"),
    ("resources.sources.gpus", "float >= 0", "0.0", "GPUs per source worker (a fraction below 1 shares one)"),
    ("resources.sources.workers", "int", "1", "Ray Train (DDP) workers per cell"),
    ("resources.trials", "mapping", "{}", "per p-diff trial"),
    ("resources.trials.cpus", "float > 0", "1.0", "CPUs per trial"),
    ("resources.trials.gpus", "float >= 0", "0.0", "GPUs per trial (a fraction below 1 shares one)"),
]

TRAIN_DOCS = {
    "epochs": "training epochs of the source model",
    "batch_size": "examples per step",
    "lr": "peak learning rate",
    "optimizer": "sgd (momentum 0.9) | adamw",
    "weight_decay": "weight decay (>= 0)",
    "schedule": "cosine | constant learning rate",
    "augment": "random crops for images >= 28 px, flips for colour images",
}
COLLECT_DOCS = {
    "k": "snapshots collected (the paper: 200)",
    "interval": "a snapshot every `interval` units",
    "unit": "step | epoch",
    "lr": "learning rate while collecting (the paper: 0.03)",
    "optimizer": "sgd | adamw",
    "batchnorm": ("eval (running statistics frozen: each snapshot pairs with the buffers evaluation uses) | train "
                  "(batch statistics, as the official code: keeps a subset that feeds a BatchNorm scale-invariant; "
                  "scored with the collection's final buffers)"),
}


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)


def _type(value: Any, name: str) -> str:
    if name == "sample_steps":
        return "int or null"
    return {bool: "bool", int: "int", float: "float", str: "string", tuple: "list of ints"}[type(value)]


def _maximum(path: str, name: str) -> str:
    limit = MAXIMA.get(path, MAXIMA.get(name))
    return f" (at most {limit})" if limit is not None else ""


def spec_keys() -> list[tuple[str, str, str, str]]:
    """Every spec key with its type, default and meaning."""
    rows = list(SPEC_KEYS)
    for section, cls, docs in (("sources.train", TrainConfig, TRAIN_DOCS),
                               ("sources.collect", CollectConfig, COLLECT_DOCS)):
        default = cls()
        for f in dataclasses.fields(cls):
            path = f"{section}.{f.name}"
            value = getattr(default, f.name)
            rows.append((path, _type(value, f.name), _fmt(value), docs[f.name] + _maximum(path, f.name)))
    knobs = PdiffConfig().knobs()
    for name in KNOBS:
        rows.append((f"pdiff.knobs.{name}", _type(knobs[name], name), _fmt(knobs[name]),
                     KNOB_DOCS[name] + _maximum("", name)))
    order = {key: i for i, (key, *_) in enumerate(SPEC_KEYS)}

    def sort_key(row):  # each section's own keys right after the section
        parts = row[0].split(".")
        return [order.get(".".join(parts[:i + 1]), len(order)) for i in range(len(parts))]

    return sorted(rows, key=sort_key)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def reference() -> str:
    """The whole reference as Markdown (docs/reference.md holds exactly this text)."""
    lines = ["# pdiff-sweep reference", "",
             "Generated by `python -m orchestrator.explain --write` (also `python -m orchestrator.sweep --explain`); "
             "do not edit by hand: a test checks it matches the code.", "",
             "## Spec keys", "",
             "Every key of a sweep YAML (the grammar: `orchestrator/spec.py`).", ""]
    lines += _table(("key", "type", "default", "meaning"), [(f"`{k}`", t, f"`{d}`", m) for k, t, d, m in spec_keys()])
    knobs = PdiffConfig().knobs()
    lines += ["", "## p-diff knobs", "",
              "Under `pdiff.knobs`: a value fixes a knob, a distribution searches it. Each trial's row in the "
              f"`{KNOB_TABLE}` table has every knob as a column, defaults included.", ""]
    lines += _table(("knob", "config field", "default", "meaning"),
                    [(f"`{n}`", f"`{(p + '.') if p else ''}{a}`", f"`{_fmt(knobs[n])}`", KNOB_DOCS[n])
                     for n, (p, a) in KNOBS.items()])
    lines += ["", "## Table columns", "",
              "Tables live under `<storage>/<sweep>/<table>/<cell_id>/*.parquet` "
              "(query them with `python -m orchestrator.query`). Direction: where one is better, the meaning says "
              "higher / lower is better.", ""]
    for table, cols in COLUMNS.items():
        lines += [f"### {table}", ""]
        lines += _table(("column", "unit", "meaning"), [(f"`{c}`", u, m) for c, (u, m) in cols.items()])
        if table == KNOB_TABLE:
            lines += ["", "Plus one column per p-diff knob (see above), holding the trial's value."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_PATH.name} under docs/")
    args = parser.parse_args(argv)
    text = reference()
    if args.write:
        try:
            REFERENCE_PATH.write_text(text)
        except OSError as err:  # e.g. an installed, read-only copy of the package
            return refuse(f"cannot write {REFERENCE_PATH} ({err.strerror or err})")
        print(f"wrote {REFERENCE_PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    run(main)
