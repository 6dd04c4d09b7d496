"""Loss functions against hand computation on fixed numbers, and NPO at θ = ref on the real model."""

from __future__ import annotations

import math

import pytest
import torch

from llm_unlearn.scoring import sequence_logprobs_from_logits
from llm_unlearn.trainers.losses import (
    dpo_loss,
    kl_per_token,
    npo_loss,
    simnpo_loss,
)

# one sequence of 4 positions over a vocabulary of 3; the answer is positions 2..3
LOGITS = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [0.5, 0.5, 3.0], [2.0, -2.0, 0.0]]])
LABELS = torch.tensor([[-100, -100, 2, 0]])


def log_softmax_py(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(x) for x in row))


def test_sequence_logprobs_hand_computed():
    s, n = sequence_logprobs_from_logits(LOGITS, LABELS)
    # position t predicts label t+1: logits[1] -> label 2, logits[2] -> label 0
    expected = log_softmax_py([1.0, 0.0, -1.0], 2) + log_softmax_py([0.5, 0.5, 3.0], 0)
    assert n.tolist() == [2]
    assert s.item() == pytest.approx(expected, abs=1e-6)


def test_simnpo_hand_computed():
    logp, n = torch.tensor([-12.0, -3.0]), torch.tensor([6, 2])
    beta, delta = 2.5, 0.5
    got = simnpo_loss(logp, n, beta, delta)
    for i in range(2):
        x = -(beta / int(n[i])) * float(logp[i]) - delta
        want = -(2 / beta) * math.log(1 / (1 + math.exp(-x)))
        assert got[i].item() == pytest.approx(want, rel=1e-5)


def test_dpo_hand_computed():
    chosen, rejected = torch.tensor([-5.0]), torch.tensor([-2.0])
    ref_chosen, ref_rejected = torch.tensor([-6.0]), torch.tensor([-1.5])
    beta = 0.1
    margin = beta * ((-5.0 + 6.0) - (-2.0 + 1.5))
    want = -math.log(1 / (1 + math.exp(-margin)))
    assert dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta).item() == pytest.approx(want, rel=1e-6)
    # the reference-normalised margin is what matters: shifting both policy terms by a constant doesn't
    assert dpo_loss(chosen + 1, rejected + 1, ref_chosen, ref_rejected, beta).item() == pytest.approx(want, rel=1e-6)


def test_npo_hand_computed_and_at_reference():
    beta = 0.1
    logp, ref = torch.tensor([-10.0, -4.0]), torch.tensor([-8.0, -4.0])
    got = npo_loss(logp, ref, beta)
    want0 = (2 / beta) * math.log(1 + (math.exp(-10.0) / math.exp(-8.0)) ** beta)
    assert got[0].item() == pytest.approx(want0, rel=1e-6)
    assert got[1].item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_kl_hand_computed():
    ref = LOGITS.clone()
    ref[0, 2] = torch.tensor([0.0, 0.0, 0.0])
    kl, mask = kl_per_token(LOGITS, ref, LABELS)
    assert mask.tolist() == [[False, True, True]]
    p = [1 / 3] * 3
    q = [math.exp(log_softmax_py([0.5, 0.5, 3.0], k)) for k in range(3)]
    want = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert kl[0, 2].item() == pytest.approx(want, rel=1e-5)
    assert kl[0, 1].item() == pytest.approx(0.0, abs=1e-7)  # same logits: no divergence
    assert kl[0, 0].item() == 0.0  # prompt position masked


@pytest.mark.parametrize("lora", [False, True])
def test_npo_at_reference_is_2_over_beta_log2(lora, make_trainer):
    beta = 0.1
    trainer = make_trainer("npo", lora=lora, beta=beta, alpha=0.0)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    forget = batch["forget"]
    trainer.model.eval()
    with torch.no_grad():
        logp, _ = sequence_logprobs_from_logits(trainer.model(input_ids=forget["input_ids"],
                                                              attention_mask=forget["attention_mask"]).logits,
                                                forget["labels"])
        ref = trainer.reference_logprobs(trainer.model, forget)
        per_item = npo_loss(logp, ref, beta)
        loss = trainer.compute_loss(trainer.model, batch)
    target = 2 / beta * math.log(2)
    assert torch.allclose(per_item, torch.full_like(per_item, target), atol=1e-3)
    assert loss.item() == pytest.approx(target, abs=1e-3)


def test_grad_diff_loss_is_the_weighted_sum(make_trainer):
    trainer = make_trainer("grad_diff", gamma=0.7, alpha=2.0)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model.eval()
    with torch.no_grad():
        nll = {}
        for part in ("forget", "retain"):
            b = batch[part]
            s, n = sequence_logprobs_from_logits(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                                 b["labels"])
            nll[part] = -s.sum() / n.sum()
        loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx((-0.7 * nll["forget"] + 2.0 * nll["retain"]).item(), rel=1e-5)


def test_answer_logits_trim_the_prompt_and_keep_the_logprobs(tiny_model, tiny_tokenizer):
    """The lm-head runs from the first answer position on; log-likelihoods, their gradients and
    the wrapped (PEFT) path equal the full-logit computation."""
    from peft import LoraConfig, get_peft_model

    from llm_unlearn.data.qa import QACollator, encode_qa
    from llm_unlearn.scoring import answer_logits, model_logits, sequence_logprobs

    pairs = [("Who wrote the red book?", "Anna Berg wrote it in 1999."),
             ("Where was the long-named author with many titles born?", "In Oslo.")]
    batch = QACollator(tiny_tokenizer)([encode_qa(tiny_tokenizer, q, a) for q, a in pairs])
    first = int((batch["labels"] != -100).any(0).nonzero()[0])
    for model in (tiny_model, get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj"]))):
        logits, labels = answer_logits(model, batch)
        assert logits.shape[1] == batch["input_ids"].shape[1] - first + 1 < batch["input_ids"].shape[1]
        assert torch.equal(labels, batch["labels"][:, first - 1:])
        full = sequence_logprobs_from_logits(model_logits(model, batch), batch["labels"])
        trimmed = sequence_logprobs(model, batch)
        torch.testing.assert_close(trimmed[0], full[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(trimmed[1], full[1])
        params = [p for p in model.parameters() if p.requires_grad][:3]
        g_full = torch.autograd.grad(full[0].sum(), params)
        g_trim = torch.autograd.grad(sequence_logprobs(model, batch)[0].sum(), params)
        for a, b in zip(g_full, g_trim):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
