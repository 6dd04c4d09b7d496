"""MUSE-style verbatim memorisation (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way
Evaluation", §3, VerbMem): prompt the model with the first `prefix_tokens` tokens of a forget
document and compare its greedy continuation with the true next `continuation_tokens` tokens by
ROUGE-L F1. A model that memorised the text reproduces it (score near 1); after unlearning the
score should fall to that of a model never trained on it.

`verbatim_memorisation` is the pure metric (texts in, per-item scores and mean out);
`corpus_memorisation` runs the model on a corpus and calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rouge_score import rouge_scorer

from llm_unlearn.data.qa import check_tokenizer, pad_sequences
from llm_unlearn.errors import UnlearnError


def verbatim_memorisation(continuations: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """ROUGE-L F1 of each model continuation against the true continuation, and the mean."""
    if len(continuations) != len(references):
        raise ValueError(f"{len(continuations)} continuations for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = np.array([scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(continuations, references)])
    return {"per_item": scores.tolist(), "mean": float(scores.mean()) if len(scores) else None}


@torch.no_grad()
def corpus_memorisation(model, tokenizer, texts: Sequence[str], prefix_tokens: int = 32,
                        continuation_tokens: int = 64, batch_size: int = 8,
                        max_documents: int | None = None) -> dict[str, Any]:
    """Verbatim memorisation of `texts` (documents shorter than prefix + continuation are skipped
    and counted). Returns `verbatim_memorisation`'s dict plus ``documents``, ``skipped`` and the
    settings."""
    check_tokenizer(tokenizer)
    if prefix_tokens < 1 or continuation_tokens < 1:
        raise UnlearnError("memorisation prefix and continuation lengths must be >= 1")
    prompts, refs = [], []
    skipped = 0
    for text in texts:
        if max_documents is not None and len(prompts) >= max_documents:
            break
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) < prefix_tokens + continuation_tokens:
            skipped += 1
            continue
        prompts.append(ids[:prefix_tokens])
        refs.append(tokenizer.decode(ids[prefix_tokens:prefix_tokens + continuation_tokens], skip_special_tokens=True))
    if not prompts:
        raise UnlearnError(f"no document has {prefix_tokens + continuation_tokens} tokens "
                           "(prefix + continuation): lower them or give longer documents")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gens: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]  # same length: no padding needed
            ids = pad_sequences(chunk, tokenizer.pad_token_id, "left").to(device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=continuation_tokens, min_new_tokens=continuation_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
            gens.extend(tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    result = verbatim_memorisation(gens, refs)
    result.update(documents=len(prompts), skipped=skipped, prefix_tokens=prefix_tokens,
                  continuation_tokens=continuation_tokens)
    return result


__all__ = ["corpus_memorisation", "verbatim_memorisation"]
