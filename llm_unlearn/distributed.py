"""Per-rank work, one answer: helpers that keep reference passes, mask scores and evaluation correct
when a recipe runs on several processes (DDP, FSDP2, DeepSpeed ZeRO-3 through Accelerate).

Three patterns cover the library's needs:

- *Per-item tables* (NPO reference log-likelihoods log π_ref(y|x) of every forget item, per-item
  evaluation values): each rank computes a shard of the items (`shard_indices`), then
  `gather_by_index` / `map_sharded` merge the shards into the full table, in item order, on every
  rank. Shards are padded to equal length because under FSDP/ZeRO-3 every forward is a collective:
  all ranks must run the same number of batches or the job hangs. Padding items are computed
  twice and dropped at the merge.
- *Sums over data* (WAGLE/SalUn gradient accumulators, Σ_i ∇ℓ_i over the forget or retain set):
  each rank sums over its shard, `all_reduce_sum_` adds the partial sums. Reduce the gradients
  *before* the non-linear score (|w·g|, g², …): the score of a sum is not the sum of scores.
- *Scalars* (a mean loss over the whole forget set): `all_reduce_mean` weighted by item counts.

Every function works unchanged in a single process (no process group): then it is the identity.
Process groups only: this module imports nothing of the package. Sharded reference scoring lives in
`llm_unlearn.trainers.reference`, sharded evaluation in `llm_unlearn.eval.sharded`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

try:
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    SHARDED_WRAPPERS: tuple[type, ...] = (FSDPModule, FullyShardedDataParallel)
except ImportError:  # pragma: no cover - torch built without distributed
    SHARDED_WRAPPERS = ()

T = TypeVar("T")
R = TypeVar("R")


def _dist():
    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else of the launcher's env, else (0, 1)."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """This rank's item indices: strided, padded so every rank gets ``ceil(n / world)`` of them.

    Rank r takes r, r+W, r+2W, …; a rank that runs out repeats index ``n-1`` (a padding item the
    merge drops). Equal lengths keep collective forwards (FSDP, ZeRO-3) in lockstep.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if n == 0:
        return []
    per_rank = math.ceil(n / world_size)
    own = list(range(rank, n, world_size))
    return own + [n - 1] * (per_rank - len(own))


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    dist = _dist()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_by_index(indices: Sequence[int], values: Sequence[T], n: int) -> list[T]:
    """Merge per-rank ``(index, value)`` pairs into the full list of `n` values, on every rank.

    Each index must be covered by some rank; repeats (padding) must agree and are kept once.
    """
    if len(indices) != len(values):
        raise ValueError(f"{len(indices)} indices but {len(values)} values")
    merged: dict[int, T] = {}
    for part_idx, part_val in gather_objects((list(indices), list(values))):
        for i, v in zip(part_idx, part_val):
            merged.setdefault(i, v)
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"items {missing[:5]} were computed by no rank ({len(missing)} missing)")
    return [merged[i] for i in range(n)]


def map_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """``fn(items)`` computed shard-wise: each rank runs `fn` on its shard, results merged in order.

    `fn` takes a list of items and returns one result per item (e.g. a function that batches the
    items through the model and returns per-item log-likelihoods).
    """
    idx = shard_indices(len(items))
    results = list(fn([items[i] for i in idx]))
    if len(results) != len(idx):
        raise ValueError(f"fn returned {len(results)} results for {len(idx)} items")
    return gather_by_index(idx, results, len(items))


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """In place: each tensor becomes the sum of that tensor over ranks (no-op in one process).

    For gradient accumulators of weight-attribution scores; tensors may live on CPU (gloo) or GPU
    (nccl). DTensor shards (FSDP2) are reduced shard by shard through their local tensors: a
    score-gathering step should call this on *unsharded* sums only if each rank holds full copies.
    """
    dist = _dist()
    if dist is None:
        return
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=_group_for(local))


_GLOO_GROUP: list = []


def _group_for(t: torch.Tensor):
    """The default group, or for a CPU tensor under NCCL (which only reduces GPU tensors) a gloo
    group over the same ranks, created once (collectively: every rank reaches the first call)."""
    dist = _dist()
    if t.device.type != "cpu" or dist.get_backend() != "nccl":
        return None
    if not _GLOO_GROUP:
        _GLOO_GROUP.append(dist.new_group(backend="gloo"))
    return _GLOO_GROUP[0]


def all_reduce_mean(value: float, count: int = 1) -> float:
    """The count-weighted mean of `value` over ranks (`count` items behind each rank's value)."""
    dist = _dist()
    if dist is None:
        return float(value)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value) * count, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t[0] / t[1].clamp(min=1)).item()


def is_sharded_model(model) -> bool:
    """True when parameters are sharded across ranks (FSDP1/FSDP2 or DeepSpeed ZeRO-3)."""
    if SHARDED_WRAPPERS and any(isinstance(m, SHARDED_WRAPPERS) for m in model.modules()):
        return True
    return any(hasattr(p, "ds_id") for p in model.parameters())


def generation_kwargs(model) -> dict[str, Any]:
    """Extra `generate()` kwargs for sharded models: ``synced_gpus`` keeps every rank stepping until
    all ranks finish (a sharded forward is a collective; ranks that stopped early would hang the rest)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1 and is_sharded_model(model):
        return {"synced_gpus": True}
    return {}


def mark_for_synced_generation(model) -> None:
    """Make `generate()` use ``synced_gpus`` on a sharded model, without changing its callers.

    transformers turns ``synced_gpus`` on by itself for ZeRO-3 and for modules it wrapped with
    FSDP; modules sharded by Accelerate's FSDP2 it does not recognise, so flag them here."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1 or not is_sharded_model(model):
        return
    for module in model.modules():
        if hasattr(module, "generate") and hasattr(module, "generation_config"):
            module._is_fsdp_managed_module = True


def shard_dataset(dataset):
    """This rank's (padded) shard of a `datasets.Dataset` or list, see `shard_indices`."""
    idx = shard_indices(len(dataset))
    return dataset.select(idx) if hasattr(dataset, "select") else [dataset[i] for i in idx]
