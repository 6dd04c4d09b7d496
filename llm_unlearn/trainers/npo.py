"""Negative Preference Optimization (Zhang et al., 2024, "Negative Preference Optimization: From
Catastrophic Collapse to Effective Unlearning", eq. 3 and NPO+RT §5):

    L = γ·(2/β)·E_forget[log(1 + (π_θ(y|x)/π_ref(y|x))^β)] + α·R(retain)

with sequence log-likelihoods summed over the answer tokens; α = 0 is plain NPO. The reference is
the model before unlearning: adapters disabled under LoRA, cached per item with full weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import RetainRegularisedConfig, UnlearnTrainer
from llm_unlearn.trainers.losses import npo_loss


@dataclass
class NPOConfig(RetainRegularisedConfig):
    """NPO + retain term (NPO+RT); alpha=0 gives plain NPO."""

    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature β (> 0)"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise UnlearnError(f"beta must be > 0, got {self.beta}")


class NPOTrainer(UnlearnTrainer):
    method = "npo"
    uses_retain = True
    reference_prefixes = ("",)

    def unlearn_loss(self, model, inputs, counts):
        forget = inputs["forget"]
        # the reference pass first: its no-grad activations are freed before the graph is built
        ref_logp = self.reference_logprobs(model, forget)
        logp, _ = sequence_logprobs(model, forget)
        npo = npo_loss(logp, ref_logp, self.args.beta).sum() / counts["forget_items"]
        loss = self.args.gamma * npo
        terms = {"npo": npo, "forget_nll": -logp.sum() / counts["forget_tokens"].clamp(min=1)}
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
