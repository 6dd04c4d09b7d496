"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning", eq. 4), reference-free and length-normalised:

    L = γ·E_forget[−(2/β)·log σ(−(β/|y|)·log π_θ(y|x) − β·δ)] + α·R(retain)

δ enters as β·δ, as in the authors' code and open-unlearning (``β·(NLL/|y| − δ)``);
``delta_scaled_by_beta: false`` gives eq. 4's written ``− δ``. The default forget weight
γ = 0.1375 is the authors' TOFU setting (Unlearn-Simple), where the retain NLL has weight 1."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import RetainRegularisedConfig, UnlearnTrainer
from llm_unlearn.trainers.losses import simnpo_loss


@dataclass
class SimNPOConfig(RetainRegularisedConfig):
    """SimNPO + retain term (defaults: β=2.5, δ=0, γ=0.1375, the authors' TOFU setting)."""

    gamma: float = field(default=0.1375, metadata={"help": "weight of the forget term (0.1375: the authors' TOFU setting)"})
    beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature β (> 0)"})
    delta: float = field(default=0.0, metadata={"help": "reward margin δ; enters the loss as β·δ (see delta_scaled_by_beta)"})
    delta_scaled_by_beta: bool = field(default=True, metadata={"help": "margin term β·δ (authors' code, open-unlearning); false: δ (eq. 4 as written)"})

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
        scale = None if self.args.delta_scaled_by_beta else 1.0
        simnpo = simnpo_loss(logp, n, self.args.beta, self.args.delta, scale).sum() / counts["forget_items"]
        loss = self.args.gamma * simnpo
        terms = {"simnpo": simnpo, "forget_nll": -logp.sum() / counts["forget_tokens"].clamp(min=1)}
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
