"""Pure loss functions of the unlearning methods, per item, so each is testable on fixed numbers.

- NPO (Zhang et al., 2024, "Negative Preference Optimization", eq. 3):
  ``L = (2/β)·log(1 + (π_θ(y|x)/π_ref(y|x))^β) = (2/β)·softplus(β·(log π_θ − log π_ref))``
  with ``log π(y|x)`` the log-likelihood summed over the answer tokens.
- SimNPO (Fan et al., 2024, "Simplicity Prevails", eq. 4), reference-free, length-normalised:
  ``L = −(2/β)·log σ(−(β/|y|)·log π_θ(y|x) − β·δ)`` (the margin enters as β·δ in the authors'
  code and open-unlearning's; ``delta_scale=1`` gives the paper's written ``− δ``).
- DPO (Rafailov et al., 2023, eq. 7), scaled by ``s`` (open-unlearning and TOFU's IdK-DPO use
  s = 2/β, the NPO scale; eq. 7 is s = 1):
  ``L = −s·log σ(β·[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))])``.
- KL(ref‖θ) per answer token, or over every non-padding position (`kl_all_positions`, the
  ``batchmean`` over all positions of open-unlearning's and TOFU's KL retain term), the retain
  regulariser of Maini et al. (2024, TOFU) "KL" variants.
- RMU (Li et al., 2024, WMDP, eq. 1–2): squared distance of a layer's activations to a target,
  averaged over the hidden dimension, per token.

The model-running helpers `sequence_logprobs` and `per_item_nll` are public: evaluation and
masks reuse them. All log-likelihoods use shifted labels: position t predicts token t+1, and
only tokens whose label is not -100 (the answer, by `llm_unlearn.data.qa`) count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and its mask: ``([B, T-1], [B, T-1] bool)``."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return logp * mask, mask


def sequence_logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_t log p(y_t | y_<t, x) [B], number of answer tokens [B])`` from logits."""
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def model_logits(model, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    """Logits of a causal LM on a QA batch (labels are not passed: no internal loss)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs)
    return out.logits


_FORWARD_ARGS: dict[tuple[type, str], bool] = {}  # (model class, argument) -> accepted


def core_model(model):
    """The Hugging Face model under DDP / DeepSpeed (``.module``) and PEFT (``get_base_model``) wrappers."""
    for _ in range(8):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            break
    return model


def accepts_forward_arg(model, name: str) -> bool:
    """Whether the causal LM under any wrappers takes `name` (e.g. ``logits_to_keep``) in forward."""
    import inspect

    cls = type(core_model(model))
    key = (cls, name)
    if key not in _FORWARD_ARGS:
        try:
            _FORWARD_ARGS[key] = name in inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            _FORWARD_ARGS[key] = False
    return _FORWARD_ARGS[key]


def cache_kwarg(model) -> str | None:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.24), else
    ``past_key_values``; None when the model takes neither."""
    for name in ("cache", "past_key_values"):
        if accepts_forward_arg(model, name):
            return name
    return None


def output_cache(out):
    """The KV cache of a model output, under either field name (``cache`` from transformers 5.24)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def answer_start(labels: torch.Tensor) -> int:
    """First position whose logits any answer token of the batch needs: one before the earliest
    labelled token (0 when there is none)."""
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    return max(int(labelled[0]) - 1, 0) if len(labelled) else 0


def answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of a QA batch with the lm-head run only from the first answer
    position on (``logits_to_keep``; the prompt's logits are never needed): ``logits[:, t]``
    predicts ``labels[:, t + 1]`` as with full logits. Saves the vocabulary projection, its
    log-softmax and their gradients on every prompt position (about 40 % of a TOFU item).
    Models whose forward has no ``logits_to_keep`` get full logits."""
    labels = batch["labels"]
    start = answer_start(labels)
    if start > 0 and accepts_forward_arg(model, "logits_to_keep"):
        logits = model_logits(model, batch, logits_to_keep=labels.shape[1] - start)
        return logits, labels[:, start:]
    return model_logits(model, batch), labels


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on a padded QA batch: ``(sum_logprob [B], n_tokens [B])`` over the answer tokens."""
    return sequence_logprobs_from_logits(*answer_logits(model, batch))


@torch.no_grad()
def per_item_nll(model, dataset, tokenizer, batch_size: int = 8, progress: bool = False) -> list[float]:
    """Mean answer-token NLL of every item of a tokenised QA dataset (eval mode, no grad)."""
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cols = [c for c in ("input_ids", "attention_mask", "labels") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(cols), batch_size=batch_size, collate_fn=QACollator(tokenizer))
    out: list[float] = []
    iterator: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc="NLL", leave=False)
    for batch in iterator:
        batch = {k: v.to(device) for k, v in batch.items()}
        s, n = sequence_logprobs(model, batch)
        out.extend((-s / n.clamp(min=1)).tolist())
    model.train(was_training)
    return out


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per item: ``(2/β)·softplus(β·(log π_θ − log π_ref))``; equals (2/β)·log 2 at θ = ref."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp))


def simnpo_loss(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float = 0.0,
                delta_scale: float | None = None) -> torch.Tensor:
    """SimNPO per item: ``−(2/β)·log σ(−(β/|y|)·log π_θ − s·δ)`` with ``s = β`` by default (the
    reference code's ``β·(NLL/|y| − δ)``) or the given `delta_scale`."""
    s = beta if delta_scale is None else delta_scale
    return -(2.0 / beta) * F.logsigmoid(-(beta / n_tokens.clamp(min=1)) * logp - s * delta)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, scale: float = 1.0) -> torch.Tensor:
    """DPO per item: ``−s·log σ(β·[(c − c_ref) − (r − r_ref)])`` (chosen = refusal, rejected =
    forget answer; s = `scale`)."""
    return -scale * F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def kl_per_token(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_v p_ref·(log p_ref − log p_θ)`` at each answer position: ``(kl [B, T-1] masked, mask)``."""
    mask = labels[:, 1:] != IGNORE_INDEX
    logq = F.log_softmax(logits[:, :-1, :].float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logq)).sum(-1)
    return kl * mask, mask


def kl_all_positions(logits: torch.Tensor, ref_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``Σ_v p_ref·(log p_ref − log p_θ)`` at every non-padding position (prompt and answer, the
    last one included): ``[B, T]``, zero on padding."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits.float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logq)).sum(-1)
    return kl * attention_mask


def activation_sq_error(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU distance per token, ``mean_d (h − target)²`` over positions with `mask`: ``[B, T]``."""
    err = (hidden.float() - target.float()).pow(2).mean(-1)
    return err * mask


def npo_at_reference(beta: float) -> float:
    """The NPO loss of one item when θ = ref: (2/β)·log 2."""
    return 2.0 / beta * math.log(2.0)
