"""Unlearning trainers: one `transformers.Trainer` subclass and one `TrainingArguments` config per
method. `METHODS` maps a method name to ``(TrainerClass, ConfigClass)``; to add a method, copy
`npo.py`, write its `unlearn_loss`, and register it here."""

from __future__ import annotations

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import per_item_nll, sequence_logprobs
from llm_unlearn.trainers.base import (
    RetainRegularisedConfig,
    UnlearnCollator,
    UnlearnConfig,
    UnlearnTrainer,
    batch_counts,
)
from llm_unlearn.trainers.grad_ascent import GradAscentConfig, GradAscentTrainer
from llm_unlearn.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from llm_unlearn.trainers.idk_dpo import IdkDPOConfig, IdkDPOTrainer
from llm_unlearn.trainers.npo import NPOConfig, NPOTrainer
from llm_unlearn.trainers.npo_sam import NPOSAMConfig, NPOSAMTrainer
from llm_unlearn.trainers.reference import add_reference_logprobs, sharded_reference_logprobs
from llm_unlearn.trainers.rmu import RMUConfig, RMUTrainer
from llm_unlearn.trainers.simnpo import SimNPOConfig, SimNPOTrainer

METHODS: dict[str, tuple[type[UnlearnTrainer], type[UnlearnConfig]]] = {
    "grad_ascent": (GradAscentTrainer, GradAscentConfig),
    "grad_diff": (GradDiffTrainer, GradDiffConfig),
    "npo": (NPOTrainer, NPOConfig),
    "npo_sam": (NPOSAMTrainer, NPOSAMConfig),
    "simnpo": (SimNPOTrainer, SimNPOConfig),
    "idk_dpo": (IdkDPOTrainer, IdkDPOConfig),
    "rmu": (RMUTrainer, RMUConfig),
}


def get_method(name: str) -> tuple[type[UnlearnTrainer], type[UnlearnConfig]]:
    """``(TrainerClass, ConfigClass)`` of a method name; `UnlearnError` listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnlearnError(f"unknown method '{name}'; valid methods: {', '.join(METHODS)}") from None


__all__ = [
    "METHODS", "GradAscentConfig", "GradAscentTrainer", "GradDiffConfig", "GradDiffTrainer", "IdkDPOConfig",
    "IdkDPOTrainer", "NPOConfig", "NPOSAMConfig", "NPOSAMTrainer", "NPOTrainer", "RMUConfig", "RMUTrainer", "RetainRegularisedConfig",
    "SimNPOConfig", "SimNPOTrainer", "UnlearnCollator", "UnlearnConfig", "UnlearnTrainer", "add_reference_logprobs",
    "batch_counts", "get_method", "per_item_nll", "sequence_logprobs", "sharded_reference_logprobs",
]
