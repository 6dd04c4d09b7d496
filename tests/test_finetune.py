"""Finetuning: the tiny target model learns its QA; LoRA adapters on tiny reload; run.json."""

from __future__ import annotations

import json

import torch

from llm_unlearn.data.qa import QACollator, tokenize_qa_dataset
from llm_unlearn.data.tofu import load_tofu
from llm_unlearn.models import build_tiny, load_model, load_tokenizer


def mean_answer_nll(model, tokenizer, rows) -> float:
    ds, _ = tokenize_qa_dataset(rows, tokenizer)
    batch = QACollator(tokenizer)([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100,
                                            reduction="none")
    per_item = nll.sum(1) / (labels != -100).sum(1)
    return per_item.mean().item()


def test_finetuning_halves_answer_nll(target_dir, synthetic_dir):
    rows = load_tofu("full", synthetic_dir)
    fresh, tok = build_tiny(synthetic_dir, seed=0)  # the same start as the finetuning run
    trained, trained_tok = load_model(str(target_dir)), load_tokenizer(str(target_dir))
    assert trained_tok.get_vocab() == tok.get_vocab()
    before, after = mean_answer_nll(fresh, tok, rows), mean_answer_nll(trained, tok, rows)
    assert after <= 0.5 * before, (before, after)


def test_run_manifest(target_dir, synthetic_dir):
    run = json.loads((target_dir / "run.json").read_text())
    assert run["model"] == "tiny" and run["split"] == "full" and run["items"] == 100
    assert run["train_items"] > 100  # + utility sets for tiny
    assert len(run["data_hash"]) == 64 and run["seed"] == 0
    assert run["hyperparameters"]["lr"] == 3e-3 and run["versions"]["transformers"]
    assert not (target_dir / "checkpoints").exists()


def test_tiny_lora_via_cli_saves_a_reloadable_adapter(synthetic_dir, tmp_path):
    from llm_unlearn.cli import main

    out = tmp_path / "lora"
    rc = main(["finetune", "--model", "tiny", "--data", str(synthetic_dir), "--split", "retain90", "--output",
               str(out), "--lora", "--epochs", "1", "--max-authors", "2", "--batch-size", "8"])
    assert rc == 0
    assert (out / "adapter_config.json").is_file() and (out / "base" / "config.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["items"] == 20 and run["lora"] is True  # 2 authors x 10 QA (meta.json)
    model = load_model(str(out))
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert any("lora_A" in n for n, _ in model.named_parameters())
