"""The training options that follow the reference implementations (issue 17), each against a
hand computation: IdK-DPO's 2/β, SimNPO's β·δ and weight, the KL retain term over all positions,
per-epoch resampling of retain partners and refusals, RMU's parameter set."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from llm_unlearn.data.pairing import ForgetRetainDataset
from llm_unlearn.scoring import sequence_logprobs_from_logits
from llm_unlearn.trainers.losses import kl_all_positions


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


@pytest.mark.parametrize("scale, factor", [("2/beta", 2 / 0.1), ("one", 1.0)])
def test_idk_dpo_at_reference_is_scale_times_log2(scale, factor, make_trainer):
    # at θ = ref both log-ratios are 0: per item −s·log σ(0) = s·log 2 (s = 2/β = 20 at β = 0.1)
    trainer = make_trainer("idk_dpo", beta=0.1, alpha=0.0, dpo_scale=scale)
    batch = _batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(factor * math.log(2), rel=1e-4)


def test_simnpo_default_weight_and_margin_hand_computed(make_trainer):
    trainer = make_trainer("simnpo", alpha=0.0, beta=2.5, delta=0.4)
    assert trainer.args.gamma == pytest.approx(0.1375)
    batch = _batch(trainer)
    f = batch["forget"]
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
        logp, n = sequence_logprobs_from_logits(logits, f["labels"])
        loss = trainer.compute_loss(trainer.model, batch)
    per_item = [-(2 / 2.5) * math.log(1 / (1 + math.exp(2.5 / int(k) * float(lp) + 2.5 * 0.4)))
                for lp, k in zip(logp, n)]
    assert loss.item() == pytest.approx(0.1375 * sum(per_item) / len(per_item), rel=1e-5)


def test_kl_all_positions_hand_computed():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [0.5, 0.5, 3.0]]])
    ref = torch.zeros_like(logits)
    mask = torch.tensor([[1, 1, 0]])  # the last position is padding
    kl = kl_all_positions(logits, ref, mask)

    def kl_uniform(row):
        z = math.log(sum(math.exp(x) for x in row))
        return sum((1 / 3) * (math.log(1 / 3) - (x - z)) for x in row)

    assert kl[0, 0].item() == pytest.approx(kl_uniform([0.0, 1.0, 2.0]), rel=1e-5)
    assert kl[0, 1].item() == pytest.approx(kl_uniform([1.0, 0.0, -1.0]), rel=1e-5)
    assert kl[0, 2].item() == 0.0


@pytest.mark.parametrize("positions", ["all", "answer"])
def test_kl_retain_term_over_positions(positions, make_trainer):
    trainer = make_trainer("grad_diff", gamma=0.0, alpha=1.0, retain_loss_type="kl", kl_positions=positions)
    with torch.no_grad():  # move θ away from the frozen reference
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _batch(trainer)
    r = batch["retain"]
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        q = torch.log_softmax(trainer.model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, -1)
        p = torch.log_softmax(trainer.ref_model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, -1)
        kl = (p.exp() * (p - q)).sum(-1)  # [B, T]: KL(ref || θ) at each position
        if positions == "all":
            want = (kl * r["attention_mask"]).sum() / r["attention_mask"].sum()
        else:
            answer = r["labels"][:, 1:] != -100  # position t predicts label t+1
            want = (kl[:, :-1] * answer).sum() / answer.sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)


def test_partners_resampled_per_epoch_and_seeded(unlearn_data):
    forget, retain = unlearn_data.forget, unlearn_data.retain
    a = ForgetRetainDataset(forget, retain, seed=3)
    b = ForgetRetainDataset(forget, retain, seed=3)
    first = list(a.retain_index)
    a.set_epoch(1)
    b.set_epoch(1)
    assert a.retain_index == b.retain_index  # seeded
    assert a.retain_index != first  # a new draw
    a.set_epoch(0)
    assert a.retain_index == first
    fixed = ForgetRetainDataset(forget, retain, seed=3, resample=False)
    fixed.set_epoch(2)
    assert fixed.retain_index == first


def test_idk_refusals_resampled_per_epoch(make_trainer):
    trainer = make_trainer("idk_dpo", alpha=1.0, num_train_epochs=3, max_steps=-1,
                           refusals_file=None)
    ds = trainer.train_dataset
    assert len(ds.forget_variants) == 3
    assert "idk_ref_logprob" in ds.forget_variants[0].column_names  # full weights: cached per draw
    per_epoch = []
    for e in range(3):
        ds.set_epoch(e)
        per_epoch.append([tuple(ds[i]["forget"]["idk_input_ids"]) for i in range(len(ds))])
    assert per_epoch[0] != per_epoch[1] and per_epoch[1] != per_epoch[2]
    seen = []
    trainer.add_callback(_Record(ds, seen))
    trainer.train()
    assert seen == [0, 1, 2]  # the trainer moved the dataset to each epoch


class _Record(TrainerCallback):
    def __init__(self, ds, seen):
        self.ds, self.seen = ds, seen

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.seen.append(self.ds.epoch)
