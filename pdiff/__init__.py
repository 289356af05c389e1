"""p-diff, neural network parameter diffusion, in plain PyTorch (no Ray, no Parquet).

The names below are imported on first use: `pdiff.names` (what the table readers need) must not pull
in torch, and importing any submodule runs this file first.
"""

from importlib import import_module

_HOME = {
    "AEConfig": "config", "ARCHS": "zoo", "CollectConfig": "config", "DATASETS": "data",
    "DEFAULT_SUBSET": "zoo", "DatasetUnavailable": "data", "LDMConfig": "config", "ParameterSubset": "subset",
    "PdiffConfig": "config", "TrainConfig": "config", "build_model": "zoo", "load_dataset": "data",
    "run_baselines": "pipeline", "run_pdiff": "pipeline",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOME))
