"""`WeightMask`: which weights unlearning may change (True = may change, False = frozen).

A mask maps *base-model* parameter names (``model.layers.0.self_attn.q_proj.weight``) to boolean
tensors, so one mask file serves a full-weight run and a LoRA run (PEFT names such as
``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` are mapped back with
`base_param_name`). Each tensor has the parameter's number of dimensions and every dimension
either equals the parameter's or is 1, and broadcasts to it:

- element granularity: the parameter's full shape, one bit per weight;
- row granularity: ``(out_features, 1)`` for ``nn.Linear`` (``(1, out_features)`` for GPT-2's
  ``Conv1D``), one bit per output channel.

Files are safetensors holding bit-packed booleans (uint8, 8 weights a byte) plus the shapes,
names and how the mask was made in the metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_unlearn.errors import UnlearnError

FORMAT_VERSION = "1"
_PEFT_PREFIX = "base_model.model."
_LORA_PARTS = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|lora_dropout)(\.|$)")


def base_param_name(name: str) -> str:
    """PEFT parameter/module name -> the name it has in the plain base model."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX):]
    for wrapper in (".base_layer", ".original_module", ".modules_to_save.default"):
        name = name.replace(wrapper + ".", ".")
        if name.endswith(wrapper):
            name = name[: -len(wrapper)]
    return name


def is_lora_param(name: str) -> bool:
    return _LORA_PARTS.search(name) is not None


def named_base_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Base-model name -> parameter, for a plain model or a PEFT model (LoRA factors left out;
    for a `modules_to_save` layer the frozen original wins)."""
    out: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        if is_lora_param(name) or ".modules_to_save." in name:
            continue
        out.setdefault(base_param_name(name), p)
    return out


def logical_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The shape a weight has as a matrix: a bitsandbytes 4-bit parameter (``Params4bit``) is
    stored packed (``(n/2, 1)`` uint8) and keeps its real shape in ``quant_state.shape``."""
    qs = getattr(p, "quant_state", None)
    shape = getattr(qs, "shape", None)
    return tuple(shape) if shape is not None else tuple(p.shape)


def _broadcasts_to(mask_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return len(mask_shape) == len(shape) and all(m in (1, s) for m, s in zip(mask_shape, shape))


class WeightMask(Mapping[str, torch.Tensor]):
    """Parameter name -> bool tensor (True = may change), with how it was made in `meta`."""

    def __init__(self, masks: Mapping[str, torch.Tensor], param_shapes: Mapping[str, tuple[int, ...]] | None = None,
                 meta: Mapping[str, Any] | None = None):
        self._masks: dict[str, torch.Tensor] = {}
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise UnlearnError(f"mask for '{name}' must be a bool tensor, got {getattr(m, 'dtype', type(m))}")
            shape = tuple(param_shapes[name]) if param_shapes is not None else tuple(m.shape)
            if not _broadcasts_to(tuple(m.shape), shape):
                raise UnlearnError(f"mask for '{name}' has shape {tuple(m.shape)}, which does not broadcast to {shape}")
            self._masks[name] = m.detach().to("cpu")
            self.param_shapes[name] = shape
        self.meta: dict[str, Any] = dict(meta or {})

    # Mapping interface
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"WeightMask({len(self)} tensors, density={self.density():.4f}, granularity={self.granularity})"

    # inspection
    @property
    def granularity(self) -> str:
        """'element', 'row' or 'mixed' (from the stored shapes)."""
        kinds = {"element" if tuple(m.shape) == self.param_shapes[n] else "row" for n, m in self._masks.items()}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "element")

    def numel(self, name: str | None = None) -> int:
        """Weights covered (all tensors, or one)."""
        names = [name] if name is not None else list(self._masks)
        return sum(int(np.prod(self.param_shapes[n], dtype=np.int64)) for n in names)

    def allowed(self, name: str | None = None) -> int:
        """Weights that may change (all tensors, or one), counted at element level."""
        names = [name] if name is not None else list(self._masks)
        total = 0
        for n in names:
            m = self._masks[n]
            total += int(m.sum()) * (int(np.prod(self.param_shapes[n], dtype=np.int64)) // max(m.numel(), 1))
        return total

    def density(self, name: str | None = None) -> float:
        """Fraction of covered weights that may change."""
        n = self.numel(name)
        return self.allowed(name) / n if n else 0.0

    def layer_densities(self) -> dict[str, float]:
        return {n: self.density(n) for n in self._masks}

    def summary(self, max_rows: int | None = None) -> str:
        """Per-tensor density table plus the total."""
        names = list(self._masks)
        width = max([len(n) for n in names] + [len("parameter")])
        lines = [f"{'parameter':<{width}}  {'shape':>14}  {'weights':>11}  {'may change':>11}  density"]
        shown = names if max_rows is None or len(names) <= max_rows else names[:max_rows]
        for n in shown:
            shape = "x".join(str(s) for s in self.param_shapes[n])
            lines.append(f"{n:<{width}}  {shape:>14}  {self.numel(n):>11}  {self.allowed(n):>11}  {self.density(n):.4f}")
        if len(shown) < len(names):
            lines.append(f"... {len(names) - len(shown)} more tensors")
        lines.append(f"{'total':<{width}}  {'':>14}  {self.numel():>11}  {self.allowed():>11}  {self.density():.4f}")
        info = ", ".join(f"{k}={self.meta[k]}" for k in ("method", "ratio", "scope", "granularity", "gamma") if k in self.meta)
        if info:
            lines.append(info)
        return "\n".join(lines)

    def expanded(self, name: str) -> torch.Tensor:
        """The mask of `name` broadcast to the parameter's full shape (a view)."""
        return self._masks[name].expand(self.param_shapes[name])

    # checks
    def validate(self, model: torch.nn.Module) -> None:
        """Raise `UnlearnError` naming the first mask entry the model lacks or has in another shape."""
        params = named_base_parameters(model)
        for name in self._masks:
            p = params.get(name)
            if p is None:
                raise UnlearnError(f"mask parameter '{name}' is not in the model (is the mask for another model?)")
            if logical_shape(p) != self.param_shapes[name]:
                raise UnlearnError(
                    f"mask parameter '{name}' has shape {self.param_shapes[name]} but the model's is {logical_shape(p)}"
                )

    # files
    def save(self, path: str | Path) -> Path:
        """Bit-packed safetensors file; names, shapes and `meta` in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for n, m in self._masks.items():
            tensors[n] = torch.from_numpy(np.packbits(m.numpy().reshape(-1), bitorder="little").copy())
        metadata = {
            "format": "llm_unlearn.weight_mask",
            "version": FORMAT_VERSION,
            "names": json.dumps(list(self._masks)),
            "mask_shapes": json.dumps({n: list(m.shape) for n, m in self._masks.items()}),
            "param_shapes": json.dumps({n: list(s) for n, s in self.param_shapes.items()}),
            "meta": json.dumps(self.meta, default=str),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> WeightMask:
        path = Path(path)
        if not path.is_file():
            raise UnlearnError(f"mask file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != "llm_unlearn.weight_mask":
                    raise UnlearnError(f"{path} is not an llm-unlearn mask file (metadata 'format' missing)")
                names = json.loads(metadata["names"])
                mask_shapes = json.loads(metadata["mask_shapes"])
                param_shapes = json.loads(metadata["param_shapes"])
                masks = {}
                for n in names:
                    shape = tuple(mask_shapes[n])
                    count = int(np.prod(shape, dtype=np.int64))
                    bits = np.unpackbits(f.get_tensor(n).numpy(), count=count, bitorder="little")
                    masks[n] = torch.from_numpy(bits.astype(bool).reshape(shape))
        except UnlearnError:
            raise
        except Exception as exc:  # corrupt header, missing key
            raise UnlearnError(f"cannot read mask file {path}: {exc}") from None
        return cls(masks, {n: tuple(s) for n, s in param_shapes.items()}, json.loads(metadata.get("meta", "{}")))


def load_mask(path: str | Path) -> WeightMask:
    """`WeightMask.load`."""
    return WeightMask.load(path)
