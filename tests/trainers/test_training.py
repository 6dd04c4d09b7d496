"""Trainer mechanics: gradient accumulation, resume, divergence guard, LoRA with gradient checkpointing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_unlearn.errors import DivergenceError
from llm_unlearn.trainers.grad_ascent import GradAscentTrainer


@pytest.mark.parametrize("method,fields", [("npo", {"alpha": 1.0}), ("grad_diff", {"retain_loss_type": "kl"})])
def test_grad_accumulation_2x2_equals_batch_4(method, fields, make_trainer, snapshot):
    # SGD: the update is proportional to the gradient, so a normalisation error would show
    common = dict(max_steps=1, optim="sgd", learning_rate=0.05, weight_decay=0.0, max_grad_norm=0.0, **fields)
    one = make_trainer(method, per_device_train_batch_size=4, gradient_accumulation_steps=1, **common)
    start = snapshot(one.model)
    one.train()
    two = make_trainer(method, per_device_train_batch_size=2, gradient_accumulation_steps=2, **common)
    two.train()
    w1, w2 = snapshot(one.model), snapshot(two.model)
    delta = max((w1[n] - start[n]).abs().max().item() for n in w1)
    assert delta > 1e-4  # the step moved the weights
    for n in w1:
        assert torch.allclose(w1[n], w2[n], atol=1e-6, rtol=1e-4), n
    assert one.state.log_history[-1]["train_loss"] == pytest.approx(two.state.log_history[-1]["train_loss"], rel=1e-4)


def test_resume_reaches_the_same_weights(make_trainer, tmp_path, snapshot):
    # 6 steps of 2 items over 10 forget items: crosses an epoch boundary after the checkpoint at 3
    fields = dict(max_steps=6, per_device_train_batch_size=2, save_strategy="steps", save_steps=3, alpha=1.0)
    full = make_trainer("npo", output_dir=str(tmp_path / "a"), **fields)
    full.train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / "optimizer.pt").is_file()
    resumed = make_trainer("npo", output_dir=str(tmp_path / "b"), **fields)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = snapshot(full.model), snapshot(resumed.model)
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6), n
    assert resumed.state.global_step == 6


class NaNAtStep3(GradAscentTrainer):
    def unlearn_loss(self, model, inputs, counts):
        loss, terms = super().unlearn_loss(model, inputs, counts)
        if self.state.global_step == 2:
            loss = loss * float("nan")
        return loss, terms


def test_divergence_stops_and_keeps_last_good_checkpoint(make_trainer, tmp_path, snapshot):
    out = tmp_path / "div"
    trainer = make_trainer("grad_ascent", trainer_cls=NaNAtStep3, output_dir=str(out), max_steps=6,
                           per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    with pytest.raises(DivergenceError, match=r"loss became nan at step 3.*checkpoint-2") as info:
        trainer.train()
    assert info.value.step == 3
    assert Path(info.value.checkpoint) == out / "checkpoint-2"
    weights = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "checkpoint-4").exists()
    # the non-finite loss never reached the weights
    assert all(torch.isfinite(p).all() for p in snapshot(trainer.model).values())


def test_lora_gradient_checkpointing_matches_plain(make_trainer, snapshot):
    runs = []
    for checkpointing in (False, True):
        trainer = make_trainer("npo", lora=True, max_steps=2, learning_rate=1e-2, alpha=1.0,
                               activation_checkpointing=checkpointing)
        trainer.train()
        assert trainer.model.get_base_model().is_activation_checkpointing == checkpointing
        runs.append({n: w for n, w in snapshot(trainer.model).items() if "lora_" in n})
    plain, ckpt = runs
    assert any(w.abs().sum() > 0 for n, w in plain.items() if "lora_B" in n)  # adapters trained
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-5), n


def test_logged_terms_are_finite_means(make_trainer):
    trainer = make_trainer("grad_diff", max_steps=4, logging_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert math.isfinite(h["forget_nll"]) and math.isfinite(h["retain_nll"])
        # the logged loss is the combination of the logged terms (γ=α=1, retain term = NLL)
        assert h["loss"] == pytest.approx(-h["forget_nll"] + h["retain_loss"], abs=1e-3)


@pytest.mark.parametrize("method,lora,fields", [
    ("npo", False, {"alpha": 1.0}),
    ("grad_diff", False, {"retain_loss_type": "kl"}),
    ("simnpo", True, {"alpha": 2.0}),
])
def test_split_backward_gives_the_joint_update(method, lora, fields, make_trainer, snapshot):
    """Backwarding the forget term before the retain forward (two backward calls per micro-batch)
    gives the update of one joint backward; the logged loss is the total."""
    common = dict(max_steps=2, optim="sgd", learning_rate=0.05, weight_decay=0.0, max_grad_norm=0.0,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2, **fields)
    runs = []
    for split in (True, False):
        trainer = make_trainer(method, lora=lora, split_backward=split, **common)
        start = snapshot(trainer.model)
        calls: list[int] = []
        trainer.accelerator.backward = (lambda loss, calls=calls, backward=trainer.accelerator.backward, **kw:
                                        calls.append(1) or backward(loss, **kw))
        trainer.train()
        assert len(calls) == (8 if split else 4)  # 2 steps x 2 micro-batches (x 2 with the split)
        runs.append((start, snapshot(trainer.model), trainer.state.log_history[-1]["train_loss"]))
    (start, split_w, split_loss), (_, joint_w, joint_loss) = runs
    assert max((split_w[n] - start[n]).abs().max().item() for n in split_w) > 1e-4
    for n in split_w:
        assert torch.allclose(split_w[n], joint_w[n], atol=1e-6, rtol=1e-4), n
    assert split_loss == pytest.approx(joint_loss, rel=1e-5)
