"""Pure loss functions of the unlearning methods, per item, so each is testable on fixed numbers.

- NPO (Zhang et al., 2024, "Negative Preference Optimization", eq. 3):
  ``L = (2/β)·log(1 + (π_θ(y|x)/π_ref(y|x))^β) = (2/β)·softplus(β·(log π_θ − log π_ref))``
  with ``log π(y|x)`` the log-likelihood summed over the answer tokens.
- SimNPO (Fan et al., 2024, "Simplicity Prevails", eq. 4), reference-free, length-normalised:
  ``L = −(2/β)·log σ(−(β/|y|)·log π_θ(y|x) − δ)``.
- DPO (Rafailov et al., 2023, eq. 7):
  ``L = −log σ(β·[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))])``.
- KL(ref‖θ) per answer token, the retain regulariser of Maini et al. (2024, TOFU) "KL" variants.
- RMU (Li et al., 2024, WMDP, eq. 1–2): squared distance of a layer's activations to a target,
  averaged over the hidden dimension, per token.

The log-likelihoods they take come from `llm_unlearn.scoring` (shifted labels, answer tokens
only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llm_unlearn.scoring import IGNORE_INDEX


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per item: ``(2/β)·softplus(β·(log π_θ − log π_ref))``; equals (2/β)·log 2 at θ = ref."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp))


def simnpo_loss(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO per item: ``−(2/β)·log σ(−(β/|y|)·log π_θ − δ)``."""
    return -(2.0 / beta) * F.logsigmoid(-(beta / n_tokens.clamp(min=1)) * logp - delta)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DPO per item: ``−log σ(β·[(c − c_ref) − (r − r_ref)])`` (chosen = refusal, rejected = forget answer)."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def kl_per_token(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_v p_ref·(log p_ref − log p_θ)`` at each answer position: ``(kl [B, T-1] masked, mask)``."""
    mask = labels[:, 1:] != IGNORE_INDEX
    logq = F.log_softmax(logits[:, :-1, :].float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logq)).sum(-1)
    return kl * mask, mask


def activation_sq_error(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU distance per token, ``mean_d (h − target)²`` over positions with `mask`: ``[B, T]``."""
    err = (hidden.float() - target.float()).pow(2).mean(-1)
    return err * mask


def npo_at_reference(beta: float) -> float:
    """The NPO loss of one item when θ = ref: (2/β)·log 2."""
    return 2.0 / beta * math.log(2.0)
