"""Gradient Ascent (Jang et al., 2023; the GA baseline of Maini et al., 2024, TOFU §4):
minimise ``−NLL(forget)``, i.e. maximise the cross-entropy of the forget answers."""

from __future__ import annotations

from dataclasses import dataclass

from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import UnlearnConfig, UnlearnTrainer


@dataclass
class GradAscentConfig(UnlearnConfig):
    """Gradient ascent has no method-specific hyperparameters (learning rate and epochs set the strength)."""


class GradAscentTrainer(UnlearnTrainer):
    method = "grad_ascent"

    def unlearn_loss(self, model, inputs, counts):
        forget = inputs["forget"]
        s, _ = sequence_logprobs(model, forget)
        forget_nll = -s.sum() / counts["forget_tokens"].clamp(min=1)
        return -forget_nll, {"forget_nll": forget_nll}
