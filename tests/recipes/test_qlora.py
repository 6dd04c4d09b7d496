"""QLoRA unlearning on CPU: a 4-bit (bitsandbytes NF4) tiny base + LoRA, one NPO step changes the
adapter and nothing else."""

from __future__ import annotations

import pytest
import torch


def _qlora_npo(tiny_model, tiny_tokenizer, synthetic_dir, tmp_path, weight_mask=None):
    """A 4-bit tiny base + fresh LoRA, trained 2 NPO steps; returns (model, parameters before, buffers before)."""
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import attach_lora, load_model
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    tiny_model.save_pretrained(str(tmp_path / "base"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "base"))
    model = attach_lora(load_model(str(tmp_path / "base"), load_in_4bit=True), r=4, alpha=8, quantized=True)
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())
    forget, _ = tokenize_qa_dataset(load_tofu("forget10", str(synthetic_dir)), tiny_tokenizer, max_length=64)
    retain, _ = tokenize_qa_dataset(load_tofu("retain90", str(synthetic_dir)).select(range(10)), tiny_tokenizer, max_length=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    packed = {n: b.detach().clone() for n, b in model.named_buffers()}
    args = NPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                     warmup_steps=0, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no")
    NPOTrainer(model=model, args=args, train_dataset=ForgetRetainDataset(forget, retain, seed=0),
               processing_class=tiny_tokenizer, weight_mask=weight_mask).train()
    return model, before, packed


def test_qlora_npo_step_changes_only_adapter(tiny_model, tiny_tokenizer, synthetic_dir, tmp_path):
    model, before, packed = _qlora_npo(tiny_model, tiny_tokenizer, synthetic_dir, tmp_path)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "no parameter changed"
    assert all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)
    for n, b in model.named_buffers():
        assert torch.equal(b, packed[n]), n


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_qlora_with_a_precomputed_mask(granularity, tiny_model, tiny_tokenizer, synthetic_dir, tmp_path):
    """A mask computed on the float model (as `llm-unlearn mask` writes it) is enforced on the LoRA
    of the 4-bit base: shapes are checked against the unpacked weight shapes, and the update
    ΔW = B·A (element: M ⊙ B·A) of every layer is exactly zero outside the mask."""
    from llm_unlearn.masks import compute_mask, load_mask
    from llm_unlearn.masks.weight_mask import base_param_name

    path = compute_mask(tiny_model, method="random", ratio=0.5, granularity=granularity, seed=1).save(tmp_path / "m.st")
    mask = load_mask(path)
    model, before, _ = _qlora_npo(tiny_model, tiny_tokenizer, synthetic_dir, tmp_path, weight_mask=mask)
    inside = outside = 0
    for name, module in model.named_modules():
        if not hasattr(module, "lora_B") or "default" not in getattr(module, "lora_B", {}):
            continue
        delta = module.get_delta_weight("default")
        m = mask.expanded(base_param_name(name) + ".weight")
        assert delta.shape == m.shape
        outside += int(torch.count_nonzero(delta[~m]))
        inside += int(torch.count_nonzero(delta[m]))
    assert outside == 0 and inside > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_mask_with_wrong_shapes_is_refused_on_a_4bit_base(tiny_model, tiny_tokenizer, tmp_path):
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.masks import WeightMask
    from llm_unlearn.models import attach_lora, load_model

    tiny_model.save_pretrained(str(tmp_path / "base"))
    model = attach_lora(load_model(str(tmp_path / "base"), load_in_4bit=True), r=4, alpha=8, quantized=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    out, inp = tiny_model.get_parameter(name).shape
    WeightMask({name: torch.ones(out, inp, dtype=torch.bool)}).validate(model)  # the unpacked shape is accepted
    with pytest.raises(UnlearnError, match="q_proj"):
        WeightMask({name: torch.ones(out, inp + 1, dtype=torch.bool)}).validate(model)
