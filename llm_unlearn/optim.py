"""The optimizer step inside the backward pass: each parameter is updated as soon as its gradient
is complete, then the gradient is freed, so no full gradient buffer ever exists (LOMO: Lv et al.,
2023, "Full Parameter Fine-tuning for Large Language Models with Limited Resources";
the mechanism is ``Tensor.register_post_accumulate_grad_hook``, torch ≥ 2.1).

`OptimizerInBackward` holds one ordinary optimizer per parameter (any ``torch.optim.Optimizer``
class: ``torch.optim.AdamW``, ``torch.optim.SGD``, ``transformers.Adafactor``, bitsandbytes'
8-bit AdamW, …) and a hook on each parameter that runs that optimizer's ``step()`` on the
parameter alone when autograd has accumulated its gradient, then sets ``p.grad = None``. The
per-parameter update is the same arithmetic as the optimizer's own step, so with no clipping the
weights equal those of the ordinary optimizer (AdamW, SGD) up to float summation order of the
gradient. Adafactor's update is per tensor anyway (its factored moments are per matrix).

Itself a ``torch.optim.Optimizer`` over all parameters, so a Trainer, an LR scheduler and
checkpointing see one optimizer: its ``param_groups`` carry the hyperparameters (the scheduler
sets ``lr`` there; each hook copies the group's values into its parameter's optimizer before
stepping, so the lr of step t is the one the scheduler set after step t−1, as with the ordinary
step), its ``state`` *is* the per-parameter optimizers' state (shared dicts: ``state_dict`` saves
it and ``load_state_dict`` resumes it), and its ``step()`` updates nothing (the work was done in
backward) but runs the step hooks (a weight mask's restore of frozen entries runs there).

Gradient clipping: per parameter. With ``max_grad_norm = c > 0`` each parameter's gradient is
scaled to norm ≤ c before its update (cost: one read of the gradient, i.e. nothing measurable).
The global norm this allows is ≤ c·√(number of tensors), a looser bound than the Trainer's global
clip, which cannot be had in one pass: the global norm is known only when the last gradient is,
after the first ones were applied. LOMO gets it with two backward passes (the first only computes
norms), i.e. one extra backward per step, about +2/3 of a training step's compute; not offered.
The pre-clip *global* norm is still exact (each gradient is complete when its hook runs) and is
what the Trainer logs as ``grad_norm``.

Gradient accumulation: ``should_step()`` (the Trainer passes "this is the last micro-batch of the
step") is False on the other micro-batches, whose gradients then accumulate as usual; the update
happens in the last micro-batch's backward. So the full gradient buffer does exist with
``gradient_accumulation_steps > 1``, between micro-batches: accumulation and this mode do not
combine their savings.

Not for: sharded or replicated data parallelism (DDP's all-reduce, FSDP's reduce-scatter and
DeepSpeed finish after the hooks would have stepped on the local gradient), and fp16 loss scaling
(the gradient is unscaled only at the optimizer step). bf16 / fp32 are fine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers.optimization import Adafactor


class OptimizerInBackward(torch.optim.Optimizer):
    """One `optimizer_cls(**optimizer_kwargs)` per parameter, stepped from a post-accumulate-grad
    hook (see the module docstring). `param_groups`: as for any optimizer (dicts with ``params``
    and per-group hyperparameters such as ``weight_decay``). `max_grad_norm` > 0 clips each
    parameter's gradient to that norm. `should_step`: called in each hook; False leaves the
    gradient to accumulate (gradient accumulation). `param_kwargs`: constructor arguments for
    some parameters' optimizers (e.g. ``{"optim_bits": 32}`` for embeddings under bitsandbytes)."""

    def __init__(self, param_groups: Iterable[dict] | Iterable[torch.nn.Parameter], optimizer_cls: type,
                 optimizer_kwargs: dict[str, Any] | None = None, max_grad_norm: float = 0.0,
                 should_step: Callable[[], bool] | None = None,
                 param_kwargs: dict[torch.Tensor, dict[str, Any]] | None = None):
        kwargs = dict(optimizer_kwargs or {})
        if "params" in kwargs:
            raise ValueError(f"{optimizer_cls.__name__} brings its own parameter list (GaLore-style optimizers "
                             "choose parameters themselves); it cannot run per parameter in backward")
        super().__init__(param_groups, dict(kwargs))
        if optimizer_cls is Adafactor:
            optimizer_cls = InPlaceAdafactor  # the same update with one temporary instead of three
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, kwargs
        self.max_grad_norm = float(max_grad_norm or 0.0)
        self.should_step = should_step
        self.inner: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self._group_of: dict[torch.Tensor, dict] = {}
        self._sq_norm: torch.Tensor | None = None
        self.updates = 0  # parameter updates applied since construction (tests, diagnostics)
        for group in self.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                if p in self.inner:
                    raise ValueError("a parameter appears in two param groups")
                inner = optimizer_cls([{"params": [p], **hyper}], **{**kwargs, **(param_kwargs or {}).get(p, {})})
                if hasattr(inner, "mng") and hasattr(inner.mng, "index2config"):
                    # bitsandbytes reads per-(group, index) overrides from a process-wide manager; here every
                    # optimizer's one parameter is (0, 0), so another optimizer's entries would apply to all
                    inner.mng = _private_bnb_manager(type(inner.mng))
                self.inner[p] = inner
        self._link()
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.inner]

    def _link(self) -> None:
        """Share each parameter's optimizer state with ``self.state`` and map it to its group
        (again after `load_state_dict`, which replaces both)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._group_of[p] = group
                self.inner[p].state[p] = self.state[p]

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        if p.grad is None or (self.should_step is not None and not self.should_step()):
            return
        grad = p.grad
        sq = grad.detach().float().pow(2).sum()
        self._sq_norm = sq if self._sq_norm is None else self._sq_norm + sq
        if self.max_grad_norm > 0:  # per-parameter clip, no host sync
            grad.mul_(torch.clamp(self.max_grad_norm / (sq.sqrt() + 1e-6), max=1.0).to(grad.dtype))
        inner = self.inner[p]
        inner_group = inner.param_groups[0]
        for k, v in self._group_of[p].items():
            if k != "params":
                inner_group[k] = v
        inner.step()
        p.grad = None
        self.updates += 1

    def pop_grad_norm(self) -> torch.Tensor | None:
        """The global L2 norm of the gradients applied since the last call (before clipping)."""
        sq, self._sq_norm = self._sq_norm, None
        return None if sq is None else sq.sqrt()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Nothing to update (backward did it); runs the step hooks. A closure is evaluated (with
        grad: its backward applies the updates)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.inner:  # the hooks already freed them; gradients that did not step (should_step) go too
            p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    def remove(self) -> None:
        """Remove the hooks: the parameters go back to ordinary gradient accumulation."""
        for h in self._handles:
            h.remove()
        self._handles = []


class InPlaceAdafactor(Adafactor):
    """transformers' `Adafactor` with its update computed in one buffer instead of three (the
    squared gradient, the factored second-moment estimate and the negated update are each a new
    tensor of the parameter's size there). The same operations in the same order, so the same
    weights and state, bit for bit (tested); less memory at the step (one temporary of the
    largest tensor instead of two at a time) and, on CPU, fewer fresh pages to fault in per step
    (`llm_unlearn.perf.lean_allocator` maps large buffers anew each time). `OptimizerInBackward`
    uses it in place of `Adafactor`."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.dtype in {torch.float16, torch.bfloat16}:
                    grad = grad.float()
                if grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients.")
                state = self.state[p]
                factored, use_first_moment = self._get_options(group, grad.shape)
                if len(state) == 0:
                    state["step"] = 0
                    if use_first_moment:
                        state["exp_avg"] = torch.zeros_like(grad)
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros(grad.shape[:-1]).to(grad)
                        state["exp_avg_sq_col"] = torch.zeros(grad.shape[:-2] + grad.shape[-1:]).to(grad)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["RMS"] = 0
                else:
                    for key in ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
                        if key in state:
                            state[key] = state[key].to(grad)
                p_data_fp32 = p.float() if p.dtype in {torch.float16, torch.bfloat16} else p
                state["step"] += 1
                state["RMS"] = self._rms(p_data_fp32)
                lr = self._get_lr(group, state)
                beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
                update = grad.square().add_(group["eps"][0])  # the one buffer: (grad**2) + eps
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2t).add_(update.mean(dim=-1), alpha=(1.0 - beta2t))
                    col.mul_(beta2t).add_(update.mean(dim=-2), alpha=(1.0 - beta2t))
                    r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
                    torch.mul(r_factor, col.unsqueeze(-2).rsqrt(), out=update)  # _approx_sq_grad
                    update.mul_(grad)
                else:
                    exp_avg_sq = state["exp_avg_sq"]
                    exp_avg_sq.mul_(beta2t).add_(update, alpha=(1.0 - beta2t))
                    torch.rsqrt(exp_avg_sq, out=update).mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(lr)
                if use_first_moment:
                    exp_avg = state["exp_avg"]
                    exp_avg.mul_(group["beta1"]).add_(update, alpha=(1 - group["beta1"]))
                    update = exp_avg
                if group["weight_decay"] != 0:
                    p_data_fp32.add_(p_data_fp32, alpha=(-group["weight_decay"] * lr))
                p_data_fp32.sub_(update)  # add_(-update) without the negated copy: the same values
                if p.dtype in {torch.float16, torch.bfloat16}:
                    p.copy_(p_data_fp32)
        return loss


def _private_bnb_manager(manager_cls: type):
    """A fresh, unshared bitsandbytes ``GlobalOptimManager`` (its constructor is blocked: it is a singleton)."""
    manager = manager_cls.__new__(manager_cls)
    manager.initialize()
    return manager


__all__ = ["InPlaceAdafactor", "OptimizerInBackward"]
