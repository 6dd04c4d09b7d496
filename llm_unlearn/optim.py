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

from collections.abc import Callable, Iterable
from typing import Any

import torch


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


def _private_bnb_manager(manager_cls: type):
    """A fresh, unshared bitsandbytes ``GlobalOptimManager`` (its constructor is blocked: it is a singleton)."""
    manager = manager_cls.__new__(manager_cls)
    manager.initialize()
    return manager


__all__ = ["OptimizerInBackward"]
