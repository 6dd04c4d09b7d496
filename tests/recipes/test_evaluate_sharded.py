"""`llm_unlearn.eval.evaluate_sharded` on 2 CPU processes (torchrun, gloo) gives every rank
the per-item values one process computes with `evaluate_model`, in item order, and the same
aggregates.

An odd item count (5 per split) makes the two ranks' shards unequal, so the padding item is
exercised. Tolerance: losses 1e-4 relative (a rank batches different items together, so padding
and float32 summation differ); generations and token counts exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests._torchrun import torchrun, worker_env

WORKER = Path(__file__).with_name("_eval_sharded_worker.py")
MAX_ITEMS = 5


def _assert_items_equal(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_items_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_items_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5, nan_ok=True), where
    else:
        assert a == b, where


@pytest.mark.multiprocess
def test_two_processes_give_the_per_item_results_of_one(target_dir, synthetic_dir, tmp_path):
    import torch

    from llm_unlearn.eval.evaluator import evaluate_model
    from llm_unlearn.models import load_model, load_tokenizer

    env = worker_env()
    cmd = [*torchrun(2), str(WORKER), str(target_dir), str(synthetic_dir), str(tmp_path), str(MAX_ITEMS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the single-process reference runs here while the two workers run
    model, tok = load_model(str(target_dir)), load_tokenizer(str(target_dir))
    with torch.no_grad():
        one = evaluate_model(model, tok, str(synthetic_dir), forget_split="forget10", max_items=MAX_ITEMS,
                             batch_size=2, max_new_tokens=4, progress=False)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank holds the merged result
    two = ranks[0]
    splits1, splits2 = one["per_item"]["splits"], two["per_item"]["splits"]
    assert set(splits1) == set(splits2) == {"forget", "retain", "real_authors", "world_facts", "holdout"}
    for name in splits1:
        items1, items2 = splits1[name]["items"], splits2[name]["items"]
        n = MAX_ITEMS if name != "holdout" else len(items1)  # the holdout (scored only) is not capped
        assert len(items1) == n >= MAX_ITEMS and [i["index"] for i in items2] == list(range(n))
        _assert_items_equal(items1, items2, name)
    assert two["summary"]["settings"]["world_size"] == 2
    _assert_items_equal(one["summary"]["metrics"], two["summary"]["metrics"], "metrics")
