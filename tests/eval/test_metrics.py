"""Each metric against a hand computation on small arrays."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from llm_unlearn.eval import metrics as M


def test_probability_is_exp_of_minus_mean_loss():
    per_item, agg = M.probability([0.0, math.log(2)])
    np.testing.assert_allclose(per_item, [1.0, 0.5])
    assert agg == pytest.approx(0.75)


def test_normalised_probability():
    # P(true) = 1/2, perturbed 1/4 + 1/8 -> 0.5 / (0.5 + 0.375)
    per_item, agg = M.normalised_probability([math.log(2)], [[math.log(4), math.log(8)]])
    assert per_item[0] == pytest.approx(0.5 / 0.875)
    assert agg == pytest.approx(0.5 / 0.875)


def test_truth_ratio_is_geometric_mean_over_perturbed_divided_by_correct():
    r = M.truth_ratios([1.0, 0.5], [[2.0, 4.0], [0.5, 0.5, 0.5]])
    # geometric mean of exp(-2), exp(-4) = exp(-3); / exp(-1) -> exp(-2)
    np.testing.assert_allclose(r, [math.exp(-2.0), 1.0])


def test_truth_ratio_scores():
    assert M.forget_truth_ratio_score([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert M.utility_truth_ratio_score([0.25, 2.0]) == pytest.approx((0.75 + 0.0) / 2)


def test_forget_quality_identical_distributions_is_one():
    x = np.array([0.1, 0.5, 0.7, 1.3, 2.0])
    assert M.forget_quality(x, x.copy())["pvalue"] == 1.0


def test_forget_quality_floor_exact_small_samples():
    # n = m = 3, exact two-sided KS: complete separation has p = 2 / C(6, 3) = 0.1
    assert M.ks_floor_pvalue(3, 3) == pytest.approx(0.1)
    fq = M.forget_quality([1.0, 2.0, 3.0], [10.0, 11.0, 12.0])
    assert fq["statistic"] == 1.0
    assert fq["pvalue"] == pytest.approx(fq["floor"])


def test_model_utility_is_harmonic_mean_of_nine():
    vals = {f"{s}_{m}": 0.5 for s in M.UTILITY_SPLITS for m in M.UTILITY_MEASURES}
    vals["world_facts_truth_ratio"] = 1.0
    assert M.model_utility(vals) == pytest.approx(9 / (8 * 2 + 1))
    vals["retain_probability"] = 0.0
    assert M.model_utility(vals) == 0.0
    del vals["retain_probability"]
    with pytest.raises(KeyError):
        M.model_utility(vals)


def test_rouge_l_recall_uses_stemming():
    # LCS of "the cats sat" with "the cat sat on mat" (cats -> cat) = 3 of 5 reference tokens
    np.testing.assert_allclose(M.rouge_l_recall(["the cats sat"], ["the cat sat on mat"]), [0.6])


def test_min_k_and_min_k_plus_plus():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert M.min_k_score(lp, 0.4) == pytest.approx(4.5)  # lowest 2 of 5
    assert M.min_k_score(lp, 0.1) == pytest.approx(5.0)  # at least one token
    assert M.min_k_plus_plus_score(lp, [0.0] * 5, [1.0] * 5, 0.4) == pytest.approx(4.5)
    # z = (lp + 1) / 2 = [0, -.5, -1, -1.5, -2]; lowest two mean -1.75
    assert M.min_k_plus_plus_score(lp, [-1.0] * 5, [2.0] * 5, 0.4) == pytest.approx(1.75)


def test_zlib_and_loss_scores():
    text = "aaaa aaaa aaaa"
    assert M.mia_zlib_scores([2.0], [text])[0] == pytest.approx(2.0 / len(zlib.compress(text.encode())))
    np.testing.assert_allclose(M.mia_loss_scores([0.3, 0.7]), [0.3, 0.7])


def test_mia_auc_convention_and_ties():
    assert M.mia_auc([1.0, 2.0], [3.0, 4.0]) == 1.0  # forget looks seen (lower loss)
    assert M.mia_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert M.mia_auc([1.0], [1.0]) == 0.5
    assert M.mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)


def test_privleak():
    assert M.privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)
    assert M.privleak(0.5, 0.5) == 0.0
