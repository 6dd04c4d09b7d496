"""`OneGraph` (llm_unlearn/scoring.py): with the optimizer step in backward, a step's forget /
retain / refusal forwards run as one batched forward. Every method's loss and gradients equal the
separate forwards', and no weight's gradient waits for a second graph."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.scoring import OneGraph, sequence_logprobs
from llm_unlearn.trainers.base import batch_counts

METHODS = [("npo", {}), ("grad_diff", {}), ("simnpo", {}), ("idk_dpo", {}), ("grad_ascent", {}),
           ("npo", {"retain_loss_type": "kl"}), ("grad_diff", {"retain_loss_type": "kl", "kl_positions": "all"}),
           ("rmu", {}), ("npo_sam", {})]


def _loss_and_grads(trainer, batch, one_graph: bool):
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    counts = batch_counts([batch])
    parts = [batch[k] for k in trainer.one_graph_parts() if k in batch]
    runner = OneGraph(model, parts) if one_graph and len(parts) > 1 else model
    forwards = []  # training forwards (with grad) of the model
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1) if torch.is_grad_enabled() else None)
    loss, _ = trainer.unlearn_loss(runner, batch, counts)
    handle.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, len(forwards)


@pytest.mark.parametrize("method,fields", METHODS, ids=[f"{m}{'-' + '-'.join(f.values()) if f else ''}" for m, f in METHODS])
def test_every_method_loss_is_unchanged(method, fields, make_trainer):
    alpha = {} if method == "grad_ascent" else {"alpha": 1.0}
    trainer = make_trainer(method, max_steps=1, split_backward=False, **alpha, **fields)
    batch = next(iter(trainer.get_train_dataloader()))
    plain, g_plain, n_plain = _loss_and_grads(trainer, batch, one_graph=False)
    joint, g_joint, n_joint = _loss_and_grads(trainer, batch, one_graph=True)
    parts = [k for k in trainer.one_graph_parts() if k in batch]
    if len(parts) > 1:  # forget + retain (+ refusals): one training forward instead of one per part
        assert (n_plain, n_joint) == (len(parts), 1)
    else:  # opted out (RMU, NPO-SAM), a single part, or the all-positions KL: nothing changes
        assert n_joint == n_plain
    assert plain.item() == pytest.approx(joint.item(), rel=1e-6, abs=1e-6)
    assert g_plain.keys() == g_joint.keys() and g_plain
    for n in g_plain:
        torch.testing.assert_close(g_joint[n], g_plain[n], rtol=1e-4, atol=1e-6)


def test_parts_of_different_lengths_and_fallthrough(make_trainer):
    trainer = make_trainer("npo", alpha=1.0, max_steps=1)
    model = trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    forget, retain = batch["forget"], batch["retain"]
    retain = {k: v[:, :-3] for k, v in retain.items()}  # a shorter part: the joint forward pads it
    assert forget["input_ids"].shape[1] != retain["input_ids"].shape[1]
    oneg = OneGraph(model, [forget, retain])
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        a = [sequence_logprobs(model, p)[0] for p in (forget, retain)]
    calls.clear()
    b = [sequence_logprobs(oneg, p)[0] for p in (forget, retain)]
    assert len(calls) == 1  # both parts from one forward
    for x, y in zip(a, b):
        torch.testing.assert_close(y.detach(), x, rtol=1e-6, atol=1e-5)
    with torch.no_grad():  # no grad: the model itself, not the joint logits
        sequence_logprobs(oneg, forget)
    assert len(calls) == 2
    other = {k: v.clone() for k, v in forget.items()}  # not one of the parts
    sequence_logprobs(oneg, other)
    assert len(calls) == 3


def test_no_gradient_waits_for_a_second_graph(make_trainer):
    """Over separate forget / retain graphs, backward computes the later graph's gradient of every
    linear weight long before the weight's update (it waits for the earlier graph's part): a full
    gradient buffer. With the in-backward step the trainer runs one graph: a weight's gradient is
    applied right after it is computed."""

    def most_pending(trainer) -> int:
        # a weight is pending from when a gradient reaches its linear's output (its weight gradient
        # is computed next) until its update
        pending, most = set(), [0]

        def reached(w):
            pending.add(w)
            most[0] = max(most[0], len(pending))

        def forward(mod, _inputs, out):
            if out.grad_fn is not None:
                out.grad_fn.register_prehook(lambda _grad, w=mod.weight: reached(w))

        for mod in trainer.model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.weight.requires_grad:
                mod.register_forward_hook(forward)
                mod.weight.register_post_accumulate_grad_hook(lambda p: pending.discard(p))
        trainer.train()
        return most[0]

    n_linear = sum(isinstance(m, torch.nn.Linear) for m in make_trainer("npo").model.modules())
    fields = dict(alpha=1.0, max_steps=2, optim="sgd", optim_in_backward=True)
    assert most_pending(make_trainer("npo", **fields)) <= 4  # the tied head waits for the embedding's part
    # the same run without the joint forward: the later graph's gradients pile up
    two_graphs = make_trainer("npo", **fields)
    two_graphs.one_graph_parts = lambda: ()
    assert most_pending(two_graphs) >= n_linear // 2
