"""Log-probabilities of a causal LM on QA batches, shared by training and evaluation.

All log-likelihoods use shifted labels: position t predicts token t+1, and only tokens whose
label is not -100 (the answer, by `llm_unlearn.data.qa`) count. `answer_logits` runs the lm-head
only from the first answer position on (``logits_to_keep``); `cache_kwarg` / `output_cache`
handle the KV cache under both of its transformers names; `core_model` unwraps DDP / DeepSpeed /
PEFT. The trainers (`llm_unlearn.trainers`), the evaluator and the S3T ensemble
all score through these functions, so a training loss and an evaluation NLL are the same number.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_unlearn.data.qa import IGNORE_INDEX, QACollator


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


class OneGraph:
    """The training forwards of one step's QA batches (forget, retain, refusals) as one batched
    forward, so that autograd builds one graph in which every weight is used once.

    Why: with the optimizer step inside backward (`llm_unlearn.optim`) a weight is updated when its
    gradient is complete. Over two graphs (the forget forward, then the retain forward) backward
    runs through every layer of the later graph first, and each weight's gradient from it waits in
    autograd's buffer until the earlier graph's part arrives: a full gradient buffer after all
    (0.54 GB on SmolLM2-135M in fp32; measured 0.84 vs 0.36 GB above the weights for one step's
    backward of 4 + 4 items). In one graph each gradient is complete once computed.

    Calling it as the model, ``oneg(input_ids=part["input_ids"], attention_mask=...,
    logits_to_keep=k)`` with the very ``input_ids`` tensor of one of `parts` and grad enabled,
    runs the joint forward once (every part right-padded to the longest, so causal attention sees
    the same tokens; the head from the first answer position of any part, as `answer_logits`
    asks) and returns that part's rows and positions of the joint logits: the same values as its
    own forward up to float summation order. Any other call (no grad, other inputs or arguments,
    positions before the kept ones) goes to the model unchanged. Attributes are the model's;
    ``.module`` is the model (`core_model` unwraps it)."""

    def __init__(self, model, parts: list[dict[str, torch.Tensor]]):
        self.module = model
        self._parts = parts
        self._rows: list[int] = []
        self._logits: torch.Tensor | None = None
        self._first = 0  # the position of the joint logits' first row

    def __getattr__(self, name: str):  # only for names not set on the wrapper itself
        return getattr(self.__dict__["module"], name)

    def _part(self, input_ids) -> int | None:
        return next((i for i, p in enumerate(self._parts) if p["input_ids"] is input_ids), None)

    def _run(self) -> None:
        length = max(p["input_ids"].shape[1] for p in self._parts)
        first = 0
        if accepts_forward_arg(self.module, "logits_to_keep"):
            first = min(answer_start(p["labels"]) for p in self._parts)
        ids = torch.cat([F.pad(p["input_ids"], (0, length - p["input_ids"].shape[1]), value=0) for p in self._parts])
        mask = torch.cat([F.pad(p["attention_mask"], (0, length - p["attention_mask"].shape[1]), value=0)
                          for p in self._parts])
        extra = {"logits_to_keep": length - first} if first > 0 else {}
        self._logits = self.module(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
        self._first = first
        self._rows = [0]
        for p in self._parts:
            self._rows.append(self._rows[-1] + p["input_ids"].shape[0])

    def __call__(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids")
        keep = kwargs.get("logits_to_keep", 0)
        i = None if args or set(kwargs) - {"input_ids", "attention_mask", "use_cache", "logits_to_keep"} \
            or kwargs.get("use_cache") or not isinstance(keep, int) else self._part(input_ids)
        if i is None or not torch.is_grad_enabled() or not self.module.training \
                or kwargs.get("attention_mask") is not self._parts[i]["attention_mask"]:
            return self.module(*args, **kwargs)
        length = input_ids.shape[1]
        start = length - keep if keep else 0
        if self._logits is None:
            self._run()
        if start < self._first:
            return self.module(*args, **kwargs)
        rows = slice(self._rows[i], self._rows[i + 1])
        return CausalLMOutputWithPast(logits=self._logits[rows, start - self._first:length - self._first])


@torch.no_grad()
def per_item_nll(model, dataset, tokenizer, batch_size: int = 8, progress: bool = False) -> list[float]:
    """Mean answer-token NLL of every item of a tokenised QA dataset (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cols = [c for c in ("input_ids", "attention_mask", "labels") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(cols), batch_size=batch_size, collate_fn=QACollator(tokenizer))
    out: list[float] = []
    iterator: Iterable = loader
    if progress:
        iterator = tqdm(loader, desc="NLL", leave=False)
    for batch in iterator:
        batch = {k: v.to(device) for k, v in batch.items()}
        s, n = sequence_logprobs(model, batch)
        out.extend((-s / n.clamp(min=1)).tolist())
    model.train(was_training)
    return out
