"""pdiff.verdicts: each rule one signal at a time, at and beside its threshold (issue 16, part 5)."""

from __future__ import annotations

import pytest

from pdiff.verdicts import (COLLAPSE_IOU, COLLAPSE_SPREAD, COMPARISONS, UNIFORM_DISTINCT, UNIFORM_IOU, VERDICTS,
                            comparison, family_verdict, is_collapsed, snapshots_uniform)

NAN = float("nan")


# -- collapse: either signal alone is enough -------------------------------------------------------------

def test_is_collapsed_by_pairwise_iou_alone():
    assert is_collapsed(COLLAPSE_IOU, 1.0)  # at the threshold, with the snapshots' own spread
    assert not is_collapsed(COLLAPSE_IOU - 1e-6, 1.0)


def test_is_collapsed_by_spread_alone():
    assert is_collapsed(0.3, COLLAPSE_SPREAD - 1e-6)  # with a low pairwise IoU
    assert not is_collapsed(0.3, COLLAPSE_SPREAD)  # "below" is strict: at the threshold it is a family


# -- memorising / novel ------------------------------------------------------------------------------------

def test_family_verdict_collapsed_wins_over_everything():
    assert family_verdict(True, 0.1, 0.9) == "collapsed"  # would be novel
    assert family_verdict(True, 0.99, 0.9) == "collapsed"  # would be memorising
    assert family_verdict(True, None, None) == "collapsed"  # a collapsed family needs no novelty figures


def test_family_verdict_memorising_at_the_snapshots_own_figure_and_novel_just_below():
    loo = 0.85
    assert family_verdict(False, loo, loo) == "memorising"
    assert family_verdict(False, loo + 0.01, loo) == "memorising"
    assert family_verdict(False, loo - 1e-9, loo) == "novel"


@pytest.mark.parametrize("collapsed, max_iou, loo", [(None, 0.5, 0.9), (NAN, 0.5, 0.9), (False, None, 0.9),
                                                     (False, 0.5, None), (False, NAN, 0.9), (False, 0.5, NAN)])
def test_family_verdict_is_none_on_a_missing_signal(collapsed, max_iou, loo):
    assert family_verdict(collapsed, max_iou, loo) is None


def test_verdict_words_are_declared():
    assert {family_verdict(True, 0, 0), family_verdict(False, 1, 0), family_verdict(False, 0, 1)} == set(VERDICTS)


# -- snapshots too alike to measure novelty against --------------------------------------------------------

def test_snapshots_uniform_by_pairwise_iou_alone():
    assert snapshots_uniform(UNIFORM_IOU, 100)
    assert not snapshots_uniform(UNIFORM_IOU - 1e-6, 100)


def test_snapshots_uniform_by_distinct_sets_alone():
    assert snapshots_uniform(0.3, UNIFORM_DISTINCT - 1)
    assert not snapshots_uniform(0.3, UNIFORM_DISTINCT)


# -- two families, from the 95% intervals of A - B --------------------------------------------------------

UP, DOWN, ZERO, TOUCH_UP, TOUCH_DOWN = (0.5, 2.0), (-2.0, -0.5), (-1.0, 1.0), (0.0, 1.0), (-1.0, 0.0)


@pytest.mark.parametrize("acc, iou, word", [
    (UP, DOWN, "dominates"),  # more accurate and nearer none of the snapshots
    (ZERO, DOWN, "more novel"),
    (UP, ZERO, "more accurate"),
    (ZERO, ZERO, "tie"),
    (UP, UP, "trade-off"),  # more accurate, less novel
    (DOWN, DOWN, "trade-off"),  # more novel, less accurate
    (DOWN, ZERO, "worse"),
    (ZERO, UP, "worse"),
    (DOWN, UP, "worse"),
    # An interval that touches zero does not exclude it: no claim.
    (TOUCH_UP, ZERO, "tie"),
    (TOUCH_DOWN, ZERO, "tie"),
    (ZERO, TOUCH_DOWN, "tie"),
    (ZERO, TOUCH_UP, "tie"),
    (TOUCH_UP, TOUCH_DOWN, "tie"),
    ((0.0, 0.0), (0.0, 0.0), "tie"),
])
def test_comparison_words(acc, iou, word):
    assert comparison(*acc, *iou) == word
    assert word in COMPARISONS


def test_comparison_is_none_on_a_missing_bound():
    assert comparison(NAN, 1.0, -1.0, 1.0) is None
    assert comparison(0.5, 1.0, -2.0, None) is None


def test_every_comparison_word_is_reachable():
    bounds = (UP, DOWN, ZERO)
    assert {comparison(*a, *i) for a in bounds for i in bounds} == set(COMPARISONS)
