"""Torch's intra-op thread count, picked by model size (`apply_thread_policy`).

A model under ~10 M parameters (the `tiny` test model) does matmuls too small to split across
threads: surplus OpenMP threads only spin-wait, worst on a loaded host. Measured with
`benchmarks/threads.py`: 20 GradDiff steps of the tiny model with 2 CPU-burning processes in the
background took 72 s on torch's default 2 threads and 4.8-6.5 s on one.
"""

from __future__ import annotations

import logging
import os

import torch

from llm_unlearn.errors import UnlearnError

logger = logging.getLogger(__name__)

# Below this many parameters a model's matmuls are too small to split across threads: extra
# OpenMP threads only spin-wait, and on a loaded host they wait for cores other processes hold
# (tiny model, 20 GradDiff steps on 2 busy cores: 38.8 s at torch's default, 0.8 s on one thread).
SMALL_MODEL_PARAMS = 10_000_000
_default_threads: int | None = None


def apply_thread_policy(model=None, num_params: int | None = None, policy: str | int | None = "auto") -> dict:
    """Pick torch's intra-op threads for a model; returns what was decided (for ``run.json``).

    ``auto`` (default): one thread for models under `SMALL_MODEL_PARAMS` parameters, torch's
    default otherwise; an ``OMP_NUM_THREADS`` in the environment always wins (the user chose).
    An int: that many threads. ``keep`` / None: leave torch as it is. Process-wide, like
    `llm_unlearn.perf.tune_allocator`: the CLI, the recipes and the library entry points
    (`run_unlearning`, `finetune`, the demo) call it, the building blocks never do."""
    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    if num_params is None and model is not None:
        num_params = sum(p.numel() for p in model.parameters())
    env = os.environ.get("OMP_NUM_THREADS")
    record: dict = {"policy": str(policy if policy is not None else "keep"), "model_params": num_params}
    if policy in (None, "keep"):
        record["reason"] = "left as is"
    elif isinstance(policy, int) or str(policy).isdigit():
        torch.set_num_threads(int(policy))
        record["reason"] = "fixed"
    elif policy != "auto":
        raise UnlearnError(f"threads must be auto, keep or a number, got {policy!r}")
    elif env:
        record["reason"] = f"OMP_NUM_THREADS={env}"
    elif num_params is not None and num_params < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
        record["reason"] = f"model under {SMALL_MODEL_PARAMS / 1e6:g} M parameters"
    else:
        torch.set_num_threads(_default_threads)  # an earlier small model in this process set 1
        record["reason"] = "torch default"
    record["threads"] = torch.get_num_threads()
    logger.debug("torch threads: %s", record)
    return record
