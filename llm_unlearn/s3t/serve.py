"""Serving an S3T run (Chowdhury et al., 2024, Sec. 3): one base model and, per shard, the
checkpoint of its served adapter prefix (the ledger's ``serving`` table). A shard waiting for
retraining is left out; with none serving, the ensemble refuses to score or generate unless
``allow_base`` (then the bare base model answers alone).

How the m' serving shards are combined (``aggregate``, recorded in the run; ``--aggregate``).
With ℓ_s(t) = log p_s(x_t | x_<t) the log-probabilities of shard s at position t and
L_s(t) = Σ_{j≤t} ℓ_s(j) the log-likelihood shard s gives everything before the next token:

* ``mean-logprob`` – log_softmax( (1/m') Σ_s ℓ_s ): a normalised geometric mean (product of
  experts). A fact that one shard knows is diluted by the shards that do not.
* ``mixture`` – log( (1/m') Σ_s exp ℓ_s ): the mean probability, per token.
* ``posterior`` – a Bayesian model average with a uniform prior over shards:
  log Σ_s w_s(t) exp ℓ_s(t), w_s(t) = softmax_s L_s(t−1). Each shard is weighted by the
  likelihood it gives the prompt (and, inside an answer, the answer so far), so a question about
  an entity that one shard trained on is answered mostly by that shard. By the chain rule the
  probability of a whole answer y to a prompt x is Σ_s w_s(x) p_s(y | x) with w_s(x) ∝ p_s(x):
  the Bayesian model average over shards of the answer.
* ``route`` – the top-1 shard by that same likelihood: ℓ_{s*}(t), s* = argmax_s L_s(t−1) (the
  prompt's likelihood for the first answer token; ties go to the lowest shard).

Every mode reads only the served adapters (and the base), so a deletion stays exact. The weights
depend only on tokens already seen, so one forward over a whole sequence and token-by-token
generation with a KV cache give the same distributions. `S3TEnsemble.forward` returns the
combined log-probabilities as ``logits`` (and the shifted cross-entropy as ``loss``); `generate`
decodes greedily (or samples) with left padding, so code written for a Hugging Face causal LM
evaluates it unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.train import AGGREGATES, file_sha256, load_base, load_run, weights_sha256
from llm_unlearn.scoring import cache_kwarg, output_cache

IGNORE_INDEX = -100


def prefix_loglik(per_shard: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L[s, b, t] = Σ_{1≤j≤t} log p_s(x_j | x_<j) over real tokens (pads and a left pad's
    first real token excluded): the log-likelihood shard s gives sequence b up to position t."""
    tok = per_shard[:, :, :-1].gather(-1, input_ids[:, 1:].expand(per_shard.size(0), -1, -1).unsqueeze(-1)).squeeze(-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
    tok = torch.where(valid, tok, torch.zeros_like(tok))
    return torch.cat([torch.zeros_like(tok[:, :, :1]), tok.cumsum(-1)], dim=-1)


def aggregate_logprobs(per_shard: torch.Tensor, mode: str, loglik: torch.Tensor | None = None) -> torch.Tensor:
    """Combine per-shard next-token log-probabilities ``[S, ..., V]`` into ``[..., V]`` (see the
    module docstring). `loglik` ``[S, ...]``: the log-likelihood each shard gives what came
    before each position (`prefix_loglik`), needed by ``posterior`` and ``route``."""
    if mode == "mean-logprob":
        return torch.log_softmax(per_shard.mean(0), dim=-1)
    if mode == "mixture":
        return torch.logsumexp(per_shard, dim=0) - math.log(per_shard.size(0))
    if mode not in ("posterior", "route"):
        raise UnlearnError(f"aggregate {mode!r} unknown (expected one of {', '.join(AGGREGATES)})")
    if loglik is None:
        raise UnlearnError(f"aggregate {mode!r} needs the shards' prefix log-likelihoods")
    if mode == "posterior":
        weights = torch.log_softmax(loglik, dim=0)
        return torch.logsumexp(per_shard + weights.unsqueeze(-1), dim=0)
    best = loglik.argmax(0)  # first maximum: ties go to the lowest shard
    return per_shard.gather(0, best[None, ..., None].expand(1, *per_shard.shape[1:])).squeeze(0)


class S3TEnsemble(torch.nn.Module):
    """Base model + one LoRA adapter (the served prefix) per serving shard; see module docstring."""

    def __init__(self, run_dir: str | Path, dtype: str = "float32", verify: bool = True, aggregate: str | None = None,
                 allow_base: bool = False, serve_like: str | Path | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ledger, self.plan, self.cfg, self.manifest = load_run(self.run_dir)
        self.aggregate = aggregate or self.cfg.aggregate
        if self.aggregate not in AGGREGATES:
            raise UnlearnError(f"--aggregate {self.aggregate!r} unknown (expected one of {', '.join(AGGREGATES)})")
        self.allow_base = allow_base
        self.serve_like = serve_like
        base, self.tokenizer = load_base(self.run_dir, self.manifest, dtype)
        self.peft = None
        self._base = base
        self.verify = verify
        self.served: dict[int, dict] = {}
        self.reload()
        self.check_serving()

    def check_serving(self) -> None:
        """Refuse to answer with no shard serving (every shard awaits retraining), unless `allow_base`."""
        if not self.served and not self.allow_base:
            raise UnlearnError(
                f"{self.run_dir}: no shard is serving (all await retraining), so only the bare base model could "
                f"answer; run `llm-unlearn s3t retrain {self.run_dir}`, or pass --allow-base to use the base model")

    def _serving_snapshot(self) -> dict[int, dict]:
        if self.serve_like is None:
            return {s: v for s, v in self.ledger.serving().items() if v["status"] == "serving"}
        # serve this run's stages at the (shard, sequence, prefix) another run serves: a reference
        # trained without some samples, compared with the run they were deleted from
        other, *_ = load_run(self.serve_like)
        mine = {(r.shard, r.sequence, r.stage): r for r in self.ledger.stages()}
        out = {}
        for s, v in other.serving().items():
            if v["status"] != "serving":
                continue
            rec = mine.get((s, v["sequence"], v["prefix"]))
            if rec is None:
                raise UnlearnError(f"{self.run_dir}: no stage for shard {s} sequence {v['sequence']} prefix "
                                   f"{v['prefix']}, which {self.serve_like} serves")
            out[s] = {**v, "generation": rec.generation, "stage_id": rec.stage_id}
        return out

    # -- loading ---------------------------------------------------------------------------
    def reload(self) -> dict[int, dict]:
        """Re-read the ledger's serving state and (re)load adapters whose served stage changed."""
        snapshot = self._serving_snapshot()
        for shard, info in snapshot.items():
            if self.served.get(shard, {}).get("stage_id") == info["stage_id"]:
                continue
            rec = self.ledger.stage(info["stage_id"])
            ckpt = self.run_dir / rec.checkpoint
            weights = ckpt / "adapter_model.safetensors"
            if not weights.is_file():
                raise UnlearnError(f"served checkpoint missing: {weights}")
            if self.verify and file_sha256(weights) != rec.sha256:
                raise UnlearnError(f"{weights}: sha256 differs from the ledger's record (checkpoint altered)")
            name = f"shard{shard}"
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self._base, str(ckpt), adapter_name=name)
            else:
                if name in self.peft.peft_config:
                    self.peft.delete_adapter(name)
                self.peft.load_adapter(str(ckpt), adapter_name=name)
            self.served[shard] = {**info, "checkpoint": rec.checkpoint, "sha256": rec.sha256}
        for shard in [s for s in self.served if s not in snapshot]:
            if len(self.peft.peft_config) > 1:  # PEFT keeps at least one adapter; an unserved one is never used
                self.peft.delete_adapter(f"shard{shard}")
            del self.served[shard]
        self.eval()
        return self.served

    def adapter_state(self, shard: int) -> dict[str, torch.Tensor]:
        """The adapter weights shard `shard` serves right now (keys as in its checkpoint file)."""
        if shard not in self.served:
            raise UnlearnError(f"shard {shard} is not serving")
        return get_peft_model_state_dict(self.peft, adapter_name=f"shard{shard}", save_embedding_layers=False)

    def served_weights_sha256(self, shard: int) -> str:
        return weights_sha256(self.adapter_state(shard))

    # -- HF-like surface -------------------------------------------------------------------
    @property
    def model(self):
        return self.peft if self.peft is not None else self._base

    @property
    def config(self):
        return self._base.config

    @property
    def generation_config(self):
        return self._base.generation_config

    @property
    def device(self) -> torch.device:
        return next(self._base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._base.parameters()).dtype

    def _shard_logits(self, input_ids, attention_mask, position_ids, caches):
        """Per-shard log-probabilities [S, B, T, V] and updated caches."""
        outs, new_caches = [], []
        shards = sorted(self.served) or [None]
        cache_arg = cache_kwarg(self._base) or "past_key_values"
        for i, shard in enumerate(shards):
            cache = caches[i] if caches is not None else None
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=caches is not None, **{cache_arg: cache})
            if shard is None:
                if self.peft is not None:
                    with self.peft.disable_adapter():
                        out = self.peft(**kwargs)
                else:
                    out = self._base(**kwargs)
            else:
                self.peft.set_adapter(f"shard{shard}", inference_mode=True)
                out = self.peft(**kwargs)
            outs.append(torch.log_softmax(out.logits.float(), dim=-1))
            new_caches.append(output_cache(out))
        return torch.stack(outs), new_caches

    @staticmethod
    def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)

    def shard_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-shard next-token log-probabilities ``[S, B, T, V]`` (shards in `sorted(self.served)`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._shard_logits(input_ids, attention_mask, self._positions(attention_mask), None)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Combined log-probabilities (`aggregate`) as `logits`; `loss` = mean token cross-entropy on shifted `labels`."""
        self.check_serving()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        per_shard, _ = self._shard_logits(input_ids, attention_mask, self._positions(attention_mask), None)
        loglik = prefix_loglik(per_shard, input_ids, attention_mask) if self.aggregate in ("posterior", "route") else None
        logits = aggregate_logprobs(per_shard, self.aggregate, loglik)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = torch.nn.functional.nll_loss(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 generator: torch.Generator | None = None, **_ignored) -> torch.Tensor:
        """Prompt + new tokens, like `transformers` generate (prompts left-padded). Finished rows get pad."""
        self.check_serving()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if eos_token_id is None:
            eos_token_id = self.generation_config.eos_token_id or self.tokenizer.eos_token_id
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                           device=input_ids.device)
        pad = pad_token_id if pad_token_id is not None else self.tokenizer.pad_token_id
        ids, mask = input_ids, attention_mask
        caches = [None] * max(1, len(self.served))
        step_ids, step_pos = ids, self._positions(mask)
        done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
        needs_loglik = self.aggregate in ("posterior", "route")
        loglik = None  # [S, B]: log-likelihood each shard gives the prompt and the tokens generated so far
        for _ in range(max_new_tokens):
            per_shard, caches = self._shard_logits(step_ids, mask, step_pos, caches)
            if needs_loglik and loglik is None:
                loglik = prefix_loglik(per_shard, ids, mask)[:, :, -1]
            logp = aggregate_logprobs(per_shard[:, :, -1], self.aggregate, loglik)
            if do_sample:
                probs = torch.softmax(logp / max(temperature, 1e-6), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = logp.argmax(-1)
            if needs_loglik:
                picked = per_shard[:, :, -1].gather(-1, nxt[None, :, None].expand(per_shard.size(0), -1, 1)).squeeze(-1)
                loglik = loglik + torch.where(done, torch.zeros_like(picked), picked)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            done = done | torch.isin(nxt, eos)
            step_ids = nxt[:, None]
            step_pos = self._positions(mask)[:, -1:]
            if bool(done.all()):
                break
        return ids


def load_s3t_model(run_dir: str | Path, dtype: str = "float32", verify: bool = True, aggregate: str | None = None,
                   allow_base: bool = False, serve_like: str | Path | None = None) -> S3TEnsemble:
    """The served S3T model of a run directory (reads the ledger; checks checkpoint hashes).

    `aggregate` overrides the run's recorded serving mode; `allow_base` lets a run with no shard
    serving answer with the bare base model; `serve_like` serves this run's checkpoints at the
    shards, sequences and prefixes another run serves (an exact-retrain reference, compared with
    the run its samples were deleted from)."""
    return S3TEnsemble(run_dir, dtype=dtype, verify=verify, aggregate=aggregate, allow_base=allow_base,
                       serve_like=serve_like)
