"""Datasets by name, as in-memory tensors with seeded train / val / test splits.

Validation is always carved out of the training set, so that model selection
("best of N") never looks at the test split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DATASET_SHAPES", "DatasetUnavailable", "Dataset", "Split", "load_dataset"]


class DatasetUnavailable(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32 (n, channels, height, width), normalised
    y: torch.Tensor  # int64 (n,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    channels: int
    classes: int
    image_size: int
    train: Split
    val: Split
    test: Split


# name -> (torchvision class, channels, classes, image size, how the split argument is spelled)
_TORCHVISION = {
    "mnist": ("MNIST", 1, 10, 28, "train"),
    "fashion_mnist": ("FashionMNIST", 1, 10, 28, "train"),
    "cifar10": ("CIFAR10", 3, 10, 32, "train"),
    "cifar100": ("CIFAR100", 3, 100, 32, "train"),
    "stl10": ("STL10", 3, 10, 96, "split"),
}
DATASETS = ("digits", *_TORCHVISION)
# name -> (channels, classes, image size): what a network is built for, known without loading the data.
DATASET_SHAPES = {"digits": (1, 10, 8), **{name: spec[1:4] for name, spec in _TORCHVISION.items()}}

_MANUAL_FILES = {
    "mnist": "MNIST/raw/ (train-images-idx3-ubyte.gz and the other three files)",
    "fashion_mnist": "FashionMNIST/raw/ (the four idx .gz files)",
    "cifar10": "cifar-10-batches-py/ (unpacked cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (unpacked cifar-100-python.tar.gz)",
    "stl10": "stl10_binary/ (unpacked stl10_binary.tar.gz)",
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are downloaded into: `root`, else $PDIFF_DATA, else ./data."""
    return Path(root or os.environ.get("PDIFF_DATA") or "data")


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name with a seeded validation split carved from train."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if name == "digits":
        train_full, test, meta = _digits(seed)
    else:
        train_full, test, meta = _torchvision(name, data_root(root), download)
    train, val = _carve(train_full, val_fraction, seed)
    return Dataset(name, *meta, train=train, val=val, test=test)


def _carve(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(split)))
    val, train = order[:n_val], order[n_val:]
    return Split(split.x[train], split.y[train]), Split(split.x[val], split.y[val])


def _digits(seed: int) -> tuple[Split, Split, tuple[int, int, int]]:
    # scikit-learn's 1,797 8x8 digits ship with the package: real data, offline.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.5) / 0.5
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # A fixed test split (seed 0) for every seed, so accuracies are comparable across seeds.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = round(0.2 * len(y))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test]), DATASET_SHAPES["digits"]


def _torchvision(name: str, root: Path, download: bool) -> tuple[Split, Split, tuple[int, int, int]]:
    import torchvision

    cls_name, channels, classes, size, split_arg = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)

    def both_splits(folder: Path, fetch: bool) -> list:
        return [cls(root=str(folder), download=fetch,
                    **({"train": train} if split_arg == "train" else {"split": "train" if train else "test"}))
                for train in (True, False)]

    try:
        parts = _prepared(name, root, both_splits) if download else both_splits(root, False)
    except Exception as err:  # network errors, missing files, corrupt archives
        raise DatasetUnavailable(
            f"dataset {name!r} is not in {root.resolve()} and could not be downloaded "
            f"({type(err).__name__}: {err}). Download it on a machine with internet access "
            f"and copy {_MANUAL_FILES[name]} into {root.resolve()}, or point PDIFF_DATA "
            f"at a folder that has it."
        ) from err
    train, test = (_to_split(ds, channels) for ds in parts)
    # Normalise both splits with the training set's channel statistics.
    mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
    std = train.x.std(dim=(0, 2, 3), keepdim=True)
    train, test = (Split(((s.x - mean) / std).contiguous(), s.y) for s in (train, test))
    return train, test, (channels, classes, size)


def _prepared(name: str, root: Path, both_splits) -> list:
    """`both_splits(root, False)`, downloading the dataset first where root's copy is missing or fails
    torchvision's checks (md5 sums, loading). One process per data folder (per node, for a node-local
    one) downloads, under a file lock, into a temporary folder beside the copy; torchvision verifies
    the archive's md5 there, and only then are the files renamed into place, so no process ever sees
    half a download."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        try:
            return both_splits(root, False)  # an intact copy: no download
        except Exception:  # missing, partial or corrupt: fetch it again
            pass
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".tmp", dir=root))
        try:
            both_splits(tmp, True)
            replaced = tmp / ".replaced"
            replaced.mkdir()
            for entry in [e for e in tmp.iterdir() if e != replaced]:
                target = root / entry.name
                if target.exists() or target.is_symlink():  # the corrupt copy: deleted with tmp
                    target.rename(replaced / entry.name)
                entry.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return both_splits(root, False)


def _to_split(ds, channels: int) -> Split:
    data = ds.data
    x = torch.as_tensor(np.asarray(data))
    if x.ndim == 3:  # (n, h, w) grey
        x = x.unsqueeze(1)
    elif x.shape[-1] == channels:  # (n, h, w, c) -> (n, c, h, w)
        x = x.permute(0, 3, 1, 2)
    x = x.float().div(255.0)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return Split(x, torch.as_tensor(np.asarray(labels), dtype=torch.int64))
