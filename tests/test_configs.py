"""The config dataclasses check their own fields (`__post_init__`): the library is safe without the
orchestrator, and a bad value raises a ValueError whose message starts with the field's name."""

from __future__ import annotations

import pytest

from pdiff import AEConfig, CollectConfig, LDMConfig, PdiffConfig, TrainConfig
from pdiff.checks import ConfigError
from pdiff.pipeline import KNOBS

BAD = [
    (TrainConfig, {"lr": -1}, "lr", "expected a positive number (> 0), got -1"),
    (TrainConfig, {"lr": float("nan")}, "lr", "finite"),
    (TrainConfig, {"epochs": 0}, "epochs", "> 0"),
    (TrainConfig, {"epochs": 2.5}, "epochs", "expected an integer, got 2.5"),
    (TrainConfig, {"batch_size": True}, "batch_size", "expected an integer, got True"),
    (TrainConfig, {"weight_decay": -1e-4}, "weight_decay", ">= 0"),
    (TrainConfig, {"optimizer": "adam"}, "optimizer", "expected one of sgd, adamw, got 'adam'"),
    (TrainConfig, {"schedule": "linear"}, "schedule", "cosine"),
    (TrainConfig, {"augment": 1}, "augment", "true or false"),
    (CollectConfig, {"k": 0}, "k", "> 0"),
    (CollectConfig, {"interval": -3}, "interval", "> 0"),
    (CollectConfig, {"unit": "hour"}, "unit", "expected one of step, epoch, got 'hour'"),
    (CollectConfig, {"lr": 10**400}, "lr", "expected a finite number, got an integer of about 401 digits"),
    (CollectConfig, {"optimizer": "lion"}, "optimizer", "lion"),
    (AEConfig, {"latent_dim": 0}, "latent_dim", "> 0"),
    (AEConfig, {"latent_noise": -0.1}, "latent_noise", ">= 0"),
    (AEConfig, {"input_noise": float("inf")}, "input_noise", "finite"),
    (AEConfig, {"channels": ()}, "channels", "at least one stage"),
    (AEConfig, {"channels": (8, 0)}, "channels[1]", "got 0"),
    (AEConfig, {"channels": 64}, "channels", "list of channel counts"),
    (AEConfig, {"min_r2": 0}, "min_r2", "(0, 1]"),
    (AEConfig, {"min_fidelity": 1.5}, "min_fidelity", "[0, 1]"),
    (AEConfig, {"normalize": "layer"}, "normalize", "global, tensor"),
    (AEConfig, {"token_size": 0}, "token_size", "> 0"),
    (AEConfig, {"check_every": 0}, "check_every", "> 0"),
    (LDMConfig, {"timesteps": 0}, "timesteps", "> 0"),
    (LDMConfig, {"beta_end": 1.0}, "beta_end", "(0, 1)"),
    (LDMConfig, {"beta_start": 0.05}, "beta_end", ">= beta_start"),
    (LDMConfig, {"ema_decay": 1.5}, "ema_decay", "[0, 1]"),
    (LDMConfig, {"channels": (32, "64")}, "channels[1]", "'64'"),
    (LDMConfig, {"lr": 0}, "lr", "> 0"),
    (PdiffConfig, {"n_generated": 0}, "n_generated", "> 0"),
    (PdiffConfig, {"sampler": "euler"}, "sampler", "expected one of ddpm, ddim, got 'euler'"),
    (PdiffConfig, {"sample_steps": 0}, "sample_steps", "> 0"),
    (PdiffConfig, {"sample_steps": "all"}, "sample_steps", "or None"),
    (PdiffConfig, {"ae": {"latent_dim": 8}}, "ae", "AEConfig"),
]


@pytest.mark.parametrize("cls, kwargs, field, fragment", BAD,
                         ids=[f"{c.__name__}-{f}-{list(k.values())[0]!r}"[:60] for c, k, f, _ in BAD])
def test_a_bad_value_names_the_field(cls, kwargs, field, fragment):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith(f"{field}: "), str(info.value)
    assert fragment in info.value.message, str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_the_defaults_and_edge_values_are_valid():
    for cls in (TrainConfig, CollectConfig, AEConfig, LDMConfig, PdiffConfig):
        cls()
    TrainConfig(weight_decay=0, lr=1)  # an int is a number; zero weight decay is no weight decay
    AEConfig(input_noise=0.0, latent_noise=0.0, min_r2=1, min_fidelity=0, channels=[8])  # the paper's ablation
    LDMConfig(ema_decay=0.0, timesteps=1, beta_start=0.01, beta_end=0.01)
    PdiffConfig(sampler="ddim", sample_steps=None)


def test_from_knobs_names_the_knob_not_the_field():
    """`ae_steps: ...`, not `steps: ...`: the knob a sweep spec or a caller wrote."""
    for knob, value, shown in [("ae_steps", 0, "ae_steps"), ("ldm_steps", -1, "ldm_steps"), ("ae_lr", -1, "ae_lr"),
                               ("ldm_channels", [8, 0], "ldm_channels[1]"), ("normalize", "x", "normalize"),
                               ("ae_min_fidelity", 2, "ae_min_fidelity"), ("sample_steps", 0, "sample_steps")]:
        assert knob in KNOBS
        with pytest.raises(ConfigError) as info:
            PdiffConfig.from_knobs(**{knob: value})
        assert str(info.value).startswith(f"{shown}: "), str(info.value)
        assert info.value.field == knob


def test_dataclasses_replace_is_checked_too():
    import dataclasses

    with pytest.raises(ConfigError, match=r"^k: "):
        dataclasses.replace(CollectConfig(), k=-1)


def test_the_orchestrators_dataclasses_check_themselves_too():
    from orchestrator.spec import Distribution, Resources

    for make, field in [(lambda: Resources(cpus=0), "cpus"), (lambda: Resources(gpus=1.5), "gpus"),
                        (lambda: Resources(workers=0), "workers"), (lambda: Distribution("normal", 0, 1), "type"),
                        (lambda: Distribution("loguniform", 0.0, 1.0), "low"),
                        (lambda: Distribution("choice", values=()), "values")]:
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.field == field, str(info.value)
    with pytest.raises(ConfigError, match="impossible range"):
        Distribution("uniform", 0.5, 0.1)
