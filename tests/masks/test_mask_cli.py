"""`llm-unlearn mask` and a mask inside a real UnlearnTrainer (grad_diff, NPO with LoRA)."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.cli import main
from llm_unlearn.masks import compute_mask, load_mask
from llm_unlearn.masks.weight_mask import named_base_parameters


@pytest.fixture()
def model_dir(tmp_path, tiny_model, tiny_tokenizer):
    out = tmp_path / "tiny"
    tiny_model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


def test_mask_cli_writes_file_prints_summary_and_refuses_overwrite(model_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "mask.safetensors"
    argv = ["mask", "--model", str(model_dir), "--data", str(synthetic_dir), "--forget-split", "forget10",
            "--retain-split", "retain90", "--method", "wagle", "--ratio", "0.8", "--max-retain", "20",
            "--batch-size", "10", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and "model.layers.0.self_attn.q_proj.weight" in printed
    mask = load_mask(out)
    assert mask.density() == pytest.approx(0.8, abs=1e-6) and mask.meta["method"] == "wagle"
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(argv[:-2] + ["--method", "salun", "--scope", "per_layer", "--granularity", "row",
                             "--output", str(out), "--overwrite"]) == 0
    assert load_mask(out).granularity == "row"


def test_mask_cli_bad_ratio(model_dir, synthetic_dir, tmp_path, capsys):
    rc = main(["mask", "--model", str(model_dir), "--data", str(synthetic_dir), "--ratio", "1.5",
               "--output", str(tmp_path / "m.safetensors")])
    assert rc == 2 and "ratio must be in (0, 1]" in capsys.readouterr().err


def _paired(qa_sets):
    from llm_unlearn.data.pairing import ForgetRetainDataset

    return ForgetRetainDataset(*qa_sets, seed=0)


def test_grad_diff_trainer_with_mask_keeps_frozen_weights(tmp_path, tiny_model, tiny_tokenizer, qa_sets, loaders):
    from llm_unlearn.trainers import GradDiffConfig, GradDiffTrainer

    mask = compute_mask(tiny_model, *loaders, method="wagle", ratio=0.5, progress=False)
    start = {n: p.detach().clone() for n, p in named_base_parameters(tiny_model).items()}
    cfg = GradDiffConfig(output_dir=str(tmp_path / "gd"), max_steps=3, learning_rate=1e-2, weight_decay=0.1,
                         per_device_train_batch_size=5, use_cpu=True, disable_tqdm=True, warmup_steps=0)
    trainer = GradDiffTrainer(model=tiny_model, args=cfg, train_dataset=_paired(qa_sets),
                              processing_class=tiny_tokenizer, weight_mask=mask)
    trainer.train()
    moved = 0
    for name, p in named_base_parameters(tiny_model).items():
        keep = ~mask.expanded(name) if name in mask else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p[keep], start[name][keep]), name
        moved += int((p[~keep] != start[name][~keep]).sum())
    assert moved > 0.9 * mask.allowed()


def test_npo_lora_row_mask_merged_update_inside_mask(tmp_path, tiny_model, tiny_tokenizer, qa_sets, loaders):
    from llm_unlearn.models import attach_lora
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    start = {n: p.detach().clone() for n, p in named_base_parameters(tiny_model).items()}
    peft_model = attach_lora(tiny_model, r=4, alpha=8)
    # scored on the PEFT model: adapters off, i.e. the base weights, keys are base names
    mask = compute_mask(peft_model, *loaders, method="wagle", ratio=0.3, granularity="row", progress=False)
    assert "model.layers.0.self_attn.q_proj.weight" in mask
    cfg = NPOConfig(output_dir=str(tmp_path / "npo"), max_steps=3, learning_rate=5e-2, weight_decay=0.1,
                    per_device_train_batch_size=5, use_cpu=True, disable_tqdm=True, warmup_steps=0)
    trainer = NPOTrainer(model=peft_model, args=cfg, train_dataset=_paired(qa_sets),
                         processing_class=tiny_tokenizer, weight_mask=mask)
    trainer.train()
    merged = trainer.model.merge_and_unload()
    for name, p in merged.named_parameters():
        keep = ~mask.expanded(name) if name in mask else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p[keep], start[name][keep]), name
