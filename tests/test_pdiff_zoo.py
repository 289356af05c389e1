"""pdiff.zoo: every architecture builds for small and CIFAR-sized inputs; default subsets exist."""

from __future__ import annotations

import fnmatch

import pytest
import torch

from pdiff import ARCHS, DEFAULT_SUBSET, ParameterSubset, build_model

SHAPES = [(1, 10, 8), (3, 100, 32)]  # (channels, classes, image size): digits, CIFAR-100


@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "cifar100"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_builds_and_runs(arch, shape):
    channels, classes, size = shape
    model = build_model(arch, channels=channels, classes=classes, image_size=size, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()

    names = [n for n, _ in model.named_parameters()]
    for pattern in DEFAULT_SUBSET[arch]:
        assert any(fnmatch.fnmatchcase(n, pattern) for n in names), (arch, pattern)
    subset = ParameterSubset.select(model, DEFAULT_SUBSET[arch])
    n_total = sum(p.numel() for p in model.parameters())
    assert 0 < subset.numel < n_total


def test_every_arch_has_a_default_subset():
    assert set(DEFAULT_SUBSET) == set(ARCHS)


def test_mlp_widths_on_digits():
    numbers = {arch: sum(p.numel() for p in build_model(arch, channels=1, classes=10, image_size=8).parameters())
               for arch in ("mlp", "mlp_wide")}
    assert numbers == {"mlp": 8_970, "mlp_wide": 85_002}  # 2 w^2 + 76 w + 10 for width w = 64, 256


def test_resnet18_default_subset_is_the_papers():
    model = build_model("resnet18", channels=3, classes=10, image_size=32)
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["resnet18"])
    assert subset.names == ("layer4.1.bn1.weight", "layer4.1.bn1.bias", "layer4.1.bn2.weight", "layer4.1.bn2.bias")
    assert subset.numel == 2048


def test_resnet_cifar_stem_keeps_resolution():
    small = build_model("resnet18", channels=3, classes=10, image_size=32)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    big = build_model("resnet18", channels=1, classes=10, image_size=96)
    assert big.conv1.stride == (2, 2) and big.conv1.in_channels == 1


def test_seed_makes_init_reproducible():
    a = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=5)
    b = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=5)
    c = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=6)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_arch_lists_known_ones():
    with pytest.raises(ValueError) as err:
        build_model("resnet1000", channels=3, classes=10, image_size=32)
    msg = str(err.value)
    assert "resnet1000" in msg
    for arch in ARCHS:
        assert arch in msg
