"""Weight-attribution scores, computed once on the original model before unlearning starts.

WAGLE (Jia et al., NeurIPS 2024, "WAGLE: Strategic Weight Attribution for Effective and Modular
Unlearning in LLMs"), the attribution score of each weight (their bi-level derivation, with the
retain loss's Hessian approximated by a diagonal γI):

    S(θ) = | (θ − (1/γ) ∇ℓ_r(θ)) ⊙ ∇ℓ_f(θ) |

ℓ_f is the forget NLL and ℓ_r the retain NLL (mean token NLL of a batch, averaged over the
batches of the loader). The weights with the highest scores may change during unlearning.

Baselines: ``random`` (uniform, seeded), ``magnitude`` |θ|, ``salun`` |∇ℓ_f| (SalUn's gradient
saliency, Fan et al. ICLR 2024) and ``wanda`` |W_ij|·‖X_j‖₂ (Sun et al. ICLR 2024) with X the
inputs of the layer over the forget set's non-padding tokens.

Gradients are accumulated in float32 buffers whatever the model dtype (a per-parameter hook moves
each gradient into its buffer as soon as it is computed, so the model-dtype gradients never pile
up). Memory for a model of N target weights: wagle 8N bytes (θ − ∇ℓ_r/γ, then ∇ℓ_f), salun /
magnitude / random 4N bytes, wanda 4N bytes + one vector per layer.

γ default (DEFAULT_GAMMA = 1e-3). γ sets how much the retain gradient counts against θ: γ → ∞
ranks by |θ ⊙ ∇ℓ_f| (a first-order forget-loss attribution), small γ by |∇ℓ_r ⊙ ∇ℓ_f|.
`benchmarks/mask_cost.py --gamma-sweep` on the tiny Llama finetuned on synthetic TOFU data
(10 authors, forget10; mask ratio 0.2, 20 steps of masked GradDiff, AdamW) gave, as
(forget-NLL rise, retain-NLL rise):

    γ        lr 1e-3          lr 3e-4           (results/gamma_sweep_lr*.json)
    1e-4     -                (2.59, 0.61)
    1e-3     (13.9, 1.36)     (2.58, 0.61)
    1e-2     (13.4, 1.78)     (2.31, 0.52)
    1e-1     (12.2, 2.29)     (1.88, 0.43)
    1        (12.2, 2.33)     (1.86, 0.43)
    ∞        (12.1, 2.32)     (1.86, 0.43)
    salun    (13.3, 1.49)     (2.49, 0.63)
    random   (3.2, 0.79)      -

γ and the reference's μ. WAGLE's code sums the gradients over batches (S = |(θ − Σ_b∇ℓ_r,b/μ) ⊙
Σ_b∇ℓ_f,b|); here they are averaged (S = |(θ − mean_b∇ℓ_r,b/γ) ⊙ mean_b∇ℓ_f,b|). The forget
average only rescales S, so the ranking is the reference's with μ = γ · (number of retain
batches): γ = 1e-3 over 90 retain batches is μ = 0.09.

Which weights are ranked: linear weights by default (the LoRA-compatible set); scope ``all``
ranks every parameter — embeddings, norms, biases, lm_head — as WAGLE's reference does.

γ ≤ 1e-3 has the largest forget rise minus retain rise in both runs, hence the default. Be aware
the evidence is thin: one tiny model, one seed; at lr 3e-4 the forget/retain ratio is nearly
flat in γ (4.26 at 1e-3, 4.32 at ∞), so there small γ buys more forgetting at proportionally
more retain damage. On this model ‖∇ℓ_r‖/γ per weight is far below |θ| once γ ≥ 0.1, so the
useful range sits at small γ; on other models the balance moves with the ratio of
retain-gradient to weight size — sweep γ when it matters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llm_unlearn.console import sub_progress
from llm_unlearn.distributed import all_reduce_sum_, rank_and_world
from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks.weight_mask import base_param_name, is_lora_param

METHODS = ("wagle", "random", "magnitude", "salun", "wanda")
DEFAULT_GAMMA = 1e-3
EVERY_PARAMETER = "<every parameter>"  # target_modules value: score every parameter, not only linear weights

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass
class Target:
    """One weight matrix scores and masks are computed for."""

    name: str  # base-model parameter name
    module: nn.Module
    param: nn.Parameter
    out_axis: int  # axis of output channels in the weight (0 for nn.Linear, 1 for Conv1D)


def _linear_types() -> tuple[type, ...]:
    return (nn.Linear, Conv1D)


def every_parameter_targets(model: nn.Module) -> list[Target]:
    """Every floating-point parameter of the base model (embeddings, norms, biases and lm_head
    included; a tied lm_head once), as WAGLE's reference code ranks them; LoRA factors excluded."""
    owners = {id(p): m for _, m in model.named_modules() for p in m.parameters(recurse=False)}
    targets: list[Target] = []
    for name, p in model.named_parameters():
        if is_lora_param(name) or ".modules_to_save." in name or not p.is_floating_point():
            continue
        targets.append(Target(base_param_name(name), owners[id(p)], p, 0))
    return targets


def find_targets(model: nn.Module, target_modules: str | None = None) -> list[Target]:
    """Weights of the modules a mask covers.

    Default (``target_modules=None``): every ``nn.Linear`` (and GPT-2 ``Conv1D``) except the output
    embedding (lm_head) — the same set PEFT's ``target_modules="all-linear"`` wraps with LoRA, so one
    mask serves full-weight and LoRA runs. lm_head is left out because it is often tied to the input
    embedding and its vocabulary rows are shared by every answer. A string is a regex searched
    (``re.search``) in the base-model module name, e.g. ``r"mlp\\.(gate|up|down)_proj$"``; it
    selects among linear modules, lm_head included if it matches.
    """
    linear_types = _linear_types()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    output_emb = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    pattern = None
    if target_modules is not None:
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise UnlearnError(f"target_modules: invalid regex '{target_modules}': {exc}") from None
    targets: list[Target] = []
    seen: set[str] = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, linear_types) or is_lora_param(mod_name + ".") or ".modules_to_save." in mod_name:
            continue
        base_mod = base_param_name(mod_name)
        if pattern is None:
            if output_emb is not None and (module is output_emb or getattr(output_emb, "base_layer", None) is module):
                continue
        elif not pattern.search(base_mod):
            continue
        name = f"{base_mod}.weight"
        if name in seen:
            continue
        seen.add(name)
        out_axis = 0 if isinstance(module, nn.Linear) else 1
        targets.append(Target(name, module, module.weight, out_axis))
    if not targets:
        raise UnlearnError(f"target_modules '{target_modules}' matches no linear module of the model")
    return targets


def default_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean token NLL of a QACollator batch (the model's own shifted cross-entropy)."""
    return model(**batch).loss


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _scoring_mode(model: nn.Module, targets: list[Target], need_grad: bool):
    """eval mode, LoRA adapters disabled, gradients only on the target weights; all restored after."""
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    target_params = {id(t.param) for t in targets}
    adapter_ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    try:
        model.eval()
        if need_grad:
            for t in targets:
                if not t.param.is_floating_point():
                    raise UnlearnError(f"cannot take gradients of '{t.name}' ({t.param.dtype}): score a float model, "
                                       "not a quantised one")
        for p in model.parameters():
            if p.is_floating_point():
                p.requires_grad_(need_grad and id(p) in target_params)
        with adapter_ctx:
            yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


def _progress(loader: Iterable, desc: str, show: bool):
    # transient, and only in verbose mode: the quiet console draws one bar per stage
    return sub_progress(loader, desc) if show else loader


def accumulate_gradients(model: nn.Module, targets: list[Target], loader: Iterable, loss_fn: LossFn = default_loss,
                         desc: str = "gradients", progress: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """Sum over batches of ∇(batch loss), in float32 buffers; returns (buffers, number of batches).
    Must run inside `_scoring_mode(..., need_grad=True)`. With several processes (a process group
    initialised), each gives its shard of the data and gets back the sums and counts over all
    ranks, so every rank computes the same global score."""
    buffers = {t.name: torch.zeros(t.param.shape, dtype=torch.float32, device=t.param.device) for t in targets}
    handles = []
    for t in targets:
        buf = buffers[t.name]

        def hook(p: torch.Tensor, buf: torch.Tensor = buf) -> None:
            buf.add_(p.grad.float())
            p.grad = None

        handles.append(t.param.register_post_accumulate_grad_hook(hook))
    device = _device(model)
    n = 0
    try:
        for batch in _progress(loader, desc, progress):
            loss = loss_fn(model, _to_device(batch, device))
            if not torch.isfinite(loss):
                raise UnlearnError(f"{desc}: non-finite loss {loss.item()} on batch {n}")
            loss.backward()
            n += 1
    finally:
        for h in handles:
            h.remove()
    if rank_and_world()[1] > 1:
        # several processes, each over its shard of the data: the sums and batch counts add up to
        # those of one process over all of it (reduced before any non-linear score is taken)
        counts = torch.tensor([float(n)], dtype=torch.float64)
        all_reduce_sum_([*buffers.values(), counts])
        n = int(counts.item())
    if n == 0:
        raise UnlearnError(f"{desc}: the data loader yielded no batch")
    return buffers, n


def _input_norms(model: nn.Module, targets: list[Target], loader: Iterable, progress: bool) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input channel of each target, over non-padding tokens (Wanda's activation norm)."""
    sumsq = {t.name: None for t in targets}
    current_mask: dict[str, torch.Tensor | None] = {"m": None}
    handles = []
    for t in targets:
        def hook(module, args, output, name=t.name):
            x = args[0].detach().float()
            m = current_mask["m"]
            if m is not None and x.dim() == 3 and m.shape == x.shape[:2]:
                x = x * m.unsqueeze(-1).to(x.dtype)
            s = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
            sumsq[name] = s if sumsq[name] is None else sumsq[name] + s

        handles.append(t.module.register_forward_hook(hook))
    device = _device(model)
    n = 0
    try:
        with torch.no_grad():
            for batch in _progress(loader, "wanda activations", progress):
                batch = _to_device(batch, device)
                current_mask["m"] = batch.get("attention_mask")
                model(**{k: v for k, v in batch.items() if k != "labels"})
                n += 1
    finally:
        for h in handles:
            h.remove()
    all_reduce_sum_([s for s in sumsq.values() if s is not None])  # every rank's shard of the forget set
    if n == 0:
        raise UnlearnError("wanda: the forget loader yielded no batch")
    return {name: s.sqrt() for name, s in sumsq.items()}


def compute_scores(model: nn.Module, forget_loader: Iterable | None = None, retain_loader: Iterable | None = None,
                   method: str = "wagle", target_modules: str | None = None, gamma: float = DEFAULT_GAMMA,
                   seed: int = 0, loss_fn: LossFn = default_loss, progress: bool = True) -> dict[str, torch.Tensor]:
    """Score every target weight (higher = more worth changing); float32 tensors keyed by base name.

    `forget_loader` / `retain_loader` yield QACollator batches (input_ids, attention_mask, labels).
    wagle needs both, salun and wanda the forget loader, random and magnitude neither.
    `loss_fn(model, batch)` returns the NLL to differentiate (default: ``model(**batch).loss``).
    A PEFT model is scored with its adapters disabled, i.e. on the base weights.
    ``target_modules=EVERY_PARAMETER`` scores every parameter (`every_parameter_targets`; not
    for wanda, whose score needs a linear layer's inputs).
    """
    if method not in METHODS:
        raise UnlearnError(f"mask method '{method}' unknown; expected one of {', '.join(METHODS)}")
    if method in ("wagle", "salun", "wanda") and forget_loader is None:
        raise UnlearnError(f"mask method '{method}' needs a forget data loader")
    if method == "wagle":
        if retain_loader is None:
            raise UnlearnError("mask method 'wagle' needs a retain data loader")
        if not (gamma > 0) or math.isnan(gamma):
            raise UnlearnError(f"gamma must be > 0 (inf allowed), got {gamma}")
    if target_modules == EVERY_PARAMETER:
        if method == "wanda":
            raise UnlearnError("mask scope 'all' (every parameter) does not apply to wanda (linear layers only)")
        targets = every_parameter_targets(model)
    else:
        targets = find_targets(model, target_modules)

    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return {t.name: torch.rand(t.param.shape, generator=gen).to(t.param.device) for t in targets}
    if method == "magnitude":
        return {t.name: t.param.detach().float().abs() for t in targets}
    if method == "wanda":
        with _scoring_mode(model, targets, need_grad=False):
            norms = _input_norms(model, targets, forget_loader, progress)
        out = {}
        for t in targets:
            w = t.param.detach().float().abs()
            norm = norms[t.name].to(w.device)
            out[t.name] = w * (norm.unsqueeze(0) if t.out_axis == 0 else norm.unsqueeze(1))
        return out

    with _scoring_mode(model, targets, need_grad=True):
        if method == "salun":
            grads, n_f = accumulate_gradients(model, targets, forget_loader, loss_fn, "forget gradients", progress)
            return {name: g.div_(n_f).abs_() for name, g in grads.items()}
        # wagle: a = θ − ∇ℓ_r/γ first (in the retain buffer), then S = |a ⊙ ∇ℓ_f|
        anchor, n_r = accumulate_gradients(model, targets, retain_loader, loss_fn, "retain gradients", progress)
        for t in targets:
            a = anchor[t.name]
            if math.isinf(gamma):
                a.copy_(t.param.detach())
            else:
                a.mul_(-1.0 / (gamma * n_r)).add_(t.param.detach().float())
        grads, n_f = accumulate_gradients(model, targets, forget_loader, loss_fn, "forget gradients", progress)
        for name, g in grads.items():
            g.mul_(anchor.pop(name)).div_(n_f).abs_()
        return grads
