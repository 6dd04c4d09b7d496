"""One short full-weight NPO+RT run (3 steps) on the tiny target, for tests/trainers/test_distributed.py.

`run` is called in the test process for the 1-process run; under torchrun every rank executes this
file (``python -m torch.distributed.run --nproc_per_node 2 _ddp_worker.py TARGET DATA OUT BATCH``).
Each rank writes ``OUT/rank{r}.json`` (logged steps, reference column, items scored for the
reference); rank 0 also writes the trained weights to ``OUT/weights.pt``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def run(target_dir: str, data_dir: str, out_dir: str, batch_size: int) -> dict:
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import load_model, load_tokenizer
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    out = Path(out_dir)
    tok = load_tokenizer(target_dir)
    model = load_model(target_dir)
    forget, _ = tokenize_qa_dataset(load_tofu("forget10", data_dir), tok, max_length=128)
    retain, _ = tokenize_qa_dataset(load_tofu("retain90", data_dir), tok, max_length=128)
    cfg = NPOConfig(output_dir=str(out / "trainer"), max_steps=3, per_device_train_batch_size=batch_size,
                    learning_rate=1e-3, warmup_steps=0, logging_steps=1, use_cpu=True, disable_tqdm=True, seed=0,
                    report_to="none", alpha=1.0, beta=0.1)

    scored = []  # rows the model sees while the trainer is built: the reference pass over the forget set
    handle = model.register_forward_hook(lambda m, args, kwargs, o: scored.append(kwargs["input_ids"].shape[0]),
                                         with_kwargs=True)
    trainer = NPOTrainer(model=model, args=cfg, train_dataset=ForgetRetainDataset(forget, retain, seed=0),
                         processing_class=tok)
    handle.remove()
    trainer.train()
    rank = trainer.args.process_index
    result = {
        "world_size": trainer.accelerator.num_processes,
        "reference_rows_scored": sum(scored),
        "ref_logprob": list(trainer.train_dataset.forget["ref_logprob"]),
        "steps": [h for h in trainer.state.log_history if "loss" in h],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        torch.save({k: v.detach().cpu() for k, v in unwrapped.state_dict().items()}, out / "weights.pt")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
