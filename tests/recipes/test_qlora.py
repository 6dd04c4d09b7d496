"""QLoRA unlearning on CPU: a 4-bit (bitsandbytes NF4) tiny base + LoRA, one NPO step changes the
adapter and nothing else."""

from __future__ import annotations

import torch


def test_qlora_npo_step_changes_only_adapter(tiny_model, tiny_tokenizer, synthetic_dir, tmp_path):
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
               processing_class=tiny_tokenizer).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "no parameter changed"
    assert all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)
    for n, b in model.named_buffers():
        assert torch.equal(b, packed[n]), n
