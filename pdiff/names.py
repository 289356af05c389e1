"""Names and thresholds that readers of the tables need without importing torch.

The summary and the report run on machines (and in processes) that never build a network; importing
torch there costs seconds. `pdiff.baselines` and `pdiff.evaluate` take their names and thresholds from
here, so each rule still has one home.
"""

from __future__ import annotations

from .verdicts import COLLAPSE_IOU, COLLAPSE_SPREAD  # their home is pdiff.verdicts

__all__ = ["METHODS", "LABELS", "COLLAPSE_IOU", "COLLAPSE_SPREAD"]

# The memorisation baselines (`pdiff.baselines.BASELINES` in this order) and how a report names each
# one: (label, short label for narrow table headings).
LABELS: dict[str, tuple[str, str]] = {
    "noise": ("noise", "noise"),
    "average": ("average of 16", "avg16"),
    "gaussian": ("Gaussian", "gauss"),
}
METHODS: tuple[str, ...] = tuple(LABELS)
