"""The summary's tables as text, Markdown and HTML: column groups, headings, number formats, the page style."""

from __future__ import annotations

import html
import math
import re
from typing import Any, Sequence

import pandas as pd

from orchestrator.results.sql import methods
from pdiff.names import COLLAPSE_IOU, COLLAPSE_SPREAD, LABELS

# Each baseline method (pdiff.baselines, in its order): its label, and its short label for narrow headings.
BASELINES = {m: LABELS[m][0] for m in methods()}
SHORT = {m: LABELS[m][1] for m in methods()}


# -- rendering ---------------------------------------------------------------

KEYS = [("arch", "arch"), ("dataset", "dataset"), ("seed", "seed")]


def summary_groups(shown: Sequence[str]) -> list[tuple[str, str, list[tuple[str, list[tuple[str, str, str]]]]]]:
    """The summary's four tables: (title, note, [(group heading, [(column, sub-heading, short heading)])]).

    HTML shows the group and sub-headings in two header rows; text and Markdown the short headings."""

    def acc(prefix: str, short: str) -> list[tuple[str, str, str]]:
        return [(f"{prefix}_selected", "selected (val)", f"{short} sel"),
                (f"{prefix}_best_test_paper", "best (test-selected, paper's protocol)", f"{short} best*"),
                (f"{prefix}_mean", "mean", f"{short} mean"), (f"{prefix}_median", "median", f"{short} med")]

    accuracy = [("original snapshots", [("original_best", "best", "orig best"), ("original_mean", "mean", "orig mean")]),
                ("p-diff", acc("pdiff", "pdiff") + [("pdiff_collapsed", "collapsed?", "pdiff collapse")])]
    accuracy += [(label, acc(b, SHORT[b])) for b, label in BASELINES.items()]
    novelty = [("mean test max-IoU to the snapshots (lower = more novel)",
                [("snapshot_loo_max_iou", "snapshots to each other", "snap LOO"),
                 ("pdiff_max_iou", "p-diff", "pdiff IoU")]
                + [(f"{b}_max_iou", label, f"{SHORT[b]} IoU") for b, label in BASELINES.items()]),
               ("verdict", [("collection", "collection", "collection"), ("pdiff_verdict", "p-diff", "verdict"),
                            ("tied_trials", "trials tied on val", "val ties")])]
    novelty += [(f"p-diff vs {label} (95% intervals)",
                 [(f"vs_{b}", "verdict", f"vs {short}"), (f"vs_{b}_acc", "mean acc diff (pp)", f"{short} dAcc"),
                  (f"vs_{b}_iou", "max-IoU diff", f"{short} dIoU")])
                for b, label, short in [("latent_gaussian", "its latent Gaussian", "latG")]
                + [(b, label, SHORT[b]) for b, label in BASELINES.items()]]
    def family(prefix: str, short: str) -> list[tuple[str, str, str]]:
        return [(f"{prefix}_pairwise_iou", "pairwise IoU", f"{short} pairIoU"),
                (f"{prefix}_distinct_sets", "distinct sets", f"{short} sets"),
                (f"{prefix}_spread_ratio", "spread ratio", f"{short} spread"),
                (f"{prefix}_collapsed", "collapsed?", f"{short} collapse")]

    collapse = [("snapshots (the reference)", [c for c in family("snapshot", "snap") if "spread" not in c[0]]),
                ("p-diff, val-selected trial", family("pdiff", "pdiff")
                 + [("ae_converged", "AE reached ae_min_r2", "AE converged")]),
                ("p-diff, all trials", [("collapsed_trials", "collapsed", "collapsed trials"),
                                        ("trials", "completed", "trials")])]
    collapse += [(label, family(b, SHORT[b])) for b, label in BASELINES.items()]
    hyper = [("val-selected trial", [("trials", "completed trials", "trials"),
                                     ("failed_trials", "failed trials (left out)", "failed"),
                                     ("best_trial", "trial", "trial"),
                                     ("pdiff_val", "val acc (%)", "val acc")]),
             ("its hyperparameters", [(f"hp_{k}", k, k) for k in shown])]
    return [
        ("Test accuracy (%)",
         "'selected (val)' (sel): the test accuracy of the model with the best validation accuracy (our protocol). "
         "'best (test-selected)' (best*): the best test accuracy, chosen on the test set itself, as in the paper: "
         "optimistic by construction. med: median. p-diff: the generated models of the val-selected trial; "
         "avg16: average of 16 snapshots; gauss: per-coordinate Gaussian.",
         accuracy),
        ("Novelty, verdicts and comparisons",
         "Novelty: the mean over a method's models of the max IoU between the model's wrong test predictions "
         "and any snapshot's (1 = the same mistakes as some snapshot); snap LOO: the same for each snapshot "
         "against the other snapshots, the reference: a family at or above it is MEMORISING. verdict: "
         "collapsed / memorising / novel (pdiff.verdicts). p-diff vs a family: the val-selected trial's mean "
         "test accuracy and mean max-IoU minus the family's, with 95% paired bootstrap intervals over test "
         "examples and models; a side counts only when its interval excludes 0 (dominates: more accurate and "
         "more novel; more novel: at equal accuracy; tie: neither differs). latG: the trial's own autoencoder "
         "decoding a Gaussian fitted to its latents (no diffusion model).",
         novelty),
        ("Collapse",
         "Does a family hold different models or copies of one? pairIoU: mean IoU of the wrong test-prediction "
         "sets over distinct pairs of the family's models (1 = all make the same mistakes); sets: how many "
         "different wrong-prediction sets the family has; spread: RMS L2 distance of its parameter vectors to "
         f"their centroid over the snapshots' (1 for the snapshots). COLLAPSED: pairwise IoU >= {COLLAPSE_IOU} or "
         f"spread ratio < {COLLAPSE_SPREAD}; a collapsed family's accuracy and novelty are those of one model. "
         "AE converged: the trial's autoencoder reached its R2 target (ae_min_r2) within ae_steps.",
         collapse),
        ("Winning hyperparameters",
         "The trial with the best val accuracy (ties: the lower val_max_iou, then the smaller trial id); "
         "the knobs that vary across the sweep's trials (every knob where none varies).",
         hyper),
    ]


def format_value(column: str, v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(column, x) for x in v) + "]"
    if column.endswith("collapsed"):
        return "COLLAPSED" if v else "ok"
    if column == "ae_converged":
        return "yes" if v else "no"
    if isinstance(v, bool):
        return str(v)
    if column.endswith(("distinct_sets", "collapsed_trials", "tied_trials")) and isinstance(v, (int, float)):
        return f"{v:.0f}"
    if isinstance(v, float):
        if column.startswith("hp_"):
            return f"{v:.4g}"
        if column.endswith(("max_iou", "pairwise_iou", "spread_ratio")):
            return f"{v:.3f}"
        return f"{v:.2f}"
    return str(v)


def count_of(count: Any, total: Any) -> str:
    """`count of total` (e.g. collapsed trials of the completed ones), or n/a where either is unknown."""
    return f"{count:.0f} of {total:.0f}" if pd.notna(count) and pd.notna(total) else "n/a"


def flat_table(df: pd.DataFrame, groups) -> pd.DataFrame:
    """One section of the summary as strings, under the short headings."""
    cols = dict(KEYS) | {c: short for _, sub in groups for c, _, short in sub if c in df}
    return pd.DataFrame({label: [format_value(c, v) for v in df[c]] for c, label in cols.items()})


def md_table(flat: pd.DataFrame) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in flat.columns) + " |",
             "|" + "|".join("---" for _ in flat.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines)


def frame_html(df: pd.DataFrame, index: bool = False) -> str:
    """A frame's values as a plain HTML table (`index`: its index as the first column, under its name)."""
    e = html.escape
    head = ([df.index.name or ""] if index else []) + list(df.columns)
    body = ["<tr>" + (f"<th>{e(str(i))}</th>" if index else "") + "".join(f"<td>{e(str(v))}</td>" for v in row)
            + "</tr>" for i, row in zip(df.index, df.itertuples(index=False))]
    return ("<table>\n<thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


def html_table(df: pd.DataFrame, groups, links: dict[str, str] | None = None) -> str:
    """One section of the summary as an HTML table; `links`: cell id -> its page, linked from the row's arch."""
    e = html.escape
    groups = [(h, [(c, lab) for c, lab, _ in sub if c in df]) for h, sub in groups]
    groups = [(h, sub) for h, sub in groups if sub]
    top = "".join(f'<th rowspan="2">{e(label)}</th>' for _, label in KEYS)
    top += "".join(f'<th colspan="{len(sub)}" class="group">{e(h)}</th>' for h, sub in groups)
    second = "".join(f"<th>{e(lab)}</th>" for _, sub in groups for _, lab in sub)
    columns = [c for c, _ in KEYS] + [c for _, sub in groups for c, _ in sub]
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in columns:
            text = format_value(c, row[c])
            cls = (' class="yes"' if text == "yes" else ' class="no"' if text == "no"
                   else ' class="collapsed"' if text == "COLLAPSED" else "")
            if c == KEYS[0][0] and links and row.get("cell_id") in links:
                cells.append(f'<td{cls}><a href="{e(links[row["cell_id"]])}">{e(text)}</a></td>')
                continue
            cells.append(f"<td{cls}>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table>\n<thead><tr>{top}</tr>\n<tr>{second}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table>")


def code_html(text: str) -> str:
    """Escape for HTML, `backticks` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222;
       max-width: 1500px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 6px; } .meta, .note { color: #555; font-size: 13px; max-width: 1100px; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; max-width: 120px; text-align: center; } th.group { background: #e6ecf5; text-align: center; }
td:nth-child(-n+3) { text-align: left; } td.yes { background: #e3f4e1; } td.no { background: #fbe7e6; }
td.collapsed { background: #d62728; color: white; font-weight: bold; }
.warning { background: #fbe7e6; border-left: 4px solid #d62728; padding: 6px 12px; max-width: 1100px; }
figure { margin: 16px 0 32px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; max-width: 1100px; margin-top: 6px; }
code { background: #f3f3f3; padding: 0 3px; }
"""
