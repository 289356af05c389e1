"""Shared fixtures for the pdiff tests: CPU only, offline, tiny.

The expensive pieces (the digits dataset, a trained cnn_small source and a small
collection of snapshots) are built once per session. Tests that change a model
work on a deep copy of it, never on the shared one.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass

import pytest
import torch

# One intra-op thread by default. These models are tiny, so a second thread buys
# little on a quiet machine, and on a busy one (Ray workers from other tests, a
# sweep running beside the suite) two threads that must meet at every op's
# barrier made the suite >10x slower (6m50s instead of 31s, measured on 2 cores).
torch.set_num_threads(int(os.environ.get("PDIFF_TEST_THREADS", "1")))

# The plan's cost estimate reads throughputs cached per machine (orchestrator.runtime.calibrate): the suite
# starts from an empty cache of its own, so no test depends on what this machine measured before.
os.environ["PDIFF_SWEEP_CACHE"] = tempfile.mkdtemp(prefix="pdiff-sweep-cache-")

# Small enough for 2 CPU cores, large enough that the method works on digits.
TINY_TRAIN = dict(epochs=10, batch_size=64, lr=0.05)
TINY_COLLECT = dict(k=32, interval=2, lr=0.05)
TINY_KNOBS = dict(
    latent_dim=32, ae_channels=(32, 64, 64), ae_steps=2000,  # ae_steps: the bound; it stops on quality
    ldm_channels=(32, 64), ldm_steps=150, n_generated=12, sampler="ddim", sample_steps=20,
)


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Collected:
    """The session's digits / cnn_small collection, plus a copy of the source before collection."""

    data: object  # pdiff.data.Dataset
    source: torch.nn.Module  # trained source model, before any subset training (do not mutate)
    collection: object  # pdiff.collect.Collection (its model has been through collection: do not mutate)

    def fresh_source(self) -> torch.nn.Module:
        return copy.deepcopy(self.source)


@pytest.fixture(scope="session")
def digits():
    from pdiff import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def collected(digits) -> Collected:
    from pdiff import DEFAULT_SUBSET, CollectConfig, ParameterSubset, TrainConfig, build_model
    from pdiff.collect import collect, train_source

    # The source on its own (the same recipe and seed as inside `collect`), kept
    # untouched for tests that need the model before collection.
    source = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0)
    torch.manual_seed(0)
    train_source(source, digits, TrainConfig(**TINY_TRAIN), seed=0, log=_quiet)

    model = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0)
    subset = ParameterSubset.select(model, DEFAULT_SUBSET["cnn_small"])
    collection = collect(model, subset, digits, TrainConfig(**TINY_TRAIN), CollectConfig(**TINY_COLLECT),
                         seed=0, log=_quiet)
    return Collected(digits, source.eval(), collection)


@pytest.fixture(scope="session")
def evaluator(collected):
    from pdiff.evaluate import BatchedEvaluator

    c = collected.collection
    return BatchedEvaluator(copy.deepcopy(c.model), c.subset)
from tiny_sweep import finished_run, finished_sweep, tiny_spec  # noqa: E402,F401  (the shared tiny sweep)


def unavailable(reason: str) -> None:
    """A test tier that cannot run here (no root, no namespaces, no chromium, no disk): skipped on a
    developer's machine, but a failure under CI (`CI=true`), so that a green CI means every tier ran."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and this tier cannot run here: {reason}", pytrace=False)
    pytest.skip(reason)
