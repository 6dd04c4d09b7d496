"""Retain-free scores on raw-text corpora, for tuning and stopping corpus unlearning (`llm-unlearn
tune --forget-corpus`): the corpus holdout forget quality and a utility proxy, no generation.

Every window (`llm_unlearn.data.corpus.chunk_corpus`) gets its mean token NLL and its Min-K% Prob
(Shi et al., 2024; `metrics.min_k_score` over the window's token log-probabilities). The forget
quality is the KS p-value between the Min-K% scores of forget windows and of holdout windows
(`metrics.corpus_forget_quality`, the analogue of the TOFU holdout forget quality); the utility
proxy is the geometric-mean token probability on retain windows left out of training
(`metrics.corpus_utility_proxy`). The metrics are pure functions; this module runs the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from llm_unlearn.data.qa import QACollator
from llm_unlearn.eval.metrics import MIN_K_DEFAULT, corpus_forget_quality, corpus_utility_proxy, min_k_score
from llm_unlearn.scoring import model_logits, token_logprobs

CORPUS_SPLITS = ("forget", "holdout", "retain")


@torch.no_grad()
def window_scores(model, windows, tokenizer, batch_size: int = 8, k: float = MIN_K_DEFAULT) -> dict[str, list[float]]:
    """``{"nll": [...], "min_k": [...]}``: per window of a chunked corpus, the mean NLL of its
    labelled tokens and its Min-K% Prob (higher = less "seen", like the NLL). Eval mode, no grad."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(windows.select_columns(["input_ids", "attention_mask", "labels"]), batch_size=batch_size,
                        collate_fn=QACollator(tokenizer))
    out: dict[str, list[float]] = {"nll": [], "min_k": []}
    for batch in loader:
        batch = {key: v.to(device) for key, v in batch.items()}
        logp, mask = token_logprobs(model_logits(model, batch), batch["labels"])
        for row, m in zip(logp.cpu(), mask.cpu()):
            lp = row[m].double().numpy()
            out["nll"].append(float(-lp.mean()) if lp.size else float("nan"))
            out["min_k"].append(min_k_score(lp, k))
    model.train(was_training)
    return out


def score_corpus(model, tokenizer, windows_by_split: dict[str, Any], batch_size: int = 8,
                 k: float = MIN_K_DEFAULT) -> dict[str, Any]:
    """Scores of `model` on chunked ``forget``, ``holdout`` and ``retain`` windows (the retain ones
    left out of training): ``{"hfq", "ks_statistic", "floor", "utility_proxy", "mean_nll": {split:
    …}, "mean_min_k": {split: …}, "windows": {split: n}, "forget_min_k": [...], "holdout_min_k": [...]}``."""
    missing = [s for s in CORPUS_SPLITS if s not in windows_by_split or len(windows_by_split[s]) == 0]
    if missing:
        raise ValueError(f"corpus scores need windows of {', '.join(missing)}")
    scores = {s: window_scores(model, windows_by_split[s], tokenizer, batch_size, k) for s in CORPUS_SPLITS}
    fq = corpus_forget_quality(scores["forget"]["min_k"], scores["holdout"]["min_k"])
    return {
        "hfq": fq["pvalue"], "ks_statistic": fq["statistic"], "floor": fq["floor"],
        "utility_proxy": corpus_utility_proxy(scores["retain"]["nll"]),
        "mean_nll": {s: float(sum(v["nll"]) / len(v["nll"])) for s, v in scores.items()},
        "mean_min_k": {s: float(sum(v["min_k"]) / len(v["min_k"])) for s, v in scores.items()},
        "windows": {s: len(v["nll"]) for s, v in scores.items()}, "forget_min_k": scores["forget"]["min_k"],
        "holdout_min_k": scores["holdout"]["min_k"],
        "min_k": k,
    }


__all__ = ["CORPUS_SPLITS", "score_corpus", "window_scores"]
