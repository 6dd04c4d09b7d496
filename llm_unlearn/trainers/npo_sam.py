"""NPO with sharpness-aware minimisation (Fan et al., ICML 2025, "Towards LLM Unlearning Resilient
to Relearning Attacks: A Sharpness-Aware Minimization Perspective and Beyond", the SAM problem
(their eq. 5) solved with SAM's one-step inner maximisation):

    min_θ  γ·ℓ_f(θ + δ(θ)) + α·ℓ_r(θ),   δ(θ) = ρ·∇ℓ_f(θ) / ‖∇ℓ_f(θ)‖₂

with ℓ_f the NPO forget loss and ℓ_r the retain term of NPO+RT. Relearning is a small finetuning
step that lowers ℓ_f's counterpart (the forget NLL); minimising the forget loss at the worst
point of a ρ-ball makes the unlearned solution flat in those directions, so a few steps of
relearning move it less. Per micro-batch: one forward/backward at θ for the direction (a
gradient only, nothing accumulated), one forward/backward at θ + δ whose gradient is kept,
then the weights are restored and the retain term is taken at θ. The extra cost is one forward
and backward of the forget batch (SAM's usual 2× on the forget side), and memory for one copy
of the trainable weights (to restore θ exactly).

The perturbation covers the trainable parameters only (the adapter under LoRA; the reference
pass runs with it disabled, so it is unaffected). Under several processes each rank perturbs
with its own micro-batch gradient (the usual "m-sharpness" SAM); DeepSpeed is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate.utils import DistributedType

from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.losses import npo_loss
from llm_unlearn.trainers.npo import NPOConfig, NPOTrainer


@dataclass
class NPOSAMConfig(NPOConfig):
    """NPO+RT with a sharpness-aware forget term (sam_rho=0 gives NPO+RT at twice the forget cost)."""

    sam_rho: float = field(default=0.01, metadata={"help": "SAM radius ρ: the forget loss is minimised at the worst "
                                                            "point within ‖δ‖₂ ≤ ρ of the trainable weights (>= 0)"})

    def __post_init__(self):
        super().__post_init__()
        if self.sam_rho < 0:
            raise UnlearnError(f"sam_rho must be >= 0, got {self.sam_rho}")


class NPOSAMTrainer(NPOTrainer):
    method = "npo_sam"

    def setup(self) -> None:
        super().setup()
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise UnlearnError("npo_sam: DeepSpeed is not supported (SAM perturbs the weights between two backward passes)")

    def one_graph_parts(self) -> tuple[str, ...]:
        return ()  # two forget forwards at different weights, the first one backwarded on its own

    def _forget_term(self, model, forget: dict, ref_logp: torch.Tensor, counts: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logp, _ = sequence_logprobs(model, forget)
        npo = npo_loss(logp, ref_logp, self.args.beta).sum() / counts["forget_items"]
        return npo, logp

    def unlearn_loss(self, model, inputs, counts):
        if not (model.training and torch.is_grad_enabled()):
            return super().unlearn_loss(model, inputs, counts)  # evaluation: the plain NPO+RT value
        forget = inputs["forget"]
        ref_logp = self.reference_logprobs(model, forget)
        # 1. the ascent direction of the forget term at θ (the unwrapped model: no DDP gradient sync)
        inner = self.accelerator.unwrap_model(model)
        params = [p for p in inner.parameters() if p.requires_grad]
        npo, logp = self._forget_term(inner, forget, ref_logp, counts)
        grads = torch.autograd.grad(self.args.gamma * npo, params, allow_unused=True)
        sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norm = torch.stack(sq).sum().sqrt() if sq else torch.zeros((), device=npo.device)
        scale = self.args.sam_rho / (norm + 1e-12)
        deltas = [None if g is None else (g.detach() * scale).to(p.dtype) for p, g in zip(params, grads)]
        del grads
        terms = {"npo": npo.detach(), "forget_nll": -logp.detach().sum() / counts["forget_tokens"].clamp(min=1),
                 "sam_grad_norm": norm.detach()}
        # 2. the forget term at θ + δ, backwarded there; 3. back to θ (exactly: a copy, since
        # (θ + δ) − δ is not θ in floating point) for the retain term
        saved = [None if d is None else p.detach().clone() for p, d in zip(params, deltas)]
        with torch.no_grad():
            for p, d in zip(params, deltas):
                if d is not None:
                    p.add_(d)
        try:
            npo_sam, _ = self._forget_term(model, forget, ref_logp, counts)
            terms["npo_sam"] = npo_sam.detach()
            loss = self._backward_forget_term(model, self.args.gamma * npo_sam, terms)
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    if w is not None:
                        p.copy_(w)
        total = self.add_retain_term_at_theta(model, inputs, counts, loss, terms)
        if not total.requires_grad:  # no retain term: the Trainer's backward has nothing left to do
            total = total + torch.zeros((), device=total.device, requires_grad=True)
        return total, terms

    def add_retain_term_at_theta(self, model, inputs: dict, counts: dict, loss: torch.Tensor, terms: dict) -> torch.Tensor:
        """``loss + α·R(retain)`` at the restored weights (`loss` is already backwarded)."""
        if not self.needs_retain(self.args):
            return loss
        retain_loss, retain_nll = self.retain_term(model, inputs["retain"], counts)
        terms.update(retain_loss=retain_loss, retain_nll=retain_nll)
        return loss + self.args.alpha * retain_loss
