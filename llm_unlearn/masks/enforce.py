"""Enforcing a `WeightMask` during training: frozen weights stay bit-identical.

Full weights (plain model). For every covered parameter with some frozen entries:
1. a gradient hook zeroes the frozen entries' gradient before it is accumulated, so gradient
   clipping, Adam moments and any all-reduce see zeros there;
2. an optimizer step post-hook copies the frozen entries' start values back after every step.
   Needed because AdamW's decoupled weight decay (θ ← θ − lr·λ·θ) moves weights whose gradient
   is zero. After the first step it also zeroes the optimizer state at those entries (a state
   resumed from a checkpoint may hold moments there); from then on zero gradients keep Adam's
   moments (and momentum buffers) at zero by themselves, so later steps skip that pass. Memory: a
   bool per weight plus a copy of the frozen values (≈ (1 − ratio) of the covered weights, in the
   model dtype).
Parameters the mask does not cover (embeddings, norms, lm_head by default) and fully frozen
tensors get ``requires_grad=False``: the mask is the complete list of what may change.

LoRA (PEFT model). Mask keys are base-model names; each LoRA layer is restricted so the effective
update of its base weight stays inside the mask:
- element granularity (mask of the weight's shape, paper-faithful): ΔW = M ⊙ (B·A)·scaling. The
  layer's forward builds ΔW explicitly and `get_delta_weight` is masked too, so merging adds
  exact zeros outside M. On a plain float base (not 4-bit, no LoRA dropout) the layer runs one
  matmul with W + ΔW instead of two, so forward + backward cost 3 weight-sized matmuls (full-weight
  training: 3; plain LoRA: 2). Cost: one bool per base weight (the mask) plus, per layer during
  forward/backward, a dense out×in effective weight and its gradient (a full-weight-sized
  transient per layer).
  The saved adapter (A, B) alone does not carry the mask: merge with the mask applied, or load
  the adapter and re-apply the mask file.
- row granularity (mask of shape (out, 1)): the frozen output rows of B are held at zero (hook +
  restore as above), so rows of B·A outside the mask are exactly zero. Cost: one bool per output
  channel, no extra compute; the saved adapter is an ordinary, self-contained PEFT adapter.
  Cheap enough for 7B models.
Both need a fresh adapter (ΔW = 0 outside the mask at the start); LoRA variants (DoRA, …) and
``lora_bias`` are refused. LoRA layers whose base weight the mask does not cover are frozen.

FSDP2 (``fully_shard``, e.g. ``accelerate launch --config_file recipes/accelerate/fsdp_masked.yaml``).
The enforcement is built on the whole model before the Trainer wraps it; wrapping replaces every
parameter with a DTensor holding this rank's rows (Shard(0)), so `rebind` (called when the
Trainer creates its optimizer, after wrapping) cuts each partly frozen entry's mask to the local
rows and records the local frozen values. Gradient hooks on the sharded parameters would never
fire (FSDP writes the reduce-scattered gradient directly), so `mask_grads_` zeroes the frozen
entries of the local gradient after every backward (`attach_mask` wraps ``training_step``: before
clipping and the optimizer, as with the hooks); the post-step restore works on local shards.
The LoRA element path needs nothing more: ΔW is built from the unsharded B and A inside forward.
Every rank needs the real weights before wrapping (``fsdp_cpu_ram_efficient_loading: false``).

Not supported: DeepSpeed ZeRO-3 (it partitions parameters while the model loads, before a mask
can be built) and FSDP1 (flattened parameters).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks.weight_mask import WeightMask, base_param_name, is_lora_param, logical_shape

logger = logging.getLogger(__name__)


def _is_peft(model: nn.Module) -> bool:
    return any(is_lora_param(n) for n, _ in model.named_parameters())


def _lora_layers(model: nn.Module):
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer"):
            yield name, module


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (shares its storage); any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


class MaskEnforcer:
    """The hooks and patches that keep a model inside its mask. Made by `enforce_mask`."""

    def __init__(self, model: nn.Module, mask: WeightMask, trained_adapter: bool = False):
        self.model = model
        self.mask = mask
        self.trained_adapter = trained_adapter
        self._frozen: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, frozen mask, values)
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, str]] = []
        self._requires_grad_off: list[nn.Parameter] = []
        self._optimizers: set[int] = set()
        self._names: dict[int, str] = {}
        self.lora_granularity: dict[str, str] = {}  # base weight name -> element | row

    # building
    def _freeze(self, p: nn.Parameter) -> None:
        if p.requires_grad:
            p.requires_grad_(False)
            self._requires_grad_off.append(p)

    def _hold(self, p: nn.Parameter, frozen: torch.Tensor) -> None:
        """Zero gradients at `frozen` (broadcastable bool) and keep those entries at their current values."""
        frozen = frozen.to(p.device)
        if not bool(frozen.any()):
            return
        if bool(frozen.all()):
            self._freeze(p)
            return
        values = p.detach()[frozen.expand_as(p)].clone()
        if p.requires_grad:  # a loaded adapter kept frozen for inference has no gradient to mask
            self._handles.append(p.register_hook(lambda g, f=frozen: g.masked_fill(f, 0)))
        self._frozen.append((p, frozen, values))

    def _full_weights(self, name: str, p: nn.Parameter) -> None:
        key = base_param_name(name)
        if key not in self.mask:
            self._freeze(p)
            return
        self._hold(p, ~self.mask[key])

    def _lora_layer(self, mod_name: str, module: nn.Module) -> None:
        key = base_param_name(mod_name) + ".weight"
        lora_params = [p for ad in module.lora_A for p in (*module.lora_A[ad].parameters(), *module.lora_B[ad].parameters())]
        if key not in self.mask:
            for p in lora_params:
                self._freeze(p)
            return
        if getattr(module, "lora_variant", None):
            raise UnlearnError(f"{mod_name}: LoRA variants ({', '.join(module.lora_variant)}) cannot be masked; use plain LoRA")
        if any(getattr(module, "lora_bias", {}).values()):
            raise UnlearnError(f"{mod_name}: lora_bias=True cannot be masked; use lora_bias=False")
        m = self.mask[key]
        weight_shape = logical_shape(module.get_base_layer().weight)
        if tuple(m.shape) == weight_shape:
            self._lora_element(mod_name, module, key, m)
        else:
            self._lora_row(mod_name, module, key, m)

    def _lora_row(self, mod_name: str, module: nn.Module, key: str, m: torch.Tensor) -> None:
        rows = m.reshape(-1)
        for ad, lin in module.lora_B.items():
            b = lin.weight
            if b.shape[0] != rows.numel():
                raise UnlearnError(f"{mod_name}: row mask has {rows.numel()} rows but lora_B has {b.shape[0]} outputs")
            frozen = ~rows.to(b.device).unsqueeze(1)
            if not self.trained_adapter and bool((b.detach().masked_select(frozen.expand_as(b)) != 0).any()):
                raise UnlearnError(f"{mod_name}: adapter '{ad}' already changes rows outside the mask; masking needs a "
                                   "fresh LoRA adapter (merge an existing one into the base model first)")
            self._hold(b, frozen)
        self.lora_granularity[key] = "row"

    def _lora_element(self, mod_name: str, module: nn.Module, key: str, m: torch.Tensor) -> None:
        frozen_w = (~m).to(module.get_base_layer().weight.device)  # base weight layout
        fan_in_fan_out = getattr(module, "fan_in_fan_out", False)
        frozen_oi = frozen_w.t() if fan_in_fan_out else frozen_w  # (out, in) layout of B @ A
        for ad in () if self.trained_adapter else module.lora_A:
            delta0 = module.get_delta_weight(ad)
            if bool((delta0.masked_select(frozen_w) != 0).any()):
                raise UnlearnError(f"{mod_name}: adapter '{ad}' already changes weights outside the mask; masking "
                                   "needs a fresh LoRA adapter (merge an existing one into the base model first)")
        original_delta = module.get_delta_weight
        original_forward = module.forward

        def get_delta_weight(self, adapter):
            return original_delta(adapter).masked_fill(frozen_w.to(self.lora_B[adapter].weight.device), 0)

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if kwargs.get("adapter_names") is not None:
                raise UnlearnError(f"{mod_name}: mixed-adapter batches are not supported with an element mask")
            if self.disable_adapters or self.merged:
                return original_forward(x, *args, **kwargs)
            kwargs.pop("adapter_names", None)
            active = [ad for ad in self.active_adapters if ad in self.lora_A]
            base = self.base_layer
            if _fusable(self, base, x, active) and not args and not kwargs:
                # one matmul with W + ΔW instead of two (x·Wᵀ + x·ΔWᵀ): 3 weight-sized matmuls per
                # forward + backward instead of 5; the same function, up to float rounding
                weight = base.weight
                for ad in active:
                    delta = (self.lora_B[ad].weight @ self.lora_A[ad].weight).masked_fill(frozen_oi, 0)
                    weight = weight + delta * self.scaling[ad]
                return F.linear(x, weight, base.bias)
            result = base(x, *args, **kwargs)
            out_dtype = result.dtype
            for ad in self.active_adapters:
                if ad not in self.lora_A:
                    continue
                a, b = self.lora_A[ad].weight, self.lora_B[ad].weight
                xa = self._cast_input_dtype(x, a.dtype)
                delta = (b @ a).masked_fill(frozen_oi, 0) * self.scaling[ad]
                result = result + F.linear(self.lora_dropout[ad](xa), delta)
            return result.to(out_dtype)

        module.get_delta_weight = types.MethodType(get_delta_weight, module)
        module.forward = types.MethodType(forward, module)
        self._patched.append((module, "get_delta_weight"))
        self._patched.append((module, "forward"))
        self.lora_granularity[key] = "element"

    def build(self) -> MaskEnforcer:
        self.mask.validate(self.model)
        self._names = {id(p): n for n, p in self.model.named_parameters()}  # for `rebind` after wrapping
        lora_param_ids: set[int] = set()
        for mod_name, module in _lora_layers(self.model):
            lora_param_ids.update(id(p) for p in module.lora_A.parameters())
            lora_param_ids.update(id(p) for p in module.lora_B.parameters())
            self._lora_layer(mod_name, module)
        for name, p in self.model.named_parameters():
            if id(p) in lora_param_ids or not p.requires_grad:
                continue
            self._full_weights(name, p)
        if not self.trained_adapter and not any(p.requires_grad for p in self.model.parameters()):
            raise UnlearnError("the mask leaves no trainable weight (ratio too small, or a LoRA adapter on modules "
                               "the mask does not cover?)")
        logger.info("mask enforced: %d partly frozen tensors, %d tensors frozen outright, LoRA layers %s",
                    len(self._frozen), len(self._requires_grad_off), self.lora_granularity or "none")
        return self

    # sharded parameters
    @torch.no_grad()
    def rebind(self, model: nn.Module) -> int:
        """Point the partly frozen entries at the parameters `model` holds now: after FSDP2 wrapped
        the model in place, each is a DTensor shard, and its mask and frozen values become the
        local rows'. Returns how many entries moved to new parameter objects."""
        current = {name.removeprefix("module."): p for name, p in model.named_parameters()}
        moved = 0
        entries = []
        for p, frozen, values in self._frozen:
            name = self._names.get(id(p))
            new = current.get(name) if name is not None else None
            if new is None or new is p:
                entries.append((p, frozen, values))
                continue
            moved += 1
            full = frozen.expand(tuple(new.shape))
            local = _local(new)
            if local is not new:  # DTensor: this rank's slice of every dimension
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(tuple(new.shape), new.device_mesh, new.placements)
                full = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
            frozen_local = full.to(local.device).contiguous()
            entries.append((new, frozen_local, local[frozen_local].clone()))
        self._frozen = entries
        return moved

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the frozen entries of the (local) gradients; what the gradient hooks do on whole
        tensors, for parameters whose gradients bypass autograd hooks (FSDP2 shards)."""
        for p, frozen, _ in self._frozen:
            if p.grad is not None:
                _local(p.grad).masked_fill_(frozen, 0)

    # training-time
    @torch.no_grad()
    def restore_(self) -> None:
        """Copy the frozen entries' start values back (undoes weight decay on them)."""
        for p, frozen, values in self._frozen:
            _local(p).masked_scatter_(frozen, values)

    @torch.no_grad()
    def _clear_state(self, optimizer: torch.optim.Optimizer) -> None:
        for p, frozen, _ in self._frozen:
            shape = _local(p).shape
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and _local(v).shape == shape:
                    _local(v).masked_fill_(frozen, 0)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """After every step of `optimizer` (an accelerate wrapper is unwrapped), restore frozen
        entries; after its first step, zero the optimizer state there too (see the module
        docstring: later steps keep it zero, the gradients being zero)."""
        inner = optimizer
        while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
            inner = inner.optimizer
        if not hasattr(inner, "register_step_post_hook"):
            raise UnlearnError(f"optimizer {type(optimizer).__name__} does not support step hooks; cannot enforce the mask")
        if id(inner) in self._optimizers:
            return
        self._optimizers.add(id(inner))

        cleared = False

        def post_step(opt, args, kwargs):
            nonlocal cleared
            self.restore_()
            if not cleared:
                self._clear_state(opt)
                cleared = True

        self._handles.append(inner.register_step_post_hook(post_step))

    def remove(self) -> None:
        """Undo hooks, LoRA patches and requires_grad changes (the weights stay as they are)."""
        for h in self._handles:
            h.remove()
        for module, attr in self._patched:
            module.__dict__.pop(attr, None)
        for p in self._requires_grad_off:
            p.requires_grad_(True)
        self._handles, self._patched, self._requires_grad_off, self._frozen = [], [], [], []
        self._optimizers.clear()


def _fusable(layer: nn.Module, base: nn.Module, x: torch.Tensor, active: list[str]) -> bool:
    """Whether an element-masked LoRA layer may run as one linear with the effective weight: a
    plain float `nn.Linear` base (not 4-bit), (out, in) layout, no LoRA dropout, one dtype."""
    if type(base) is not nn.Linear or getattr(layer, "fan_in_fan_out", False) or not active:
        return False
    w = base.weight
    if not w.is_floating_point() or x.dtype != w.dtype:
        return False
    return all(isinstance(layer.lora_dropout[ad], nn.Identity) and layer.lora_A[ad].weight.dtype == w.dtype
               for ad in active)


def enforce_mask(model: nn.Module, mask: WeightMask, trained_adapter: bool = False,
                 optimizer: torch.optim.Optimizer | None = None) -> MaskEnforcer:
    """Validate `mask` against `model` and install the enforcement (see the module docstring).
    Call before the optimizer is built and pass it later to `attach_optimizer`, or pass an
    existing `optimizer` here: frozen entries are restored after each of its steps.
    `trained_adapter`: the LoRA adapter was already trained under this mask (reloading a saved
    run), so its update is not required to start at zero and nothing needs to be trainable."""
    enforcer = MaskEnforcer(model, mask, trained_adapter).build()
    if optimizer is not None:
        enforcer.attach_optimizer(optimizer)
    return enforcer


def attach_mask(trainer, mask: WeightMask) -> MaskEnforcer:
    """Enforce `mask` on a `transformers.Trainer` (any subclass): installs the hooks on
    `trainer.model` and makes every optimizer the trainer creates restore frozen entries after
    each step. Call at the end of the trainer's ``__init__`` (before `train()`)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise UnlearnError("weight masks are not supported with DeepSpeed (ZeRO-3 partitions the parameters while the "
                           "model loads); use FSDP2 (recipes/accelerate/fsdp_masked.yaml) or DDP")
    fsdp = bool(getattr(trainer, "is_fsdp_enabled", False))
    if fsdp:
        plugin = trainer.accelerator.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) != 2:
            raise UnlearnError("weight masks under FSDP need fsdp_version: 2 (FSDP1 flattens the parameters)")
        if any(p.is_meta for p in trainer.model.parameters()):
            raise UnlearnError("weight masks under FSDP need the real weights on every rank before wrapping: set "
                               "fsdp_cpu_ram_efficient_loading: false")
    if getattr(trainer, "mask_enforcer", None) is not None:
        raise UnlearnError("this trainer already has a mask attached")
    enforcer = enforce_mask(trainer.model, mask)
    if trainer.optimizer is not None:
        enforcer.attach_optimizer(trainer.optimizer)
    original = trainer.create_optimizer

    def create_optimizer(*args, **kwargs):
        optimizer = original(*args, **kwargs)
        if fsdp:  # the Trainer creates the optimizer after wrapping: the parameters are shards now
            enforcer.rebind(trainer.model)
        enforcer.attach_optimizer(trainer.optimizer)
        return optimizer

    trainer.create_optimizer = create_optimizer
    if fsdp:
        original_step = trainer.training_step

        def training_step(*args, **kwargs):
            loss = original_step(*args, **kwargs)
            enforcer.mask_grads_()  # after backward, before clipping / the optimizer
            return loss

        trainer.training_step = training_step
    trainer.mask_enforcer = enforcer
    return enforcer
