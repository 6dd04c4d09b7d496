"""Enforcement: frozen weights stay bit-identical through training (full weights, AdamW with
weight decay) and LoRA's merged update is exactly zero outside the mask."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks import compute_mask, enforce_mask
from llm_unlearn.masks.weight_mask import named_base_parameters


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in named_base_parameters(model).items()}


def test_full_weights_frozen_entries_bit_identical_after_adamw_with_weight_decay(tiny_model, loaders, make_trainer):
    mask = compute_mask(tiny_model, *loaders, method="wagle", ratio=0.6, scope="per_layer", progress=False)
    start = _snapshot(tiny_model)
    trainer = make_trainer(tiny_model, mask=mask, steps=5, weight_decay=0.1)
    trainer.train()
    moved = total = 0
    for name, p in named_base_parameters(tiny_model).items():
        if name not in mask:  # embeddings, norms, lm_head: not covered -> fixed
            assert torch.equal(p, start[name]), name
            continue
        m = mask[name]
        assert torch.equal(p[~m], start[name][~m]), name  # bit-identical
        moved += int((p[m] != start[name][m]).sum())
        total += int(m.sum())
        state = trainer.optimizer.state[p]
        assert torch.count_nonzero(state["exp_avg"][~m]) == 0 and torch.count_nonzero(state["exp_avg_sq"][~m]) == 0
    assert moved > 0.95 * total  # the allowed weights did train


def test_without_the_optimizer_hook_weight_decay_moves_zero_grad_weights(tiny_model, loaders):
    """Why the post-step restore exists: zero gradients alone do not keep AdamW off a weight."""
    mask = compute_mask(tiny_model, *loaders, method="salun", ratio=0.5, progress=False)
    enforcer = enforce_mask(tiny_model, mask)  # gradient hooks only, no optimizer attached
    name = "model.layers.0.mlp.up_proj.weight"
    p = dict(tiny_model.named_parameters())[name]
    start = p.detach().clone()
    opt = torch.optim.AdamW([q for q in tiny_model.parameters() if q.requires_grad], lr=1e-2, weight_decay=0.1)
    batch = next(iter(loaders[0]))
    for _ in range(2):
        (-tiny_model(**batch).loss).backward()
        assert torch.count_nonzero(p.grad[~mask[name]]) == 0
        opt.step()
        opt.zero_grad()
    assert not torch.equal(p[~mask[name]], start[~mask[name]])
    enforcer.attach_optimizer(opt)  # from now on every step restores them
    (-tiny_model(**batch).loss).backward()
    opt.step()
    assert torch.equal(p[~mask[name]], start[~mask[name]])
    enforcer.remove()
    assert all(q.requires_grad for q in tiny_model.parameters())


def _lora(model, r: int = 4):
    from llm_unlearn.models import attach_lora

    return attach_lora(model, r=r, alpha=8)


def test_resumed_optimizer_moments_at_frozen_entries_are_cleared_and_stay_zero(tiny_model, loaders):
    """A state resumed from an unmasked run holds moments at frozen entries: the first masked step
    clears them, and zero gradients keep them zero (later steps do not clear again)."""
    mask = compute_mask(tiny_model, *loaders, method="salun", ratio=0.5, progress=False)
    params = [q for q in tiny_model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    batch = next(iter(loaders[0]))
    (-tiny_model(**batch).loss).backward()
    opt.step()  # unmasked: moments everywhere
    opt.zero_grad()
    name = "model.layers.0.mlp.up_proj.weight"
    p = dict(tiny_model.named_parameters())[name]
    frozen = ~mask[name]
    assert torch.count_nonzero(opt.state[p]["exp_avg"][frozen]) > 0
    start = p.detach().clone()
    enforcer = enforce_mask(tiny_model, mask)
    enforcer.attach_optimizer(opt)
    for _ in range(3):
        (-tiny_model(**batch).loss).backward()
        opt.step()
        opt.zero_grad()
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(opt.state[p][key][frozen]) == 0, key
        assert torch.equal(p[frozen], start[frozen])
    assert torch.count_nonzero(opt.state[p]["exp_avg"][~frozen]) > 0


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_lora_merged_update_exactly_zero_outside_mask(tiny_model, loaders, make_trainer, granularity):
    mask = compute_mask(tiny_model, *loaders, method="wagle", ratio=0.5, granularity=granularity, progress=False)
    start = _snapshot(tiny_model)
    peft_model = _lora(tiny_model)
    trainer = make_trainer(peft_model, mask=mask, steps=4, lr=5e-2, weight_decay=0.1)
    assert set(trainer.mask_enforcer.lora_granularity.values()) == {granularity}
    trainer.train()
    peft_model.eval()
    batch = next(iter(loaders[0]))
    with torch.no_grad():
        logits_adapter = peft_model(**batch).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        logits_merged = merged(**batch).logits
    torch.testing.assert_close(logits_adapter, logits_merged, rtol=1e-4, atol=1e-4)  # forward == merged weights
    changed_inside = 0
    for name, p in merged.named_parameters():
        if name not in mask:
            assert torch.equal(p, start[name]), name
            continue
        frozen = ~mask.expanded(name)
        assert torch.equal(p[frozen], start[name][frozen]), name  # merged ΔW exactly zero outside the mask
        changed_inside += int((p[~frozen] != start[name][~frozen]).sum())
    assert changed_inside > 0.5 * mask.allowed()


def test_lora_refuses_an_adapter_that_already_changes_frozen_weights(tiny_model, loaders):
    mask = compute_mask(tiny_model, method="random", ratio=0.5, granularity="row")
    peft_model = _lora(tiny_model)
    lora_b = dict(peft_model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    with torch.no_grad():
        lora_b.fill_(0.1)
    with pytest.raises(UnlearnError, match="fresh LoRA adapter"):
        enforce_mask(peft_model, mask)


def test_lora_layers_outside_the_mask_are_frozen(tiny_model):
    mask = compute_mask(tiny_model, method="magnitude", ratio=0.5, target_modules=r"mlp\.down_proj$")
    peft_model = _lora(tiny_model)
    enforce_mask(peft_model, mask)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("down_proj" in n for n in trainable)


def test_mask_for_another_model_is_refused(tiny_model, tiny_tokenizer, make_trainer):
    from llm_unlearn.models import build_tiny_model

    other = build_tiny_model(tiny_tokenizer, hidden_size=64, intermediate_size=128, num_layers=2)
    mask = compute_mask(other, method="magnitude", ratio=0.5)
    with pytest.raises(UnlearnError, match="'model.layers.0.self_attn.q_proj.weight' has shape"):
        make_trainer(tiny_model, mask=mask)


def test_row_mask_on_full_weights_with_plain_adamw():
    from torch import nn

    from llm_unlearn.masks import select_mask

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False))
    mask = select_mask({"0.weight": torch.rand(5, 6), "1.weight": torch.rand(4, 5)}, 0.5, "per_layer", "row")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    enforce_mask(model, mask, optimizer=opt)
    for _ in range(3):
        model(torch.randn(3, 6)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        frozen = ~mask.expanded(n)
        assert torch.equal(p[frozen], start[n][frozen]) and bool((p[~frozen] != start[n][~frozen]).all())


def test_element_masked_lora_one_matmul_path_equals_two_matmul_path(tiny_model, loaders, monkeypatch):
    """On a float base the element-masked LoRA layer runs x·(W + M⊙BA·s)ᵀ: the same logits and
    adapter gradients as x·Wᵀ + x·(M⊙BA·s)ᵀ."""
    import copy

    from llm_unlearn.masks import enforce as enforce_module

    mask = compute_mask(tiny_model, *loaders, method="wagle", ratio=0.5, progress=False)
    batch = next(iter(loaders[0]))
    results = []
    real = enforce_module._fusable
    for fused in (True, False):
        model = _lora(copy.deepcopy(tiny_model))
        with torch.no_grad():  # a trained-looking adapter: B ≠ 0, so ΔW matters
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(len(n))) * 0.1)
        enforce_mask(model, mask, trained_adapter=True)
        calls: list[int] = []
        monkeypatch.setattr(enforce_module, "_fusable",
                            lambda *a, fused=fused, calls=calls: calls.append(1) or (fused and real(*a)))
        out = model(**batch)
        out.loss.backward()
        assert calls  # the element path ran
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logits.detach(), grads))
    (logits_f, grads_f), (logits_u, grads_u) = results
    assert grads_f and grads_f.keys() == grads_u.keys()
    torch.testing.assert_close(logits_f, logits_u, rtol=1e-5, atol=1e-5)
    for n in grads_f:
        torch.testing.assert_close(grads_f[n], grads_u[n], rtol=1e-4, atol=1e-6)
