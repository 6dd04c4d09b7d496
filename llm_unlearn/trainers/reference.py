"""Reference log-likelihoods for full-weight training, computed once before the first step.

NPO and IdK-DPO compare the model with its starting point, log π_ref(y|x). With full weights the
trainer stores Σ log π_ref(y|x) of every forget item as a dataset column (``ref_logprob``,
``idk_ref_logprob``) instead of keeping a frozen copy of the model; with several processes
(`sharded_reference_logprobs`) each rank scores a shard of the items and every rank receives the
whole column (`llm_unlearn.distributed`).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from llm_unlearn.data.qa import QACollator
from llm_unlearn.distributed import gather_by_index, shard_indices
from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs

QA_KEYS = ("input_ids", "attention_mask", "labels")


@torch.no_grad()
def add_reference_logprobs(model, dataset: Dataset, tokenizer, prefix: str = "", batch_size: int = 8) -> Dataset:
    """Add column ``{prefix}ref_logprob``: Σ log π(y|x) of the model as it is now (eval mode).

    Used with full weights, before training, so no frozen copy is needed for NPO / DPO."""
    cols = [f"{prefix}{k}" for k in QA_KEYS]
    missing = [c for c in cols if c not in dataset.column_names]
    if missing:
        raise UnlearnError(f"dataset has no column(s) {', '.join(missing)} to score for the reference")
    view = dataset.select_columns(cols).rename_columns({f"{prefix}{k}": k for k in QA_KEYS}) if prefix else dataset.select_columns(cols)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values: list[float] = []
    for batch in DataLoader(view, batch_size=batch_size, collate_fn=QACollator(tokenizer)):
        batch = {k: v.to(device) for k, v in batch.items()}
        s, _ = sequence_logprobs(model, batch)
        values.extend(s.double().tolist())
    model.train(was_training)
    column = f"{prefix}ref_logprob"
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values)


def sharded_reference_logprobs(model, dataset, tokenizer, prefix: str = "", batch_size: int = 8):
    """`dataset` + column ``{prefix}ref_logprob`` (Σ log π(y|x) of `model` as it is now), each rank
    scoring its shard and all ranks receiving the full column. Add it before building an
    `UnlearnTrainer` with full weights: the trainer then uses the column instead of scoring every
    item on every rank."""
    column = f"{prefix}ref_logprob"
    idx = shard_indices(len(dataset))
    scored = add_reference_logprobs(model, dataset.select(idx), tokenizer, prefix=prefix, batch_size=batch_size)
    values = gather_by_index(idx, scored[column], len(dataset))
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values)
