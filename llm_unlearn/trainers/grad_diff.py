"""Gradient Difference (Liu et al., 2022; the GradDiff / KL baselines of Maini et al., 2024, TOFU §4):
``L = γ·(−NLL(forget)) + α·R(retain)`` with ``R`` the retain NLL or ``KL(π_ref ‖ π_θ)`` over retain
answer tokens."""

from __future__ import annotations

from dataclasses import dataclass

from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import RetainRegularisedConfig, UnlearnTrainer


@dataclass
class GradDiffConfig(RetainRegularisedConfig):
    """γ·(−NLL_forget) + α·retain term."""


class GradDiffTrainer(UnlearnTrainer):
    method = "grad_diff"
    uses_retain = True

    def unlearn_loss(self, model, inputs, counts):
        forget = inputs["forget"]
        s, _ = sequence_logprobs(model, forget)
        forget_nll = -s.sum() / counts["forget_tokens"].clamp(min=1)
        loss = -self.args.gamma * forget_nll
        terms = {"forget_nll": forget_nll}
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
