"""Serving an S3T run (Chowdhury et al., 2024, Sec. 3): one base model and, per shard, the
checkpoint of its served adapter prefix (the ledger's ``serving`` table). Shards are combined
like SISA's ensemble, here by averaging next-token log-probabilities:

    log p(y | x) = log_softmax( (1/m') Σ_s log_softmax(z_s(x)) )

over the m' shards that are serving (a shard waiting for retraining is left out; with none
serving, the base model answers alone). This is the normalised geometric mean of the shard
distributions. `S3TEnsemble.forward` returns these normalised log-probabilities as ``logits`` (and
the usual shifted cross-entropy as ``loss``), and `generate` decodes greedily (or samples) with
left padding, so code written for a Hugging Face causal LM can evaluate it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers.modeling_outputs import CausalLMOutputWithPast

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.train import file_sha256, load_base, load_run, weights_sha256
from llm_unlearn.scoring import cache_kwarg, output_cache

IGNORE_INDEX = -100


class S3TEnsemble(torch.nn.Module):
    """Base model + one LoRA adapter (the served prefix) per serving shard; see module docstring."""

    def __init__(self, run_dir: str | Path, dtype: str = "float32", verify: bool = True):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ledger, self.plan, self.cfg, self.manifest = load_run(self.run_dir)
        base, self.tokenizer = load_base(self.run_dir, self.manifest, dtype)
        self.peft = None
        self._base = base
        self.verify = verify
        self.served: dict[int, dict] = {}
        self.reload()

    # -- loading ---------------------------------------------------------------------------
    def reload(self) -> dict[int, dict]:
        """Re-read the ledger's serving state and (re)load adapters whose served stage changed."""
        snapshot = {s: v for s, v in self.ledger.serving().items() if v["status"] == "serving"}
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
        return get_peft_model_state_dict(self.peft, adapter_name=f"shard{shard}")

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Ensemble log-probabilities as `logits`; `loss` = mean token cross-entropy on shifted `labels`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        per_shard, _ = self._shard_logits(input_ids, attention_mask, self._positions(attention_mask), None)
        logits = torch.log_softmax(per_shard.mean(0), dim=-1)
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
        for _ in range(max_new_tokens):
            per_shard, caches = self._shard_logits(step_ids, mask, step_pos, caches)
            logp = torch.log_softmax(per_shard[:, :, -1].mean(0), dim=-1)
            if do_sample:
                probs = torch.softmax(logp / max(temperature, 1e-6), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = logp.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            done = done | torch.isin(nxt, eos)
            step_ids = nxt[:, None]
            step_pos = self._positions(mask)[:, -1:]
            if bool(done.all()):
                break
        return ids


def load_s3t_model(run_dir: str | Path, dtype: str = "float32", verify: bool = True) -> S3TEnsemble:
    """The served S3T model of a run directory (reads the ledger; checks checkpoint hashes)."""
    return S3TEnsemble(run_dir, dtype=dtype, verify=verify)
