"""NPO-SAM (Fan et al., ICML 2025): the gradient of one micro-batch is the forget term's gradient at
θ + ρ·g/‖g‖ plus the retain term's gradient at θ, and the weights come back to θ exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers import NPOSAMConfig, get_method
from llm_unlearn.trainers.losses import npo_loss


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: {kk: vv.to(trainer.args.device) for kk, vv in v.items()} for k, v in batch.items()}


def _manual_sam_grads(model, batch, counts, rho, beta, alpha, gamma, ref_logp):
    """The SAM gradient written out directly on a copy of the model."""
    m = copy.deepcopy(model).train()
    params = [p for p in m.parameters() if p.requires_grad]

    def forget_term():
        logp, _ = sequence_logprobs(m, batch["forget"])
        return gamma * npo_loss(logp, ref_logp, beta).sum() / counts["forget_items"]

    g = torch.autograd.grad(forget_term(), params)
    norm = torch.sqrt(sum(x.pow(2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g):
            p.add_(rho * x / norm)
    g_adv = torch.autograd.grad(forget_term(), params)
    with torch.no_grad():
        for p, x in zip(params, g):
            p.sub_(rho * x / norm)
    logp_r, _ = sequence_logprobs(m, batch["retain"])
    g_ret = torch.autograd.grad(alpha * (-logp_r.sum() / counts["retain_tokens"]), params)
    return [a + b for a, b in zip(g_adv, g_ret)]


@pytest.mark.parametrize("lora", [False, True])
def test_sam_gradient_is_forget_at_perturbed_plus_retain_at_theta(lora, make_trainer):
    rho, alpha = 0.5, 2.0
    trainer = make_trainer("npo_sam", lora=lora, sam_rho=rho, alpha=alpha, beta=0.1)
    model = trainer.model
    model.train()
    batch = _batch(trainer)
    counts = {k: v.to(trainer.args.device) for k, v in trainer._get_num_items_in_batch([batch], trainer.args.device).items()}
    ref_logp = trainer.reference_logprobs(model, batch["forget"]).detach()
    # the LoRA B factors start at zero: move off zero so the perturbation has an effect everywhere
    if lora:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    expected = _manual_sam_grads(model, batch, counts, rho, 0.1, alpha, 1.0, ref_logp)
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=counts)
    loss.backward()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "weights not restored to θ"
    got = [p.grad for p in model.parameters() if p.requires_grad]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=2e-6, rtol=1e-4)
    # not plain NPO+RT: the perturbation changes the gradient
    model.zero_grad(set_to_none=True)
    plain = make_trainer("npo", lora=lora, alpha=alpha, beta=0.1, model=model)
    plain.compute_loss(model, batch, num_items_in_batch=counts).backward()
    diff = max(float((p.grad - e).abs().max()) for p, e in zip([p for p in model.parameters() if p.requires_grad], expected))
    assert diff > 1e-4


def test_sam_without_retain_term_trains(make_trainer, mean_nll, unlearn_data):
    trainer = make_trainer("npo_sam", alpha=0.0, sam_rho=0.05, learning_rate=5e-4, max_steps=6)
    before = mean_nll(trainer.model, unlearn_data.forget)
    trainer.train()
    assert mean_nll(trainer.model, unlearn_data.forget) > before + 0.2
    assert {"npo", "npo_sam", "sam_grad_norm"} <= set(trainer.state.log_history[0])


def test_config_rejects_negative_rho(tmp_path):
    assert get_method("npo_sam")[1] is NPOSAMConfig
    with pytest.raises(UnlearnError, match="sam_rho must be >= 0"):
        NPOSAMConfig(output_dir=str(tmp_path), sam_rho=-0.1)
