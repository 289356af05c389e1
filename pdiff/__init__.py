"""p-diff, neural network parameter diffusion, in plain PyTorch (no Ray, no Parquet)."""

from .autoencoder import AEConfig
from .collect import CollectConfig, TrainConfig
from .data import DATASETS, DatasetUnavailable, load_dataset
from .diffusion import LDMConfig
from .pipeline import PdiffConfig, run_pdiff, run_baselines
from .subset import ParameterSubset
from .zoo import ARCHS, DEFAULT_SUBSET, build_model

__all__ = [
    "AEConfig", "ARCHS", "CollectConfig", "DATASETS", "DEFAULT_SUBSET", "DatasetUnavailable", "LDMConfig",
    "ParameterSubset", "PdiffConfig", "TrainConfig", "build_model", "load_dataset", "run_baselines", "run_pdiff",
]
