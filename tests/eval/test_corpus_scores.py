"""Retain-free corpus scores (llm_unlearn.eval.corpus_scores) and their pure metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset

from llm_unlearn.data.corpus import chunk_corpus
from llm_unlearn.eval.corpus_scores import score_corpus, window_scores
from llm_unlearn.eval.metrics import corpus_forget_quality, corpus_utility_proxy, ks_floor_pvalue
from llm_unlearn.scoring import per_item_nll


def test_corpus_metrics_are_pure():
    same = corpus_forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["pvalue"] == pytest.approx(1.0) and same["statistic"] == 0.0
    apart = corpus_forget_quality([1.0, 2.0, 3.0], [10.0, 11.0, 12.0])
    assert apart["pvalue"] == pytest.approx(ks_floor_pvalue(3, 3)) and apart["statistic"] == 1.0
    assert corpus_utility_proxy([1.0, 3.0]) == pytest.approx(math.exp(-2.0))
    with pytest.raises(ValueError):
        corpus_utility_proxy([])


def _windows(tokenizer, texts, max_length=16):
    return chunk_corpus(Dataset.from_list([{"text": t} for t in texts]), tokenizer, max_length)[0]


def test_window_nll_is_the_training_nll_and_min_k_ranks_the_hardest_tokens(tiny_model, tiny_tokenizer):
    texts = ["The Veltrax condenser is cooled with argon. " * 4, "Engineers fill the loop with brine."]
    w = _windows(tiny_tokenizer, texts)
    s = window_scores(tiny_model, w, tiny_tokenizer, batch_size=3, k=0.2)
    assert len(s["nll"]) == len(w) > 2
    assert np.allclose(s["nll"], per_item_nll(tiny_model, w, tiny_tokenizer, batch_size=3), atol=1e-5)
    # Min-K% averages only the least likely tokens: never below the mean NLL of the window
    assert all(mk >= nll - 1e-6 for mk, nll in zip(s["min_k"], s["nll"]))


def test_score_corpus_needs_every_split(tiny_model, tiny_tokenizer):
    w = _windows(tiny_tokenizer, ["The Veltrax condenser is cooled with argon."])
    out = score_corpus(tiny_model, tiny_tokenizer, {"forget": w, "holdout": w, "retain": w}, batch_size=2)
    assert out["hfq"] == pytest.approx(1.0) and out["windows"] == dict.fromkeys(("forget", "holdout", "retain"), len(w))
    assert out["utility_proxy"] == pytest.approx(math.exp(-out["mean_nll"]["retain"]))
    with pytest.raises(ValueError, match="holdout"):
        score_corpus(tiny_model, tiny_tokenizer, {"forget": w, "retain": w})
