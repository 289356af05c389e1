"""What every figure of the report shares: matplotlib (Agg, files only), the grid of panels, a panel that says
why it is empty, the methods' colours and markers, the panels of a sweep too large for one per cell, and
saving a figure under its title (`orchestrator.results.captions.FIGURES`)."""

from __future__ import annotations

import contextlib
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.console import cell_label  # noqa: E402
from orchestrator.results.captions import FIGURES  # noqa: E402
from orchestrator.results.sql import methods  # noqa: E402
from pdiff.names import LABELS  # noqa: E402

__all__ = ["METHOD_STYLE", "MAX_PANELS", "Panel", "cropping", "grid", "message", "save", "vectors", "panels_of",
           "rows_of"]

_BASELINE_STYLES = [("#1f77b4", "s"), ("#2ca02c", "^"), ("#ff7f0e", "D"), ("#8c564b", "v"), ("#e377c2", "P")]


def _method_style() -> dict[str, tuple[str, str, str]]:
    """(label, colour, marker) of the snapshots, p-diff and each baseline method (pdiff.baselines, in order)."""

    style = {"original": ("snapshots", "#555555", "o"), "p-diff": ("p-diff", "#d62728", "o")}
    for i, m in enumerate(methods()):
        style[m] = (LABELS[m][0], *_BASELINE_STYLES[i % len(_BASELINE_STYLES)])
    return style


METHOD_STYLE = _method_style()


def grid(n: int, width: float = 4.6, height: float = 3.6, ncols: int | None = None):
    """A figure of `n` panels (at least one), four to a row unless `ncols`; returns it and its axes."""
    n = max(1, n)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    fig.panels = flat[:n]  # in order: what `cropping` cuts out
    return fig, flat[:n]


def message(ax, text: str, title: str | None = None) -> None:
    """A panel that explains why there is nothing to draw."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 44)), ha="center", va="center", fontsize=9,
            color="#444444", transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=10)


DPI = 90


def save(fig, path: Path) -> Path:
    """Write the figure to `path` under its title (captions.FIGURES, by file name) and close it; inside
    `cropping`, each of its panels too."""
    fig.suptitle(FIGURES[path.name][0], fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, facecolor="white")
    if _CROPS:
        _cut_panels(fig, path.name, *_CROPS[-1])
    plt.close(fig)
    return path


_CROPS: list[tuple[list[str], Path, dict[str, dict[str, Path]]]] = []  # the active `cropping`, innermost last


@contextlib.contextmanager
def cropping(keys: Sequence[str], folder: Path):
    """While active, `save` also writes panel i of each figure, cut out of it, as `<folder>/<keys[i]>/<figure
    file name>`; yields {key: {figure file name: path}}, filled as figures are saved. A cell's page shows its
    panels so: the report's own pixels, nothing drawn or computed twice."""
    found: dict[str, dict[str, Path]] = {}
    _CROPS.append((list(keys), folder, found))
    try:
        yield found
    finally:
        _CROPS.pop()


def _cut_panels(fig, name: str, keys: list[str], folder: Path, found: dict[str, dict[str, Path]]) -> None:
    """Each panel of `fig` (with its colour bar, if any) as its own PNG; see `cropping`."""
    fig.set_dpi(DPI)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    height, width = pixels.shape[:2]
    renderer = fig.canvas.get_renderer()
    panels = getattr(fig, "panels", [])
    bars: dict[int, list] = {}
    for bar in (a for a in fig.axes if a.get_label() == "<colorbar>"):
        b = bar.get_position()  # its panel: the nearest on its left in the same row
        left = [i for i, a in enumerate(panels) if a.get_position().x1 <= b.x0 + 1e-6
                and min(a.get_position().y1, b.y1) > max(a.get_position().y0, b.y0)]
        if left:
            bars.setdefault(max(left, key=lambda i: panels[i].get_position().x1), []).append(bar)
    for i, (key, ax) in enumerate(zip(keys, panels)):
        box = matplotlib.transforms.Bbox.union([a.get_tightbbox(renderer) for a in [ax, *bars.get(i, [])]])
        x0, x1 = max(0, math.floor(box.x0) - 4), min(width, math.ceil(box.x1) + 4)
        y0, y1 = max(0, math.floor(height - box.y1) - 4), min(height, math.ceil(height - box.y0) + 4)
        path = folder / key / name
        path.parent.mkdir(parents=True, exist_ok=True)
        matplotlib.image.imsave(path, pixels[y0:y1, x0:x1])
        found.setdefault(key, {})[name] = path


def vectors(df: pd.DataFrame) -> np.ndarray:
    """The parameter vectors (`params`) of some models' rows, one row each; none stored: an empty array."""
    if "params" not in df.columns:  # no rows at all (e.g. a sweep without baselines)
        return np.zeros((0, 0), np.float32)
    found = [v for v in df.params if v is not None]  # a failed writer may store no vector
    return np.stack(found).astype(np.float32) if found else np.zeros((0, 0), np.float32)


# -- many cells: a bounded number of panels ------------------------------------------

MAX_PANELS = 12  # panels per figure


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: a cell, or the cells of one arch x dataset group pooled (the first one stands for
    the group where cells cannot be pooled: the t-SNE, the loss curves)."""

    key: str
    label: str
    cells: tuple[str, ...]


def panels_of(sources: pd.DataFrame) -> tuple[list[Panel], str]:
    """The panels of each figure, and a note saying what they show. Up to MAX_PANELS cells: one panel per cell.
    Beyond: one per arch x dataset group (its cells are the seeds), the first MAX_PANELS groups; every cell
    has its own page in the report either way."""
    rows = sources.sort_values(["arch", "dataset", "seed"])
    if len(rows) <= MAX_PANELS:
        return [Panel(r.cell_id, cell_label(r.arch, r.dataset, r.seed), (r.cell_id,))
                for r in rows.itertuples()], ""
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in rows.itertuples():
        groups.setdefault((r.arch, r.dataset), []).append((r.cell_id, int(r.seed)))
    shown = list(groups.items())[:MAX_PANELS]
    out = [Panel(f"{a}/{d}", f"{a} / {d} ({len(cells)} cells)", tuple(c for c, _ in cells)) for (a, d), cells in shown]
    note = (f"{len(rows)} cells: one panel per architecture x dataset"
            + (f", the first {len(shown)} of {len(groups)}" if len(groups) > len(shown) else "")
            + ", pooling its cells (seeds)")
    return out, note


def rows_of(frame: pd.DataFrame, key: str, members: dict[str, Sequence[str]] | None) -> pd.DataFrame:
    """A panel's rows: its cell's (`key` a cell id), or those of the cells pooled in it."""
    cells = members.get(key, (key,)) if members else (key,)
    return frame[frame.cell_id == cells[0]] if len(cells) == 1 else frame[frame.cell_id.isin(cells)]
