"""The reference model without a second copy: LoRA with adapters disabled is exactly the base;
the full-weight cache equals a frozen copy's values; KL keeps (only) a frozen copy."""

from __future__ import annotations

import copy

import torch

from llm_unlearn.scoring import model_logits, sequence_logprobs


def test_lora_disabled_adapters_equal_base_exactly(make_trainer, load_target):
    base = load_target().eval()
    trainer = make_trainer("npo", lora=True, max_steps=3, learning_rate=1e-2, alpha=0.0)
    trainer.train()  # adapters are now non-zero
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))["forget"]
    with torch.no_grad():
        base_logits = model_logits(base, batch)
        with trainer.reference_mode(trainer.model) as ref:
            ref_logits = model_logits(ref, batch)
        trainer.model.eval()
        tuned_logits = model_logits(trainer.model, batch)
    assert torch.equal(ref_logits, base_logits)
    assert not torch.allclose(tuned_logits, base_logits)


def test_cached_full_weight_reference_equals_frozen_copy(make_trainer, load_target, unlearn_data):
    model = load_target()
    frozen = copy.deepcopy(model).eval()
    trainer = make_trainer("npo", model=model, max_steps=3, alpha=0.0)
    assert trainer.ref_model is None  # NPO with full weights needs no second copy
    cached = torch.tensor(trainer.train_dataset.forget["ref_logprob"])
    trainer.train()
    with torch.no_grad():
        values = []
        for i in range(len(unlearn_data.forget)):
            item = unlearn_data.forget[i]
            batch = {k: torch.tensor([item[k]]) for k in ("input_ids", "attention_mask", "labels")}
            values.append(sequence_logprobs(frozen, batch)[0].item())
    assert torch.allclose(cached, torch.tensor(values), atol=1e-4)
    # the cache is the model before unlearning, not after
    trained = [sequence_logprobs(trainer.model.eval(), {k: torch.tensor([unlearn_data.forget[0][k]])
                                                        for k in ("input_ids", "attention_mask", "labels")})[0].item()]
    assert abs(trained[0] - values[0]) > 1e-2


def test_idk_dpo_caches_both_answers(make_trainer):
    trainer = make_trainer("idk_dpo", max_steps=1)
    cols = trainer.train_dataset.forget.column_names
    assert {"ref_logprob", "idk_ref_logprob", "idk_input_ids", "idk_labels"} <= set(cols)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["idk"]["ref_logprob"].shape == (4,)
    assert batch["forget"]["ref_logprob"].shape == (4,)


def test_kl_retain_term_frozen_copy_and_lora(make_trainer):
    full = make_trainer("grad_diff", retain_loss_type="kl", alpha=1.0)
    assert full.ref_model is not None and not any(p.requires_grad for p in full.ref_model.parameters())
    lora = make_trainer("grad_diff", lora=True, retain_loss_type="kl", alpha=1.0)
    assert lora.ref_model is None  # adapters disabled instead
    for trainer in (full, lora):
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.eval()
        with torch.no_grad():
            kl, _ = trainer.retain_term(trainer.model, batch["retain"], {"retain_tokens": torch.tensor(50)})
        assert abs(kl.item()) < 1e-5  # θ = ref at the start
