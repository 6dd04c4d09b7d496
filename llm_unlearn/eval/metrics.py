"""TOFU metrics as pure functions over per-item values (no model is run here).

Definitions follow TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs",
Sec. 2.5 and the authors' ``aggregate_eval_stat.py``) so that the published aggregates of the
reference logs are reproduced exactly, and MUSE (Shi et al., 2024) / open-unlearning for the
membership-inference numbers (LOSS, zlib, Min-K% of Shi et al. 2024, Min-K%++ of Zhang et al.
2024, privleak).

Conventions (every function below states its own):

* losses are per-item *mean* answer-token negative log-likelihoods (natural log), so a
  probability is ``exp(-loss)``, the length-normalised probability TOFU uses;
* a per-item truth ratio is ``R = P(perturbed)^ / P(correct)`` with ``P(perturbed)^`` the
  geometric mean over the perturbed answers, i.e. ``R = exp(L_correct - mean_j L_perturbed_j)``
  (this is the value TOFU's logs store under ``truth_ratio``);
* membership scores are "higher = more likely a non-member" (loss-like), and an AUC of 1 means
  the forget items look far more like training data than the holdout items.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp, rankdata, spearmanr

MIN_K_DEFAULT = 0.4


def _as_1d(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of per-item values, got shape {arr.shape}")
    return arr


def _mean_of_rows(rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per-item mean over a (possibly ragged) list of per-variant losses."""
    return np.array([float(np.mean(np.asarray(r, dtype=np.float64))) for r in rows], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# probability


def probability(mean_losses: Sequence[float]) -> tuple[np.ndarray, float]:
    """TOFU "Probability" on forget / retain: per item ``P(a|q) = exp(-mean answer-token NLL)``
    (the length-normalised answer probability, ``P^(1/|a|)``); aggregate = mean over items.

    Returns (per-item values, aggregate)."""
    per_item = np.exp(-_as_1d(mean_losses))
    return per_item, float(np.mean(per_item))


def normalised_probability(true_mean_losses: Sequence[float],
                           perturbed_mean_losses: Sequence[Sequence[float]]) -> tuple[np.ndarray, float]:
    """TOFU "Probability" on real authors / world facts: per item
    ``P(true) / (P(true) + sum_j P(perturbed_j))`` with every ``P = exp(-mean answer NLL)``
    (a multiple-choice style score over the true and the perturbed answers); aggregate = mean.

    Returns (per-item values, aggregate)."""
    p_true = np.exp(-_as_1d(true_mean_losses))
    p_false = np.array([float(np.sum(np.exp(-np.asarray(r, dtype=np.float64)))) for r in perturbed_mean_losses])
    per_item = p_true / (p_true + p_false)
    return per_item, float(np.mean(per_item))


# --------------------------------------------------------------------------------------------
# truth ratio


def truth_ratios(correct_mean_losses: Sequence[float],
                 perturbed_mean_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-item TOFU truth ratio ``R = P^(perturbed) / P(correct)``, where ``P^(perturbed)`` is
    the geometric mean of the perturbed answers' (length-normalised) probabilities:
    ``R = exp(L_correct - mean_j L_perturbed_j)`` with L the mean answer-token NLL.

    "correct" is the *paraphrased* answer on forget / retain and the ground-truth answer on
    real authors / world facts (which have no paraphrase)."""
    correct = _as_1d(correct_mean_losses)
    perturbed = _mean_of_rows(perturbed_mean_losses)
    if len(correct) != len(perturbed):
        raise ValueError(f"{len(correct)} correct losses but {len(perturbed)} perturbed rows")
    return np.exp(correct - perturbed)


def forget_truth_ratio_score(ratios: Sequence[float]) -> float:
    """TOFU truth-ratio score on the forget set: ``mean(min(R, 1/R))`` (1 = the model cannot
    tell the true answer from the perturbed ones, as a model that never saw the data)."""
    r = _as_1d(ratios)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def utility_truth_ratio_score(ratios: Sequence[float]) -> float:
    """TOFU truth-ratio score on retain / real authors / world facts: ``mean(max(0, 1 - R))``
    (higher = the true answer is preferred over the perturbed ones)."""
    r = _as_1d(ratios)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


# --------------------------------------------------------------------------------------------
# forget quality


def forget_quality(model_ratios: Sequence[float], retain_ratios: Sequence[float]) -> dict[str, float]:
    """TOFU forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between the
    evaluated model's and the retain model's per-item forget truth ratios
    (``scipy.stats.ks_2samp``, two-sided, method "auto"). High (close to 1) = indistinguishable
    from a model never trained on the forget set.

    Returns ``{"pvalue", "statistic", "floor"}`` where ``floor`` is the smallest p-value the test
    can give with these item counts (see `ks_floor_pvalue`): a p-value at the floor means
    "completely separated", not a precise measurement."""
    a, b = _as_1d(model_ratios), _as_1d(retain_ratios)
    res = ks_2samp(a, b)
    return {"pvalue": float(res.pvalue), "statistic": float(res.statistic), "floor": ks_floor_pvalue(len(a), len(b))}


def holdout_forget_quality(forget_ratios: Sequence[float], holdout_ratios: Sequence[float]) -> dict[str, float]:
    """Holdout forget quality (HFQ), computed on the evaluated model alone: the p-value of the
    two-sample KS test between the model's per-item truth ratios on the forget items and on
    holdout items of the same kind about entities it never trained on (``ks_2samp``, two-sided).

    A model that never saw the forget data treats both sets alike (HFQ near 1, like a retain
    model); a model that memorised them gives the forget answers a clearly different truth
    ratio (HFQ near the floor). No retain model is needed: this is the score a user without one
    can tune and stop on. Returns ``{"pvalue", "statistic", "floor"}`` as `forget_quality`."""
    return forget_quality(forget_ratios, holdout_ratios)


FORGETTING_VERDICTS = ("alike", "short", "overshot")
FORGETTING_LEVEL = 0.05  # HFQ at or above it: the forget items cannot be told from unseen ones at the 5% level


def forgetting_direction(forget_scores: Sequence[float], holdout_scores: Sequence[float],
                         level: float = FORGETTING_LEVEL) -> dict[str, float | str]:
    """Which way a model's forget items differ from unseen (holdout) ones: what HFQ, a two-sided
    p-value, does not say. Scores are per item, *higher = less familiar*: TOFU truth ratios
    (P(perturbed) / P(correct), small for a known answer) or corpus Min-K% scores.

    The one-sided KS distances ``more_familiar = max(F_forget - F_holdout)`` and ``less_familiar =
    max(F_holdout - F_forget)`` over the pooled values give the direction; the two-sided p-value
    (`holdout_forget_quality`) decides whether there is one. ``verdict``:
    - ``"alike"``: p >= `level`; the forget items look like items the model never saw;
    - ``"short"``: the forget items are still more familiar: forgetting stopped short (the
      starting model's verdict);
    - ``"overshot"``: they are now *less* familiar than unseen items: the model rejects the forget
      answers, which a membership attack can tell apart just as well (over-unlearning)."""
    a, b = np.sort(_as_1d(forget_scores)), np.sort(_as_1d(holdout_scores))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    more, less = float(np.max(cdf_a - cdf_b)), float(np.max(cdf_b - cdf_a))
    p = holdout_forget_quality(a, b)["pvalue"]
    verdict = "alike" if p >= level else ("short" if more >= less else "overshot")
    return {"verdict": verdict, "pvalue": p, "more_familiar": max(more, 0.0), "less_familiar": max(less, 0.0),
            "forget_median": float(np.median(a)), "holdout_median": float(np.median(b))}


def describe_forgetting(verdict: str) -> str:
    """One clause for `forgetting_direction`'s verdict, for a console line."""
    return {"alike": "look like unseen items",
            "short": "are still more familiar than unseen items: forgetting stopped short",
            "overshot": "are now less familiar than unseen items: forgetting overshot, which a membership "
                        "attack detects as well as memorisation"}[verdict]


def corpus_forget_quality(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> dict[str, float]:
    """The corpus form of `holdout_forget_quality` (raw text has no paraphrased / perturbed answers,
    so no truth ratio): the p-value of the two-sample KS test between a per-window membership score
    (Min-K% Prob, `min_k_score`, the score of MUSE's privacy-leak test) on forget-corpus windows and
    on holdout-corpus windows, documents of the same kind the model never trained on. Near 1: the
    forget documents look as unseen as the holdout ones; near the floor: the model still treats
    them as training data (before unlearning), or unlike any text it never saw (over-unlearning,
    e.g. a collapsed likelihood). No retain model needed. Returns ``{"pvalue", "statistic", "floor"}``."""
    return forget_quality(forget_scores, holdout_scores)


def corpus_utility_proxy(retain_window_nlls: Sequence[float]) -> float:
    """Utility on raw text, for tuning: the geometric-mean token probability, ``exp(-mean NLL)``, on
    retain-corpus windows left out of training (higher is better; 0..1)."""
    nll = _as_1d(retain_window_nlls)
    if nll.size == 0:
        raise ValueError("the corpus utility proxy needs at least one retain window")
    return float(np.exp(-np.mean(nll)))


RETAIN_FREE_AUC = 0.5  # the membership AUC forget vs holdout of a model that never saw either set


def utility_proxy(values: dict[str, float]) -> float:
    """A generation-free stand-in for `model_utility`: the harmonic mean of the six aggregates
    {probability, truth-ratio score} x {retain, real authors, world facts} (model utility
    without the three ROUGE-L terms, which need greedy generation). Cheap enough to compute
    every few training steps; 0 if any value is 0. `values` as in `model_utility`."""
    keys = UTILITY_PROXY_KEYS
    missing = [k for k in keys if values.get(k) is None]
    if missing:
        raise KeyError(f"the utility proxy needs {', '.join(missing)}")
    vals = np.array([float(values[k]) for k in keys])
    if np.any(vals <= 0):
        return 0.0
    return float(hmean(vals))


def ks_floor_pvalue(n: int, m: int) -> float:
    """The smallest p-value `ks_2samp` can return for samples of sizes n and m: the p-value of
    two completely separated samples (KS statistic D = 1), computed with the same method."""
    if n < 1 or m < 1:
        raise ValueError("both samples need at least one item")
    return float(ks_2samp(np.arange(n, dtype=float), np.arange(m, dtype=float) + n + 1).pvalue)


# --------------------------------------------------------------------------------------------
# ROUGE and model utility


def rouge_l_recall(generations: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """ROUGE-L recall (LCS length / reference length, Porter stemming, ``rouge_score``) of each
    generation against its ground-truth answer, as TOFU reports it."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(ans, gen)["rougeL"].recall for gen, ans in zip(generations, answers)])


UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
UTILITY_MEASURES = ("probability", "rougeL_recall", "truth_ratio")
# the terms of `utility_proxy` (model utility without its generation terms)
UTILITY_PROXY_KEYS = tuple(f"{s}_{m}" for s in UTILITY_SPLITS for m in ("probability", "truth_ratio"))


def model_utility(values: dict[str, float]) -> float:
    """TOFU model utility: the harmonic mean of the nine aggregates {probability, ROUGE-L
    recall, truth-ratio score} x {retain, real authors, world facts}. `values` maps
    ``f"{split}_{measure}"`` to the aggregate (e.g. ``retain_probability``). The harmonic mean is
    0 if any value is 0, so utility collapses when any one capability does."""
    keys = [f"{s}_{m}" for s in UTILITY_SPLITS for m in UTILITY_MEASURES]
    missing = [k for k in keys if values.get(k) is None]
    if missing:
        raise KeyError(f"model utility needs {', '.join(missing)}")
    vals = np.array([float(values[k]) for k in keys])
    if np.any(vals == 0):
        return 0.0
    return float(hmean(vals))


# --------------------------------------------------------------------------------------------
# membership inference


def mia_loss_scores(mean_losses: Sequence[float]) -> np.ndarray:
    """LOSS attack (Yeom et al., 2018): score = mean answer-token NLL (higher = non-member)."""
    return _as_1d(mean_losses).copy()


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (at least 1)."""
    return max(len(zlib.compress(text.encode("utf-8"))), 1)


def mia_zlib_scores(mean_losses: Sequence[float], texts: Sequence[str]) -> np.ndarray:
    """zlib attack (Carlini et al., 2021): score = mean answer NLL / zlib entropy of the answer
    text (higher = non-member)."""
    loss = _as_1d(mean_losses)
    return np.array([loss[i] / zlib_entropy(t) for i, t in enumerate(texts)])


def min_k_score(token_logprobs: Sequence[float], k: float = MIN_K_DEFAULT) -> float:
    """Min-K% Prob (Shi et al., 2024) of one item: minus the mean of the lowest ``k`` fraction
    (at least one) of its answer-token log-probabilities (higher = non-member)."""
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if lp.size == 0:
        return math.nan
    n = max(1, int(len(lp) * k))
    return float(-np.mean(lp[:n]))


def min_k_plus_plus_score(token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float],
                          k: float = MIN_K_DEFAULT) -> float:
    """Min-K%++ (Zhang et al., 2024) of one item: each answer token's log-probability is
    standardised by the mean ``mu_t = E_{z~p(.|x<t)} log p(z|x<t)`` and standard deviation
    ``sigma_t`` of the log-probability under the model's own next-token distribution; the score
    is minus the mean of the lowest ``k`` fraction of the standardised values."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    z = (lp - np.asarray(mu, dtype=np.float64)) / np.maximum(np.asarray(sigma, dtype=np.float64), 1e-12)
    return min_k_score(z, k)


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC of separating holdout (label 1) from forget (label 0) items by a loss-like score
    (the open-unlearning convention): 1 = every forget item looks more "seen" than every holdout
    item, 0.5 = indistinguishable. Computed exactly with the Mann-Whitney U statistic (ties
    count one half)."""
    f, h = _as_1d(forget_scores), _as_1d(holdout_scores)
    if len(f) == 0 or len(h) == 0:
        raise ValueError("AUC needs at least one forget and one holdout item")
    ranks = rankdata(np.concatenate([f, h]))
    u = float(np.sum(ranks[len(f):])) - len(h) * (len(h) + 1) / 2.0
    return u / (len(f) * len(h))


def privleak(auc: float, retain_auc: float) -> float:
    """PrivLeak (MUSE, Shi et al., 2024) in percent, as open-unlearning computes it from the
    AUCs above: with ``a = 1 - AUC`` (MUSE's orientation), ``(a - a_retain) / a_retain * 100``.
    0 = leaks as much as the retain model; strongly negative (towards -100) = the forget data is
    still recognisable (under-unlearning); positive = over-unlearning."""
    a, r = 1.0 - float(auc), 1.0 - float(retain_auc)
    if r == 0:
        return math.nan
    return (a - r) / r * 100.0


# --------------------------------------------------------------------------------------------
# robustness: recovery under attack, representation similarity


def recovery(attacked: float, unlearned: float, target: float, min_gap: float = 1e-3) -> float:
    """How much of what unlearning removed an attack brings back:
    ``(attacked - unlearned) / (target - unlearned)``, all on the same items (target = the
    target model's value before any attack). 0 = nothing comes back, 1 = the target's level;
    below 0 the attack hurt the model further, above 1 it surpassed the target. NaN when
    ``|target - unlearned| < min_gap``: unlearning removed nothing measurable, so there is
    nothing to recover."""
    gap = float(target) - float(unlearned)
    if not np.isfinite(gap) or abs(gap) < min_gap or not np.isfinite(attacked):
        return math.nan
    return (float(attacked) - float(unlearned)) / gap


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019, eq. 5) between two representations of the same n
    inputs, ``x`` [n, d1] and ``y`` [n, d2]: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``
    with column-centred Xc, Yc. 1 = the same up to rotation and isotropic scaling; invariant to
    both, so a model compared with itself gives 1. Computed through the n x n Gram matrices when
    n is smaller than the feature dimensions."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"expected [n, d] arrays with the same n, got {a.shape} and {b.shape}")
    a = a - a.mean(0, keepdims=True)
    b = b - b.mean(0, keepdims=True)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        ka, kb = a @ a.T, b @ b.T
        num, den = float(np.sum(ka * kb)), float(np.linalg.norm(ka) * np.linalg.norm(kb))
    else:
        num = float(np.linalg.norm(b.T @ a) ** 2)
        den = float(np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    return num / den if den > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of paired values (e.g. HFQ and true FQ over runs); nan when a
    side is constant or fewer than 3 pairs."""
    a, b = _as_1d(x), _as_1d(y)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} values")
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)
