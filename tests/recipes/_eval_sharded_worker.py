"""torchrun worker for test_evaluate_sharded: every rank evaluates its shard of the items with
`evaluate_sharded`; each rank writes the merged result it received to OUT/rank<r>.json."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from llm_unlearn.eval import evaluate_sharded
from llm_unlearn.models import load_model, load_tokenizer

model_dir, data, out, max_items = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
dist.init_process_group("gloo")
model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
with torch.no_grad():
    res = evaluate_sharded(model, tokenizer, data, forget_split="forget10", max_items=max_items, batch_size=2,
                           max_new_tokens=4, progress=False)
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(res))
dist.destroy_process_group()
