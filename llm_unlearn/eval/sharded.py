"""Evaluation on several processes: every split's items divided among the ranks.

Each rank evaluates its shard (`llm_unlearn.distributed.shard_indices`, padded so collective
forwards of FSDP / ZeRO-3 stay in lockstep), the per-item values are merged in item order, and
the aggregates are computed from the merged logs, so every rank returns what one process would.
"""

from __future__ import annotations

import os
from typing import Any

from llm_unlearn.distributed import (
    gather_by_index,
    is_main_process,
    mark_for_synced_generation,
    rank_and_world,
    shard_indices,
)
from llm_unlearn.eval import evaluator as E


def evaluate_sharded(model, tokenizer, data_source, forget_split: str = "forget10", retain_logs=None,
                     max_items: int | None = None, batch_size: int = 8, max_new_tokens: int = 200,
                     progress: bool = True) -> dict[str, Any]:
    """`llm_unlearn.eval.evaluate_model`, with every split's items divided among ranks and the
    per-item values merged (in item order) before the aggregates are computed; every rank
    returns the same ``{"summary", "per_item"}``. One process: identical to `evaluate_model`."""
    _, world = rank_and_world()
    if world == 1:
        return E.evaluate_model(model, tokenizer, data_source, forget_split=forget_split, retain_logs=retain_logs,
                                max_items=max_items, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                progress=progress)
    mark_for_synced_generation(model)
    retain = E.read_logs(retain_logs) if isinstance(retain_logs, (str, os.PathLike)) else retain_logs
    rows, source_splits, mia_reason = E.load_eval_rows(data_source, forget_split, max_items)
    shards = {name: shard_indices(len(r)) for name, r in rows.items()}
    local = E.evaluate_items(model, tokenizer, {n: [rows[n][i] for i in shards[n]] for n in rows},
                             batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress and is_main_process())
    items = {}
    for name in rows:
        merged = gather_by_index(shards[name], local[name], len(rows[name]))
        items[name] = [{**item, "index": i} for i, item in enumerate(merged)]
    per_item = {"format": E.ITEMS_FORMAT, "data": str(data_source), "forget_split": forget_split,
                "mia_not_available": mia_reason,
                "splits": {n: {"source_split": source_splits[n], "items": its} for n, its in items.items()}}
    summary = {"format": E.SUMMARY_FORMAT, "data": str(data_source), "forget_split": forget_split,
               "source_splits": source_splits, **E.compute_summary(E.logs_from_items(per_item), retain),
               "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_items": max_items,
                            "world_size": world, "sharded": True}}
    summary.pop("logs", None)
    return {"summary": summary, "per_item": per_item}
