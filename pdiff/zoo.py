"""Architectures by name, sized for a dataset (channels, classes, image size).

Where the forward pass is a plain chain, the model is returned as an
`nn.Sequential` with the original parameter names (``layer4.1.bn1.weight``).
That lets `pdiff.evaluate` run the frozen prefix of the chain once and only the
part after the first generated layer once per parameter vector.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

__all__ = ["ARCHS", "DEFAULT_SUBSET", "build_model", "mlp"]


def _resnet(depth: int) -> Callable[[int, int, int], nn.Module]:
    def build(channels: int, classes: int, image_size: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(num_classes=classes)
        if image_size <= 64:
            # CIFAR-style stem: a 3x3 stride-1 conv and no max-pool, so that a 32x32
            # image is not reduced to 8x8 before the first residual stage.
            net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
        parts = OrderedDict((n, getattr(net, n)) for n in names)
        parts["flatten"] = nn.Flatten(1)
        parts["fc"] = net.fc
        return nn.Sequential(parts)

    return build


def _convnext_tiny(channels: int, classes: int, image_size: int) -> nn.Module:
    import torchvision

    net = torchvision.models.convnext_tiny(num_classes=classes)
    stem = net.features[0][0]
    # The ImageNet stem is a 4x4 stride-4 patchify; small images keep full resolution.
    patch = 4 if image_size > 64 else 1
    net.features[0][0] = nn.Conv2d(channels, stem.out_channels, patch, stride=patch)
    return nn.Sequential(OrderedDict(features=net.features, avgpool=net.avgpool, classifier=net.classifier))


def _vit_tiny(channels: int, classes: int, image_size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    patch = next(p for p in (16, 8, 4, 2, 1) if image_size % p == 0 and image_size // p >= 4)
    net = VisionTransformer(
        image_size=image_size, patch_size=patch, num_layers=12, num_heads=3,
        hidden_dim=192, mlp_dim=768, num_classes=classes,
    )
    if channels != 3:
        net.conv_proj = nn.Conv2d(channels, 192, patch, stride=patch)
    return net  # not a plain chain: evaluated whole, once per vector


def _cnn_small(channels: int, classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(channels, 16, 3, padding=1, bias=False),
        bn1=nn.BatchNorm2d(16),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(16, 32, 3, padding=1, bias=False),
        bn2=nn.BatchNorm2d(32),
        relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(1),
        fc=nn.Linear(32, classes),
    ))


def mlp(width: int) -> Callable[[int, int, int], nn.Module]:
    """A builder of the three-layer MLP with `width` hidden units per layer: on digits (64 pixels, 10
    classes) 2 * width**2 + 76 * width + 10 parameters (width 64: 8,970; width 256: 85,002)."""

    def build(channels: int, classes: int, image_size: int) -> nn.Module:
        return nn.Sequential(OrderedDict(
            flatten=nn.Flatten(1),
            fc1=nn.Linear(channels * image_size * image_size, width),
            relu1=nn.ReLU(),
            fc2=nn.Linear(width, width),
            relu2=nn.ReLU(),
            fc3=nn.Linear(width, classes),
        ))

    return build


ARCHS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "vit_tiny": _vit_tiny,
    "convnext_tiny": _convnext_tiny,
    "cnn_small": _cnn_small,
    "mlp": mlp(64),
    "mlp_wide": mlp(256),  # the same MLP 4x wider: ~85k parameters on digits, for whole-network scale tests
}

# The generated subset when a sweep names none (fnmatch patterns over parameter names).
# ResNets follow the paper: the last two BatchNorm layers, weight and bias.
# ["*"] (pdiff.subset.WHOLE_NETWORK) names every parameter of any of these architectures: the whole network.
DEFAULT_SUBSET: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer4.1.bn1.*", "layer4.1.bn2.*"),
    "resnet50": ("layer4.2.bn2.*", "layer4.2.bn3.*"),
    "vit_tiny": ("encoder.ln.*", "heads.head.*"),
    "convnext_tiny": ("classifier.*",),
    "cnn_small": ("bn2.*", "fc.*"),
    "mlp": ("fc3.*",),
    "mlp_wide": ("fc3.*",),
}


def build_model(arch: str, *, channels: int, classes: int, image_size: int, seed: int | None = None) -> nn.Module:
    """Build an untrained network for images of the given shape and class count."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known architectures: {', '.join(ARCHS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return ARCHS[arch](channels, classes, image_size)
