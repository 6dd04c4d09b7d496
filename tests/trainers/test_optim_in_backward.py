"""`optim_in_backward`: the optimizer step inside backward (llm_unlearn/optim.py) through the
UnlearnTrainer: the same weights as the ordinary step, no full gradient buffer, masks hold,
scheduler / logging / checkpoints / accumulation / activation checkpointing still work."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.optim import OptimizerInBackward

NPO = dict(alpha=1.0, max_steps=3, learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor"])
def test_in_backward_equals_the_ordinary_step(optim, make_trainer, snapshot):
    # the same forward as the in-backward run (forget and retain as one batch, `OneGraph`), so the
    # gradients are bitwise equal and only the update's arithmetic is compared (AdamW's g/√v turns
    # float-order differences of near-zero gradients into lr-sized ones)
    ordinary = make_trainer("npo", optim=optim, split_backward=False, **NPO)
    ordinary.runs_one_graph = lambda model: model.training and torch.is_grad_enabled()
    start = snapshot(ordinary.model)
    ordinary.train()
    fused = make_trainer("npo", optim=optim, optim_in_backward=True, **NPO)
    fused.train()
    assert isinstance(fused.in_backward, OptimizerInBackward)
    n_params = sum(1 for p in fused.model.parameters() if p.requires_grad)
    assert fused.in_backward.updates == 3 * n_params  # every parameter, once per step, from the hooks
    a, b = snapshot(ordinary.model), snapshot(fused.model)
    assert _max_diff(a, start) > 1e-3  # the steps moved the weights
    assert _max_diff(a, b) < 1e-6
    # the scheduler drove the hooks' lr (linear decay) and the logs carry the same losses, lr and grad norm
    logs_a = [h for h in ordinary.state.log_history if "loss" in h]
    logs_b = [h for h in fused.state.log_history if "loss" in h]
    assert len(logs_a) == len(logs_b) == 3
    for la, lb in zip(logs_a, logs_b):
        assert lb["learning_rate"] == la["learning_rate"]
        assert lb["loss"] == pytest.approx(la["loss"], rel=1e-5)
        assert lb["grad_norm"] == pytest.approx(la["grad_norm"], rel=1e-4)
    assert logs_b[0]["learning_rate"] > logs_b[-1]["learning_rate"]


def test_no_full_gradient_buffer(make_trainer):
    """While backward runs, at most the parameter being updated holds a gradient (the ordinary
    step holds all of them before it runs)."""

    def most_grads_alive(trainer) -> int:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        seen = [0]

        def count(grad):
            seen[0] = max(seen[0], sum(p.grad is not None for p in params))
            return grad

        for p in params:
            p.register_hook(count)
        trainer.train()
        return seen[0], len(params)

    alive, total = most_grads_alive(make_trainer("npo", optim_in_backward=True, split_backward=False, **NPO))
    assert alive <= 1
    alive_ordinary, _ = most_grads_alive(make_trainer("npo", split_backward=False, **NPO))
    assert alive_ordinary >= total - 1


def test_per_parameter_clipping(make_trainer, snapshot):
    # SGD: the update of a parameter is lr × its (clipped) gradient, so each tensor moves by at most lr·c
    lr, clip = 0.5, 1e-3
    trainer = make_trainer("npo", optim="sgd", optim_in_backward=True, weight_decay=0.0, max_steps=1,
                           learning_rate=lr, max_grad_norm=clip, alpha=1.0, lr_scheduler_type="constant",
                           logging_steps=1)
    start = snapshot(trainer.model)
    trainer.train()
    end = snapshot(trainer.model)
    norms = [(end[n] - start[n]).norm().item() for n in end]
    assert max(norms) <= lr * clip * (1 + 1e-4)
    assert sum(x > 0.9 * lr * clip for x in norms) >= len(norms) // 2  # clipped, not just small
    # the logged norm is the pre-clip global norm, far above the per-tensor bound
    grad_norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert grad_norms and grad_norms[0] > 10 * clip


def test_masked_entries_stay_bit_identical(load_target, unlearn_data, tmp_path):
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.masks import compute_mask
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    model = load_target()
    mask = compute_mask(model, method="magnitude", ratio=0.3, progress=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = NPOConfig(output_dir=str(tmp_path / "m"), use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                    per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, weight_decay=0.1, warmup_steps=0,
                    alpha=1.0, optim_in_backward=True)
    trainer = NPOTrainer(model=model, args=cfg, processing_class=unlearn_data.tokenizer, weight_mask=mask,
                         train_dataset=ForgetRetainDataset(unlearn_data.forget, unlearn_data.retain, seed=0))
    trainer.train()
    assert trainer.in_backward is not None and trainer.in_backward.updates > 0
    moved = 0
    for name, p in model.named_parameters():
        if name in mask:
            frozen = ~mask[name]
            assert torch.equal(p.detach()[frozen], start[name][frozen]), name
            moved += int((p.detach()[~frozen] != start[name][~frozen]).sum())
        else:
            assert torch.equal(p.detach(), start[name]), name
    assert moved > 1000


def test_checkpointing_accumulation_and_resume(make_trainer, snapshot, tmp_path):
    base = dict(optim_in_backward=True, weight_decay=0.01, **{**NPO, "max_steps": 2})
    plain = make_trainer("npo", **base)
    plain.train()
    ckpt = make_trainer("npo", activation_checkpointing=True, **base)
    ckpt.train()
    assert _max_diff(snapshot(plain.model), snapshot(ckpt.model)) < 1e-6

    # accumulation: the update happens once per step, on the accumulated gradient (SGD: linear in it)
    sgd = dict(optim="sgd", optim_in_backward=True, max_steps=1, learning_rate=0.05, weight_decay=0.0,
               max_grad_norm=0.0, alpha=1.0)
    one = make_trainer("npo", per_device_train_batch_size=4, **sgd)
    one.train()
    two = make_trainer("npo", per_device_train_batch_size=2, gradient_accumulation_steps=2, **sgd)
    two.train()
    assert two.in_backward.updates == one.in_backward.updates
    assert _max_diff(snapshot(one.model), snapshot(two.model)) < 1e-6

    # resume: the AdamW state saved from the per-parameter optimizers is restored into them
    fields = dict(optim_in_backward=True, max_steps=4, per_device_train_batch_size=2, save_strategy="steps",
                  save_steps=2, alpha=1.0, learning_rate=1e-3)
    full = make_trainer("npo", output_dir=str(tmp_path / "a"), **fields)
    full.train()
    resumed = make_trainer("npo", output_dir=str(tmp_path / "b"), **fields)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    inner = next(iter(resumed.in_backward.inner.values()))
    assert inner.state[next(iter(inner.state))]["step"] == 4  # the restored state kept counting
    assert _max_diff(snapshot(full.model), snapshot(resumed.model)) < 1e-6


def test_lora_and_refusals(make_trainer, snapshot):
    lora = make_trainer("npo", lora=True, optim_in_backward=True, **NPO)
    start = snapshot(lora.model)
    lora.train()
    after = snapshot(lora.model)
    changed = {n for n in after if not torch.equal(after[n], start[n])}
    assert changed and all("lora_" in n for n in changed)
    with pytest.raises(UnlearnError, match="reentrant activation checkpointing"):
        make_trainer("npo", optim_in_backward=True, activation_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": True}, **NPO)
    galore_like = make_trainer("npo", optim_in_backward=True, **NPO)  # an optimizer that picks its own parameters
    galore_like.optimizer_cls_and_kwargs = (torch.optim.AdamW, {"params": [], "lr": 1e-3})
    with pytest.raises(UnlearnError, match="optim_in_backward needs an optimizer"):
        galore_like.create_optimizer()


def test_cli_flag_reaches_the_config():
    from llm_unlearn.cli import build_parser
    from llm_unlearn.cli.unlearn_cmd import overrides_from_args

    args = build_parser().parse_args(["unlearn", "--model", "m", "--data", "d", "--method", "npo", "--output", "o",
                                      "--optim-in-backward", "--optim", "adafactor"])
    assert overrides_from_args(args) == {"optim": "adafactor", "optim_in_backward": True}


def test_8bit_adamw_in_backward(make_trainer, snapshot):
    """bitsandbytes' 8-bit AdamW (CPU: slow but correct) steps per parameter like the ordinary one."""
    pytest.importorskip("bitsandbytes")
    # the same joint forward and backward (one graph, no split): bit-equal gradients, so the same 8-bit codes
    ordinary = make_trainer("npo", optim="adamw_8bit", split_backward=False, **NPO)
    ordinary.runs_one_graph = lambda model: model.training and torch.is_grad_enabled()
    start = snapshot(ordinary.model)
    ordinary.train()
    fused = make_trainer("npo", optim="adamw_8bit", optim_in_backward=True, **NPO)
    fused.train()
    a, b = snapshot(ordinary.model), snapshot(fused.model)
    assert _max_diff(a, start) > 1e-3
    assert _max_diff(a, b) < 1e-6
    states = {n: fused.in_backward.state[p] for n, p in fused.model.named_parameters()}
    assert states["model.layers.0.mlp.up_proj.weight"]["state1"].dtype == torch.uint8  # 8-bit moments
    assert states["model.embed_tokens.weight"]["state1"].dtype == torch.float32  # embeddings 32-bit, as the Trainer does


@pytest.mark.parametrize("settings", [
    {},  # the Trainer's adafactor: scale_parameter, relative_step, warmup_init off, lr given
    {"scale_parameter": True, "relative_step": True, "warmup_init": True, "lr": None},
    {"beta1": 0.9, "weight_decay": 0.01, "clip_threshold": 0.5},
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_adafactor_is_adafactor_bit_for_bit(settings, dtype):
    from transformers.optimization import Adafactor

    from llm_unlearn.optim import InPlaceAdafactor

    kwargs = {"lr": 1e-3, "scale_parameter": False, "relative_step": False, "warmup_init": False, **settings}
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 32), (32,), (3, 16, 8)]
    start = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(3)]
    runs = []
    for cls in (Adafactor, InPlaceAdafactor):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, **kwargs)
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.clone()
            opt.step()
        runs.append((params, opt.state))
    (a, state_a), (b, state_b) = runs
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        for k, v in state_a[pa].items():
            other = state_b[pb][k]
            assert torch.equal(v, other) if torch.is_tensor(v) else v == other
    assert not all(torch.equal(p, s) for p, s in zip(a, start))  # the steps moved the weights
