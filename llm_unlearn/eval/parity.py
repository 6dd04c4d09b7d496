"""Item-by-item comparison of two evaluations of the same items (ours against a reference such as
open-unlearning's ``TOFU_EVAL.json``): pure functions over `EvalLogs`, no model is run here.

For one split it reports the largest and mean absolute difference of the answer loss (mean
answer-token NLL), the paraphrased loss, the perturbed losses, the truth ratio and the
length-normalised probability, and for ROUGE-L recall how many generations are identical and
whether the recall agrees wherever they are (a generation that differs in one greedy token
changes the ROUGE legitimately, so ROUGE is compared only on equal texts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.logs import EvalLogs, split_truth_ratios


def _diff(a: np.ndarray | None, b: np.ndarray | None) -> dict[str, float] | None:
    if a is None or b is None:
        return None
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "n": int(d.size)}


def compare_split(ours: EvalLogs, reference: EvalLogs, split: str = "forget") -> dict[str, Any]:
    """``{"n_items", "answer_loss", "paraphrased_loss", "perturbed_loss", "truth_ratio",
    "probability": {max_abs, mean_abs, n} | None, "generations_equal", "rouge_equal_where_generations_equal",
    "rouge_max_abs_where_equal"}`` for the items both logs have (matched by position)."""
    if split not in ours.splits or split not in reference.splits:
        raise UnlearnError(f"both logs need a '{split}' split to compare")
    a, b = ours.splits[split], reference.splits[split]
    if len(a) != len(b):
        raise UnlearnError(f"'{split}': {len(a)} items in ours, {len(b)} in the reference; evaluate the same items")
    out: dict[str, Any] = {"n_items": len(a)}
    out["answer_loss"] = _diff(a.gt_loss, b.gt_loss)
    out["probability"] = None if a.gt_loss is None or b.gt_loss is None else _diff(np.exp(-a.gt_loss), np.exp(-b.gt_loss))
    out["paraphrased_loss"] = _diff(a.paraphrased_loss, b.paraphrased_loss)
    if a.perturbed_loss is not None and b.perturbed_loss is not None:
        out["perturbed_loss"] = _diff(np.concatenate([np.asarray(r, dtype=np.float64) for r in a.perturbed_loss]),
                                      np.concatenate([np.asarray(r, dtype=np.float64) for r in b.perturbed_loss]))
    else:
        out["perturbed_loss"] = None
    out["truth_ratio"] = _diff(split_truth_ratios(a), split_truth_ratios(b))
    if a.generations is not None and b.generations is not None:
        same = [i for i, (x, y) in enumerate(zip(a.generations, b.generations)) if x.strip() == y.strip()]
        out["generations_equal"] = len(same)
        if a.rougeL_recall is not None and b.rougeL_recall is not None and same:
            d = np.abs(a.rougeL_recall[same] - b.rougeL_recall[same])
            out["rouge_max_abs_where_equal"] = float(d.max())
            out["rouge_equal_where_generations_equal"] = bool(d.max() < 1e-12)
        else:
            out["rouge_max_abs_where_equal"] = None
            out["rouge_equal_where_generations_equal"] = None
    else:
        out["generations_equal"] = None
        out["rouge_max_abs_where_equal"] = None
        out["rouge_equal_where_generations_equal"] = None
    return out
