"""Whole networks through the library (CPU, offline): `WHOLE_NETWORK` names every parameter of every
architecture, the batched evaluator scores N whole networks (no shared prefix to run once), and a whole
cnn_small goes collect -> AE -> LDM -> generate -> evaluate, its generated vectors turning into working
networks only together with the BatchNorm buffers kept from the source (`ParameterSubset.frozen_state`)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pdiff import ARCHS, CollectConfig, ParameterSubset, PdiffConfig, TrainConfig, build_model
from pdiff.collect import collect_snapshots, train_source
from pdiff.evaluate import BatchedEvaluator
from pdiff.pipeline import run_pdiff
from pdiff.autoencoder import build_autoencoder
from pdiff.subset import WHOLE_NETWORK

from conftest import TINY_TRAIN, _quiet


def _calibrated(arch: str, channels: int = 1, classes: int = 10, size: int = 8) -> nn.Module:
    """An untrained network whose BatchNorm buffers are realistic (not the 0 / 1 defaults)."""
    model = build_model(arch, channels=channels, classes=classes, image_size=size, seed=0).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average over the one batch
    with torch.no_grad():
        model(torch.randn(16, channels, size, size, generator=torch.Generator().manual_seed(0)))
    return model.eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_whole_network_names_every_parameter_and_keeps_the_buffers_apart(arch):
    model = _calibrated(arch)
    subset = ParameterSubset.select(model, WHOLE_NETWORK)
    assert subset.names == tuple(n for n, _ in model.named_parameters())
    assert subset.numel == sum(p.numel() for p in model.parameters())
    state = subset.frozen_state(model)
    assert set(state) == {n for n, _ in model.named_buffers()}  # a whole network's frozen state: its buffers
    rebuilt = subset.assemble(build_model(arch, channels=1, classes=10, image_size=8, seed=1), state,
                              subset.flatten(model))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_evaluator_scores_whole_networks(arch):
    model = _calibrated(arch)
    subset = ParameterSubset.select(model, WHOLE_NETWORK)
    g = torch.Generator().manual_seed(1)
    vectors = subset.flatten(model) + 0.02 * torch.randn(2, subset.numel, generator=g)
    x = torch.randn(3, 1, 8, 8, generator=g)
    evaluator = BatchedEvaluator(copy.deepcopy(model), subset, batch_size=2, vectors_per_pass=1)
    logits = evaluator.logits(vectors, x)
    ref = []
    for v in vectors:  # one network at a time, the plain forward pass
        subset.load(model, v)
        with torch.no_grad():
            ref.append(model(x))
    ref = torch.stack(ref)
    assert logits.shape == ref.shape == (2, 3, 10)
    assert (logits - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert not torch.allclose(ref[0], ref[1], atol=1e-4)  # the two vectors differ in effect


def test_whole_cnn_generates_networks_that_work_with_the_kept_buffers(digits):
    source = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0)
    torch.manual_seed(0)
    train_source(source, digits, TrainConfig(**TINY_TRAIN), seed=0, log=_quiet)
    model = copy.deepcopy(source)
    subset = ParameterSubset.select(model, WHOLE_NETWORK)
    snapshots = collect_snapshots(model, subset, digits, CollectConfig(k=32, interval=2, lr=0.01), seed=0,
                                  batch_size=64, log=_quiet)
    assert snapshots.shape == (32, 5178)
    cell_state = subset.frozen_state(model)  # what the cell stores beside its snapshots
    for name, buffer in source.named_buffers():  # eval-mode collection keeps the source's buffers
        assert torch.equal(cell_state[name], buffer), name

    evaluator = BatchedEvaluator(model, subset)
    snapshot_scores = evaluator.score(snapshots, digits)
    # The fidelity gate is off: these 32 snapshots of a whole network at lr 0.01 each make their own
    # mistakes, and reconstructing every one exactly takes longer than a test may.
    cfg = PdiffConfig.from_knobs(latent_dim=32, ae_steps=1000, ae_min_fidelity=0.0, ldm_channels=(64, 64),
                                 ldm_steps=200, n_generated=8, sampler="ddim", sample_steps=20)
    run = run_pdiff(snapshots, evaluator, digits, snapshot_scores, cfg, seed=0)
    generated = run.generated
    assert run.ae_converged and run.ae_r2 >= 0.95, (run.ae_steps, run.ae_r2)
    snap_acc = float(snapshot_scores.test_acc.mean())
    assert float(generated.scores.test_acc.mean()) >= snap_acc - 0.05 and snap_acc > 0.85

    # Each generated vector, with the cell's state, is a standalone network making exactly the mistakes the
    # batched evaluator scored; with a fresh network's default buffers instead, it is a different network.
    for vector, wrong in zip(generated.vectors, generated.scores.test_wrong):
        net = subset.assemble(build_model("cnn_small", channels=1, classes=10, image_size=8, seed=7), cell_state,
                              vector)
        with torch.no_grad():
            assert torch.equal(net(digits.test.x).argmax(-1) != digits.test.y, wrong)
    fresh = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=7)
    default_buffers = {n: b for n, b in fresh.state_dict().items() if n in cell_state}
    net = subset.assemble(fresh, default_buffers, generated.vectors[0])
    with torch.no_grad():
        acc = float((net(digits.test.x).argmax(-1) == digits.test.y).float().mean())
    assert acc < float(generated.scores.test_acc[0]) - 0.1


@pytest.mark.parametrize("arch, cls", [("chunked", "ChunkedAutoencoder"), ("conv", "ParameterAutoencoder")])
def test_the_ae_arch_knob_picks_the_autoencoder(arch, cls):
    cfg = PdiffConfig.from_knobs(ae_arch=arch, latent_dim=8, ae_channels=(8, 8), ae_token_size=8)
    assert type(build_autoencoder(300, cfg.ae)).__name__ == cls
    assert PdiffConfig().ae.arch == "chunked"  # the default: linear in the subset's size
    with pytest.raises(ValueError, match="ae_arch: .*conv"):
        PdiffConfig.from_knobs(ae_arch="transformer")
