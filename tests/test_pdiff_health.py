"""pdiff.health: the stage-1 gate, one signal at a time at and beside its threshold, and on a real collection
that diverges (cnn_small's middle convolution at the source's own lr, issue 16)."""

from __future__ import annotations

import pytest

from pdiff.health import DIVERGENCE_FACTOR, MAX_ACC_DROP, Health, collection_health, loss_problem

CALM = [0.5, 0.4, 0.3, 0.3] * 10  # a collection loss that stays where it started
DIVERSE = dict(pairwise_iou=0.45, distinct_sets=100)  # snapshots unlike each other


def _health(source: float, snapshots: list[float], losses=CALM, **kw) -> Health:
    return collection_health(source, snapshots, losses, **(DIVERSE | kw))


# -- accuracy ---------------------------------------------------------------------------------------------

def test_healthy_just_within_the_accuracy_drop_and_failed_just_beyond():
    assert _health(0.975, [0.926] * 10) == Health("healthy")  # 4.9 points below
    failed = _health(0.975, [0.924] * 10)  # 5.1 points below
    assert failed.status == "failed", failed
    assert "92.4%" in failed.reason and "97.5%" in failed.reason and f"{MAX_ACC_DROP:g} points" in failed.reason


def test_the_accuracy_drop_is_the_mean_over_the_snapshots_and_exactly_max_acc_drop_is_allowed():
    # Binary-exact figures: 1 - 0.9375 = 0.0625 = 6.25 points, with no rounding on the way.
    assert _health(1.0, [0.875, 1.0], max_acc_drop=6.25).status == "healthy"
    assert _health(1.0, [0.875, 1.0 - 2 ** -20], max_acc_drop=6.25).status == "failed"
    assert _health(1.0, [0.9375] * 3, max_acc_drop=6.25 - 2 ** -20).status == "failed"  # the knob is honoured


def test_snapshots_better_than_their_source_are_healthy():
    assert _health(0.90, [0.99] * 5).status == "healthy"


def test_the_reason_names_the_figures_to_compare():
    reason = _health(0.975, [0.129] * 4).reason
    assert reason.startswith("collection diverged") and "12.9%" in reason and "97.5%" in reason


# -- the collection's loss --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_alone_fails(bad):
    losses = CALM[:7] + [bad] + CALM[8:]
    h = _health(0.97, [0.97] * 10, losses)  # accuracy unchanged: the loss alone decides
    assert h.status == "failed" and "non-finite at step 7" in h.reason, h


def test_an_exploding_loss_alone_fails_at_the_divergence_factor_and_not_below():
    start = 0.25  # binary-exact, so that the product below is the threshold itself
    at = [start] + [DIVERGENCE_FACTOR * start] * 20  # the tail's mean exactly DIVERGENCE_FACTOR x the start
    assert _health(0.97, [0.97] * 10, at).status == "healthy"
    beyond = [start] + [DIVERGENCE_FACTOR * start * 1.01] * 20
    h = _health(0.97, [0.97] * 10, beyond)
    assert h.status == "failed" and "grew from 0.25 to" in h.reason and "97.0%" in h.reason, h


def test_loss_problem_judges_the_tail_not_a_spike():
    spike = [1.0] * 5 + [1e6] + [1.0] * 20  # one bad step, then back: the last 20 steps are calm
    assert loss_problem(spike, "collection") is None
    assert loss_problem([], "collection") is None
    assert "non-finite at step 0" in loss_problem([float("nan")], "x")


# -- too uniform to measure novelty ----------------------------------------------------------------------

def test_uniform_by_pairwise_iou_alone_and_by_distinct_sets_alone():
    h = _health(0.97, [0.97] * 10, pairwise_iou=0.99, distinct_sets=100)
    assert h.status == "uniform" and "novelty unmeasurable" in h.reason and "0.990" in h.reason
    h = _health(0.97, [0.97] * 10, pairwise_iou=0.3, distinct_sets=4)
    assert h.status == "uniform" and "4 distinct mistake sets" in h.reason
    assert _health(0.97, [0.97] * 10, pairwise_iou=0.989, distinct_sets=5).status == "healthy"


def test_a_diverged_collection_is_failed_even_when_its_snapshots_are_uniform():
    assert _health(0.97, [0.10] * 10, pairwise_iou=1.0, distinct_sets=1).status == "failed"


# -- a real collection ------------------------------------------------------------------------------------

def _collect(collected, monkeypatch, lr: float):
    """`collect` as stage 1 runs it (cnn_small, subset conv2.*, K=20 every step), with the session's trained
    source loaded instead of trained again."""
    import pdiff.collect as collect_module
    from pdiff import CollectConfig, ParameterSubset, TrainConfig, build_model

    def trained(model, data, cfg, *, seed, log):
        model.load_state_dict(collected.source.state_dict())
        return collected.collection.test_acc

    monkeypatch.setattr(collect_module, "train_source", trained)
    model = build_model("cnn_small", channels=1, classes=10, image_size=8, seed=0)
    subset = ParameterSubset.select(model, ("conv2.*",))
    return collect_module.collect(model, subset, collected.data, TrainConfig(epochs=1, batch_size=64),
                                  CollectConfig(k=20, interval=1, lr=lr), seed=0, log=lambda _: None)


def test_a_collection_at_the_sources_lr_diverges_and_fails(collected, monkeypatch):
    c = _collect(collected, monkeypatch, lr=0.05)
    source, snapshots = float(c.source_scores.val_acc[0]), float(c.scores.val_acc.mean())
    assert source > 0.9 and snapshots < 0.6, (source, snapshots)  # it really diverged
    assert len(c.losses) == 20
    h = c.health()
    assert h.status == "failed" and "collection diverged" in h.reason, h
    assert f"{100 * source:.1f}%" in h.reason and f"{100 * snapshots:.1f}%" in h.reason


def test_the_same_collection_at_a_small_lr_is_healthy(collected, monkeypatch):
    c = _collect(collected, monkeypatch, lr=0.005)
    assert c.health() == Health("healthy"), (c.source_scores.val_acc, c.scores.val_acc)
