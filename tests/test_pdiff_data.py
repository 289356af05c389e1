"""pdiff.data: seeded splits, shapes, and clear errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import pdiff
from pdiff import DATASETS, DatasetUnavailable, load_dataset


def test_digits_shapes_and_labels(digits):
    assert (digits.channels, digits.classes, digits.image_size) == (1, 10, 8)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 1, 8, 8)
        assert int(split.y.min()) >= 0 and int(split.y.max()) < 10
        assert torch.isfinite(split.x).all()
    # All 1,797 images are used exactly once: 20% test, 10% of the rest val.
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == round(0.2 * 1797)
    assert len(digits.val) == round(0.1 * (1797 - len(digits.test)))
    # Every class occurs in the training split.
    assert set(digits.train.y.tolist()) == set(range(10))


def test_digits_split_is_seeded(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.val.x, digits.val.x) and torch.equal(again.val.y, digits.val.y)
    assert torch.equal(again.train.x, digits.train.x)
    # A different seed draws a different validation split from the same training pool ...
    assert len(other.val) == len(digits.val)
    assert not torch.equal(other.val.x, digits.val.x)
    # ... but the test split is fixed, so accuracies are comparable across seeds.
    assert torch.equal(other.test.x, digits.test.x) and torch.equal(other.test.y, digits.test.y)


def test_digits_val_is_disjoint_from_train():
    data = load_dataset("digits", seed=3, val_fraction=0.25)
    flat = lambda s: {tuple(row.tolist()) + (int(y),) for row, y in zip(s.x.flatten(1), s.y)}  # noqa: E731
    train, val, test = flat(data.train), flat(data.val), flat(data.test)
    # digits has a handful of duplicate images; the overlap must stay at that level.
    assert len(train & val) <= 3 and len(train & test) <= 3
    assert len(data.val) == round(0.25 * (len(data.train) + len(data.val)))


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet_tiny")
    msg = str(err.value)
    assert "imagenet_tiny" in msg
    for name in DATASETS:
        assert name in msg


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert "'mnist'" in msg
    assert str(tmp_path.resolve()) in msg
    assert "MNIST/raw" in msg and "copy" in msg  # how to put the files there by hand
    assert "PDIFF_DATA" in msg
    assert isinstance(err.value, RuntimeError)  # DatasetUnavailable is a RuntimeError


def test_failed_download(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root, download, **kwargs):
            assert download is True
            raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("cifar10", root=tmp_path / "store")
    msg = str(err.value)
    assert "'cifar10'" in msg
    assert str((tmp_path / "store").resolve()) in msg
    assert "cifar-10-batches-py" in msg
    assert "no route to host" in msg  # the underlying cause is kept
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def test_data_root_from_environment(tmp_path, monkeypatch):
    from pdiff.data import data_root

    monkeypatch.setenv("PDIFF_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("elsewhere").name == "elsewhere"
    monkeypatch.delenv("PDIFF_DATA")
    assert str(data_root()) == "data"
    assert pdiff.DatasetUnavailable is DatasetUnavailable
