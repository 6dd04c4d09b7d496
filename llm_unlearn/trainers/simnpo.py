"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning", eq. 4), reference-free and length-normalised:

    L = γ·E_forget[−(2/β)·log σ(−(β/|y|)·log π_θ(y|x) − δ)] + α·R(retain)"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import RetainRegularisedConfig, UnlearnTrainer
from llm_unlearn.trainers.losses import simnpo_loss


@dataclass
class SimNPOConfig(RetainRegularisedConfig):
    """SimNPO + retain term (defaults: β=2.5, δ=0, the paper's TOFU setting)."""

    beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature β (> 0)"})
    delta: float = field(default=0.0, metadata={"help": "reward margin δ (the paper's γ)"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise UnlearnError(f"beta must be > 0, got {self.beta}")


class SimNPOTrainer(UnlearnTrainer):
    method = "simnpo"
    uses_retain = True

    def unlearn_loss(self, model, inputs, counts):
        forget = inputs["forget"]
        logp, n = sequence_logprobs(model, forget)
        simnpo = simnpo_loss(logp, n, self.args.beta, self.args.delta).sum() / counts["forget_items"]
        loss = self.args.gamma * simnpo
        terms = {"simnpo": simnpo, "forget_nll": -logp.sum() / counts["forget_tokens"].clamp(min=1)}
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
