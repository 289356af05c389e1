"""pdiff.data: seeded splits, shapes, and clear errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

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


# A CIFAR-10 stand-in for two processes: its download is a slow local copy from a mirror folder
# (ten chunks, 0.1 s apart), checked with torchvision's md5 as the real classes check theirs.
_PREPARE = r'''
import sys, time
from pathlib import Path
import numpy as np
import torchvision
from torchvision.datasets.utils import check_integrity

mirror, root, ready, go, downloads = map(Path, sys.argv[1:])


class SlowCIFAR10:
    def __init__(self, root, train=True, download=False):
        archive, md5 = Path(root) / "fake-cifar" / "data.npz", (mirror / "md5").read_text()
        if download and not check_integrity(str(archive), md5):
            with open(downloads, "a") as log:
                log.write(f"{root}\n")
            archive.parent.mkdir(parents=True, exist_ok=True)
            payload = (mirror / "data.npz").read_bytes()
            chunk = len(payload) // 10 + 1
            with open(archive, "wb") as out:
                for i in range(0, len(payload), chunk):
                    out.write(payload[i:i + chunk])
                    out.flush()
                    time.sleep(0.1)
        if not check_integrity(str(archive), md5):
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        with np.load(archive) as z:
            part = "train" if train else "test"
            self.data, self.targets = z[f"x_{part}"], z[f"y_{part}"].tolist()


torchvision.datasets.CIFAR10 = SlowCIFAR10
from pdiff import load_dataset

ready.touch()
while not go.exists():
    time.sleep(0.01)
data = load_dataset("cifar10", root=root, seed=0)
print(len(data.train), len(data.val), len(data.test), float(data.train.x.double().sum()))
'''


def test_two_processes_download_a_dataset_once(tmp_path):
    import subprocess
    import sys
    import time

    import numpy as np
    from torchvision.datasets.utils import calculate_md5

    mirror, root = tmp_path / "mirror", tmp_path / "data"
    mirror.mkdir()
    g = np.random.default_rng(0)
    np.savez(mirror / "data.npz", x_train=g.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
             y_train=g.integers(0, 10, 100), x_test=g.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             y_test=g.integers(0, 10, 20))
    (mirror / "md5").write_text(calculate_md5(str(mirror / "data.npz")))
    payload = (mirror / "data.npz").read_bytes()
    (root / "fake-cifar").mkdir(parents=True)
    (root / "fake-cifar" / "data.npz").write_bytes(payload[:len(payload) // 2])  # a download cut short earlier

    downloads = tmp_path / "downloads.log"
    procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(mirror), str(root), str(tmp_path / f"ready{i}"),
                               str(tmp_path / "go"), str(downloads)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, procs[0].communicate()
        time.sleep(0.05)
    (tmp_path / "go").touch()  # both start preparing the dataset at the same moment
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].split()[:3] == ["90", "10", "20"]
    assert len(downloads.read_text().splitlines()) == 1  # one download, by whichever took the lock first
    assert sorted(p.name for p in root.iterdir()) == [".cifar10.lock", "fake-cifar"]  # no temporary folder left
    assert (root / "fake-cifar" / "data.npz").read_bytes() == payload  # the partial copy was fetched again


def test_a_download_cut_short_leaves_nothing_in_place(tmp_path, monkeypatch):
    import torchvision

    class CutShort:
        def __init__(self, root, download, **kwargs):
            archive = Path(root) / "cifar-10-batches-py" / "data_batch_1"
            if download:
                archive.parent.mkdir(parents=True, exist_ok=True)
                archive.write_bytes(b"half an archive")
                raise urllib.error.URLError("connection reset")
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", CutShort)
    with pytest.raises(DatasetUnavailable, match="connection reset"):
        load_dataset("cifar10", root=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".cifar10.lock"]  # the partial files stayed in the temporary folder
