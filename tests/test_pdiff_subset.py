"""pdiff.subset: flatten / load / unflatten round trips and the functional call."""

from __future__ import annotations

import copy

import pytest
import torch

from pdiff import DEFAULT_SUBSET, ParameterSubset, build_model


@pytest.fixture
def model():
    return build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0).eval()


@pytest.fixture
def subset(model):
    return ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])


def test_select_order_and_sizes(model, subset):
    assert subset.names == ("bn2.weight", "bn2.bias", "fc.weight", "fc.bias")
    assert subset.sizes == (32, 32, 320, 10)
    assert subset.numel == 394
    assert subset.shapes[2] == torch.Size([10, 32])


def test_flatten_load_round_trip_is_exact(model, subset):
    vector = subset.flatten(model)
    assert vector.shape == (subset.numel,) and vector.dtype == torch.float32
    assert torch.equal(vector[:32], model.bn2.weight.detach())
    assert torch.equal(vector[-10:], model.fc.bias.detach())

    other = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=1)
    assert not torch.equal(subset.flatten(other), vector)
    conv_before = other.conv1.weight.detach().clone()
    subset.load(other, vector)
    assert torch.equal(subset.flatten(other), vector)
    assert torch.equal(other.fc.weight, model.fc.weight)
    assert torch.equal(other.conv1.weight, conv_before)  # outside the subset: untouched

    named = subset.unflatten(vector)
    assert list(named) == list(subset.names)
    for name, p in model.named_parameters():
        if name in named:
            assert torch.equal(named[name], p.detach())


def test_unflatten_keeps_batch_dims(subset):
    vectors = torch.randn(5, 3, subset.numel)
    named = subset.unflatten(vectors)
    assert named["fc.weight"].shape == (5, 3, 10, 32)
    assert named["bn2.bias"].shape == (5, 3, 32)
    assert torch.equal(named["fc.bias"], vectors[..., -10:])
    flat_again = torch.cat([t.reshape(5, 3, -1) for t in named.values()], dim=-1)
    assert torch.equal(flat_again, vectors)


def test_unflatten_wrong_length(subset):
    with pytest.raises(ValueError, match=r"393 entries.*394"):
        subset.unflatten(torch.zeros(393))
    with pytest.raises(ValueError):
        subset.load(build_model("cnn_small", channels=1, classes=10, image_size=8), torch.zeros(2, 395))


def test_functional_call_equals_load_then_forward(model, subset):
    x = torch.randn(6, 1, 8, 8)
    vector = subset.flatten(model) + 0.1 * torch.randn(subset.numel)
    before = copy.deepcopy(model.state_dict())
    out = subset.call(model, vector, x)
    for k, v in model.state_dict().items():  # the model itself is not touched
        assert torch.equal(v, before[k])
    loaded = copy.deepcopy(model)
    subset.load(loaded, vector)
    with torch.no_grad():
        ref = loaded(x)
        plain = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(out, plain)  # the vector really was used


def test_pattern_matching_nothing(model):
    with pytest.raises(ValueError) as err:
        ParameterSubset.select(model, ["fc.*", "layer9.*"])
    assert "layer9.*" in str(err.value)
    assert "fc.*" not in str(err.value).split("match no parameter")[0]


def test_freeze_others(model, subset):
    subset.freeze_others(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(subset.names)
