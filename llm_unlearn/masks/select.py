"""From scores to a `WeightMask`: the `ratio` fraction of weights with the highest scores may
change (WAGLE's selection; the same rule for every baseline score).

- scope ``global``: one exact top-k over all covered weights, k = round(ratio · N); ties at the
  threshold go to the earlier tensor / lower flat index, so the density is exact.
- scope ``per_layer``: top round(ratio · n_l) in every tensor (density within half a weight of the
  ratio per tensor).
- scope ``per_row``: top round(ratio · row length) within every output row (Wanda's comparison
  group, Sun et al. 2024 §3; the default for wanda).
- scope ``all``: ``global`` over every parameter of the model (embeddings, norms, lm_head), as
  WAGLE's reference ranks them (`compute_mask`; not with LoRA-only row masks or wanda).
- granularity ``row``: a row (output channel) scores the mean of its weights' scores; rows are
  selected whole (global: by descending row score until ratio · N weights are covered, within one
  row; per_layer: round(ratio · rows) rows per tensor).

The exact top-k bisects on the float32 bit pattern (non-negative floats sort like their bits), so
it needs no sorted copy of all N scores — a few counting passes over the score tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks.scores import (
    DEFAULT_GAMMA,
    EVERY_PARAMETER,
    METHODS,
    LossFn,
    compute_scores,
    default_loss,
    every_parameter_targets,
    find_targets,
)
from llm_unlearn.masks.weight_mask import WeightMask

SCOPES = ("global", "per_layer", "per_row", "all")
# the default scope of each method: Wanda selects within each output row (Sun et al. 2024, §3)
DEFAULT_SCOPE = {"wanda": "per_row"}
GRANULARITIES = ("element", "row")
_INF_BITS = 0x7F800000


def check_ratio(ratio: float) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise UnlearnError(f"mask ratio must be a number in (0, 1], got {ratio!r}") from None
    if not (0.0 < r <= 1.0):
        raise UnlearnError(f"mask ratio must be in (0, 1] (fraction of weights allowed to change), got {ratio}")
    return r


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Exactly k True over all tensors, at the highest scores (ties: earliest first)."""
    total = sum(s.numel() for s in scores)
    if k >= total:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    bits = []
    for s in scores:
        s = s.detach().float().contiguous()
        if torch.isnan(s).any() or (s < 0).any():
            raise UnlearnError("scores must be non-negative and not NaN")
        bits.append((s + 0.0).view(torch.int32))  # + 0.0 turns -0.0 into +0.0

    def count_ge(v: int) -> int:
        return sum(int((b >= v).sum()) for b in bits)

    lo, hi = 0, _INF_BITS  # count_ge(0) = total >= k; find the largest v with count_ge(v) >= k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_ge(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    masks = [b > lo for b in bits]
    need = k - sum(int(m.sum()) for m in masks)
    for b, m in zip(bits, masks):
        if need <= 0:
            break
        ties = (b == lo).reshape(-1).nonzero().squeeze(1)[:need]
        m.view(-1)[ties] = True
        need -= ties.numel()
    return masks


def _row_scores(score: torch.Tensor, out_axis: int) -> torch.Tensor:
    dims = [d for d in range(score.dim()) if d != out_axis]
    return score.float().mean(dim=dims) if dims else score.float()


def _row_shape(shape: tuple[int, ...], out_axis: int) -> tuple[int, ...]:
    return tuple(s if d == out_axis else 1 for d, s in enumerate(shape))


def select_mask(scores: Mapping[str, torch.Tensor], ratio: float, scope: str = "global", granularity: str = "element",
                out_axes: Mapping[str, int] | None = None, meta: Mapping | None = None) -> WeightMask:
    """Keep the top `ratio` of weights by score. `out_axes[name]` = axis of output channels (row
    granularity; default 0)."""
    ratio = check_ratio(ratio)
    if scope not in SCOPES:
        raise UnlearnError(f"mask scope '{scope}' unknown; expected one of {', '.join(SCOPES)}")
    if granularity not in GRANULARITIES:
        raise UnlearnError(f"mask granularity '{granularity}' unknown; expected one of {', '.join(GRANULARITIES)}")
    if not scores:
        raise UnlearnError("no scores to select from")
    names = list(scores)
    shapes = {n: tuple(scores[n].shape) for n in names}
    axes = {n: (out_axes or {}).get(n, 0) for n in names}
    out: dict[str, torch.Tensor] = {}
    if scope == "per_row":
        if granularity != "element":
            raise UnlearnError("mask scope 'per_row' selects elements within each row; use granularity element")
        for n in names:
            out[n] = _per_row_topk(scores[n], axes[n], ratio)
    elif granularity == "element":
        if scope in ("global", "all"):
            total = sum(scores[n].numel() for n in names)
            for n, m in zip(names, _topk_masks([scores[n] for n in names], _round(ratio * total))):
                out[n] = m
        else:
            for n in names:
                out[n] = _topk_masks([scores[n]], _round(ratio * scores[n].numel()))[0]
    else:
        rows = {n: _row_scores(scores[n], axes[n]) for n in names}
        if scope == "per_layer":
            picked = {n: _topk_masks([rows[n]], _round(ratio * rows[n].numel()))[0] for n in names}
        else:
            picked = _global_rows(rows, {n: scores[n].numel() // max(rows[n].numel(), 1) for n in names},
                                  ratio * sum(scores[n].numel() for n in names))
        for n in names:
            out[n] = picked[n].reshape(_row_shape(shapes[n], axes[n]))
    info = {"ratio": ratio, "scope": scope, "granularity": granularity, **dict(meta or {})}
    return WeightMask({n: m.cpu() for n, m in out.items()}, shapes, info)


def _per_row_topk(score: torch.Tensor, out_axis: int, ratio: float) -> torch.Tensor:
    """Top round(ratio · row length) of every output row (ties: lower index first)."""
    if score.dim() < 2:
        return _topk_masks([score], _round(ratio * score.numel()))[0]
    rows = score.detach().float().movedim(out_axis, 0).reshape(score.shape[out_axis], -1)
    k = _round(ratio * rows.shape[1])
    mask = torch.zeros_like(rows, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
        mask.scatter_(1, idx, True)
    moved = list(score.movedim(out_axis, 0).shape)
    return mask.reshape(moved).movedim(0, out_axis)


def _global_rows(rows: Mapping[str, torch.Tensor], width: Mapping[str, int], target: float) -> dict[str, torch.Tensor]:
    """Rows by descending score until the covered weights are closest to `target`."""
    names = list(rows)
    all_scores = torch.cat([rows[n].reshape(-1).cpu() for n in names])
    all_width = torch.cat([torch.full((rows[n].numel(),), width[n], dtype=torch.float64) for n in names])
    order = torch.sort(all_scores, descending=True, stable=True).indices
    cum = torch.cumsum(all_width[order], 0)
    j = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)).item())  # first with cum >= target
    j = min(j, len(cum) - 1)
    before = float(cum[j - 1]) if j > 0 else 0.0
    count = j + 1 if abs(float(cum[j]) - target) <= abs(target - before) else j
    flat = torch.zeros(all_scores.numel(), dtype=torch.bool)
    flat[order[:count]] = True
    out, start = {}, 0
    for n in names:
        size = rows[n].numel()
        out[n] = flat[start:start + size]
        start += size
    return out


def compute_mask(model: nn.Module, forget_loader: Iterable | None = None, retain_loader: Iterable | None = None,
                 method: str = "wagle", ratio: float = 0.8, scope: str | None = None,
                 target_modules: str | None = None, gamma: float = DEFAULT_GAMMA, seed: int = 0,
                 granularity: str = "element", loss_fn: LossFn = default_loss, progress: bool = True) -> WeightMask:
    """Score the target weights of `model` with `method` and keep the top `ratio` as may-change.

    See `compute_scores` for the methods and `select_mask` for scope / granularity (default scope:
    per_row for wanda, global otherwise; ``all`` ranks every parameter). The mask's keys are
    base-model parameter names, so it applies to the same model with or without LoRA.
    """
    check_ratio(ratio)  # fail before the expensive part
    if method not in METHODS:
        raise UnlearnError(f"mask method '{method}' unknown; expected one of {', '.join(METHODS)}")
    scope = scope or DEFAULT_SCOPE.get(method, "global")
    if scope == "all":
        if method == "wanda":
            raise UnlearnError("mask scope 'all' (every parameter) does not apply to wanda (linear layers only)")
        if target_modules is not None:
            raise UnlearnError("mask scope 'all' covers every parameter; it does not combine with target_modules")
        target_modules = EVERY_PARAMETER
    if scope not in SCOPES:
        raise UnlearnError(f"mask scope '{scope}' unknown; expected one of {', '.join(SCOPES)}")
    if granularity not in GRANULARITIES:
        raise UnlearnError(f"mask granularity '{granularity}' unknown; expected one of {', '.join(GRANULARITIES)}")
    targets = every_parameter_targets(model) if target_modules == EVERY_PARAMETER else find_targets(model, target_modules)
    scores = compute_scores(model, forget_loader, retain_loader, method=method, target_modules=target_modules,
                            gamma=gamma, seed=seed, loss_fn=loss_fn, progress=progress)
    meta = {"method": method, "seed": seed,
            "target_modules": "all parameters" if target_modules == EVERY_PARAMETER else target_modules}
    if method == "wagle":
        meta["gamma"] = gamma
    mask = select_mask(scores, ratio, scope, granularity, {t.name: t.out_axis for t in targets}, meta)
    return mask


__all__ = ["DEFAULT_SCOPE", "GRANULARITIES", "SCOPES", "check_ratio", "compute_mask", "default_loss", "select_mask"]
