"""Every recipe script runs end to end on the tiny model and synthetic data with the documented
overrides (--model_name_or_path, --data, splits, --output_dir), in-process as `__main__` with the
YAML config of recipes/configs/, and writes what it promises."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
FAST_EVAL = ["--eval_max_items", "2", "--eval_max_new_tokens", "4"]


def run_recipe(name: str, args: list[str], monkeypatch) -> int:
    """Run recipes/<name>.py as a script with `--config recipes/configs/<name>.yaml` + `args`."""
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--config", str(RECIPES / "configs" / f"{name}.yaml"), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPES / f"{name}.py"), run_name="__main__")
    return exit_info.value.code


def _eval_summary(out: Path, forget_split: str) -> dict:
    summary = json.loads((out / "eval" / "summary.json").read_text())
    per_item = json.loads((out / "eval" / "per_item.json").read_text())
    assert summary["forget_split"] == forget_split
    assert summary["settings"]["max_new_tokens"] == 4
    assert {n: len(s["items"]) for n, s in per_item["splits"].items()}["forget"] == 2
    return summary


def test_finetune_recipe_lora_retain_model(synthetic_dir, tmp_path, monkeypatch):
    from llm_unlearn.models import load_model, load_tokenizer

    out = tmp_path / "retain"
    rc = run_recipe("finetune_tofu", [
        "--model_name_or_path", "tiny", "--data", str(synthetic_dir), "--split", "retain90", "--output_dir", str(out),
        "--use_lora", "true", "--lora_r", "4", "--max_authors", "2", "--qa_per_author", "10", "--epochs", "1",
        "--batch_size", "10", "--grad_accum", "1", "--lr", "1e-2", "--dtype", "float32", "--with_utility", "false",
        *FAST_EVAL], monkeypatch)
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["kind"], run["split"], run["items"], run["lora"]) == ("finetune", "retain90", 20, True)
    assert run["hyperparameters"]["lora_r"] == 4
    # a LoRA adapter over the saved random tiny base, and it was trained (lora_B starts at zero)
    assert (out / "adapter_config.json").is_file() and (out / "base" / "config.json").is_file()
    model = load_model(str(out))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)
    tok = load_tokenizer(str(out))
    with torch.no_grad():
        assert torch.isfinite(model(**tok("Who wrote it?", return_tensors="pt")).logits).all()
    summary = _eval_summary(out, "forget10")
    assert summary["metrics"]["model_utility"] is not None


def test_finetune_recipe_refuses_unknown_split(synthetic_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x"
    rc = run_recipe("finetune_tofu", ["--model_name_or_path", "tiny", "--data", str(synthetic_dir),
                                      "--split", "retain77", "--output_dir", str(out)], monkeypatch)
    assert rc == 2 and "retain77" in capsys.readouterr().err
    assert not out.exists()


def test_s3t_recipe_trains_deletes_and_evaluates_the_ensemble(synthetic_dir, tmp_path, monkeypatch):
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t import DeletionLedger, verify_run

    out = tmp_path / "s3t"
    forget = load_tofu("forget10", str(synthetic_dir))
    needle = forget[5]["answer"].split()[-2]  # a word of item 5's answer
    rc = run_recipe("s3t_tofu", [
        "--model_name_or_path", "tiny", "--data", str(synthetic_dir), "--split", "forget10", "--output_dir", str(out),
        "--shards", "2", "--slices", "2", "--sequences", "2", "--lora_r", "4", "--epochs_per_stage", "1",
        "--lr", "1e-2", "--batch_size", "4", "--max_length", "64", "--delete_split", "",
        "--delete_ids", "forget10:0", "--delete_match", needle, "--forget_split", "forget10", *FAST_EVAL],
        monkeypatch)
    assert rc == 0
    ledger = DeletionLedger.open(out)
    deleted = ledger.deleted_ids()
    matched = {f"forget10:{i}" for i, r in enumerate(forget) if needle.lower() in (r["question"] + r["answer"]).lower()}
    assert deleted == {"forget10:0"} | matched and "forget10:5" in deleted
    report = verify_run(out)  # no served checkpoint saw a deleted sample, hashes match
    assert report["deleted_samples"] == len(deleted) and report["pending_retrain"] == []
    assert len(report["served"]) == 2
    _eval_summary(out, "forget10")


def test_s3t_recipe_ids_in_split(synthetic_dir, tmp_path, monkeypatch):
    """--delete_split maps a split's items to the run's sample ids by content."""
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.s3t import S3TConfig, train_s3t

    monkeypatch.syspath_prepend(str(RECIPES))
    ids_in_split = runpy.run_path(str(RECIPES / "s3t_tofu.py"))["ids_in_split"]
    out = tmp_path / "s3t"
    out.mkdir()
    train_s3t(S3TConfig(model="tiny", data=str(synthetic_dir), split="full", output=str(out), shards=2, slices=2,
                        sequences=1, lora_r=2, epochs_per_stage=0, max_items=95))
    # full's last 10 items are forget10; the run trained the first 95 of full
    assert ids_in_split(out, "forget10", str(synthetic_dir)) == [f"full:{i}" for i in range(90, 95)]
    with pytest.raises(UnlearnError, match="none of its items"):
        ids_in_split(out, "world_facts", str(synthetic_dir))


def test_wagle_zephyr_recipe_on_tiny(target_dir, synthetic_dir, tmp_path, monkeypatch):
    """The zephyr recipe's defaults (bf16 + LoRA + row WAGLE) on the tiny target, in float32 on CPU."""
    from safetensors.torch import load_file

    from llm_unlearn.masks import load_mask

    out = tmp_path / "wagle"
    rc = run_recipe("wagle_zephyr", [
        "--model_name_or_path", str(target_dir), "--data", str(synthetic_dir), "--output_dir", str(out),
        "--bf16", "false", "--dtype", "float32", "--max_steps", "2", "--gradient_accumulation_steps", "1",
        "--learning_rate", "1e-2", "--max_length", "64", "--disable_tqdm", "true", *FAST_EVAL], monkeypatch)
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "npo" and run["hyperparameters"]["mask_method"] == "wagle"
    assert run["hyperparameters"]["mask_granularity"] == "row" and run["hyperparameters"]["load_in_4bit"] is False
    mask = load_mask(out / "mask.safetensors")
    assert mask.granularity == "row" and 0.7 < mask.density() < 0.9  # mask_ratio 0.8 of the output rows
    adapter = load_file(out / "adapter_model.safetensors")
    # row mask enforced through LoRA: frozen output rows of every lora_B stay exactly zero, others moved
    moved = frozen = 0
    for key, b in adapter.items():
        if "lora_B" not in key:
            continue
        base = key.replace("base_model.model.", "").replace(".lora_B.weight", ".weight")
        rows = mask[base].reshape(-1)
        frozen += int((~rows).sum())
        assert torch.count_nonzero(b[~rows]) == 0, key
        moved += int((b[rows].abs().sum(1) > 0).sum())
    assert frozen > 0 and moved > 0
    _eval_summary(out, "forget10")


def test_wagle_zephyr_refuses_4bit_with_mask_before_loading(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "q"
    rc = run_recipe("wagle_zephyr", ["--model_name_or_path", str(target_dir), "--data", str(synthetic_dir),
                                     "--output_dir", str(out), "--bf16", "false", "--load_in_4bit", "true"],
                    monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and "load_in_4bit" in err and "wagle" in err and "float" in err
    assert not out.exists()
