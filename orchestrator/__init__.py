"""pdiff-sweep: the p-diff pipeline swept over architectures, datasets and knobs on Ray, with results in Parquet.

Commands: `python -m orchestrator.sweep | report | query | generate | explain`. In Python, `load_model` gives a
network of a finished sweep (docs/architecture.md maps the packages).
"""

from orchestrator.load import load_model

__all__ = ["load_model"]
