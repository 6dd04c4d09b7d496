"""The TOFU evaluator (Maini et al., 2024): the only part of `llm_unlearn.eval` that runs a model.

For every QA item of the forget, retain, real-authors and world-facts splits it computes the
answer-token NLL (mean and sum) and token count of the ground-truth, paraphrased and each
perturbed answer (all variants of a batch of items go through the model together, right
padded), a greedy generation (left padded, ``max_new_tokens``) and its ROUGE-L recall; on the
forget and holdout splits it adds the membership-inference scores (LOSS, zlib, Min-K%,
Min-K%++). Aggregates come from `llm_unlearn.eval.logs.compute_summary` (pure functions).

Items are tokenised with `llm_unlearn.data.qa.encode_qa`, exactly as in training. The model is
used only through ``model(input_ids=…, attention_mask=…).logits`` and ``model.generate(…)``, so
any Hugging Face causal LM, a PeftModel or an HF-compatible ensemble works.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llm_unlearn.console import stage_bar
from llm_unlearn.data.protocol import Protocol, get_protocol
from llm_unlearn.data.qa import (
    IGNORE_INDEX,
    GenerationCollator,
    check_tokenizer,
    encode_qa,
    pad_sequences,
    prompt_ids,
    template_settings,
)
from llm_unlearn.data.tofu import (
    available_splits,
    forget_percent,
    is_local_source,
    load_tofu,
    outside_authors_rows,
    qa_per_author,
    spread_over_authors,
)
from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval import metrics as M
from llm_unlearn.eval.logs import (
    ITEMS_FORMAT,
    SUMMARY_FORMAT,
    EvalLogs,
    check_retain_for,
    check_same_protocol,
    compute_summary,
    logs_from_items,
    read_logs,
    split_truth_ratios,
)
from llm_unlearn.scoring import (
    accepts_forward_arg,
    answer_logits,
    cache_kwarg,
    core_model,
    output_cache,
    token_logprobs,
)

# our split name -> TOFU split it is read from ({forget} is the forget split, e.g. forget10)
SOURCE_SPLITS = {
    "forget": "{forget}_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}


def _device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _records(logits: torch.Tensor, labels: torch.Tensor, token_stats: bool) -> list[dict[str, Any]]:
    """Per-row answer NLL (and Min-K%++ token stats) from logits aligned so that ``logits[:, t]``
    predicts ``labels[:, t + 1]``."""
    tok_lp, mask = token_logprobs(logits, labels)
    if token_stats:
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        var = (probs * logp.pow(2)).sum(-1) - mu.pow(2)
    nll_sum = -tok_lp.sum(-1)
    counts = mask.sum(-1)
    out = []
    for i in range(labels.shape[0]):
        n = int(counts[i])
        rec: dict[str, Any] = {"loss": float(nll_sum[i]) / n if n else float("nan"),
                               "loss_sum": float(nll_sum[i]), "num_tokens": n}
        if token_stats:
            sel = mask[i]
            rec["logprobs"] = tok_lp[i][sel].tolist()
            rec["mu"] = mu[i][sel].tolist()
            rec["var"] = var[i][sel].tolist()
        out.append(rec)
    return out


def _shared_prefix(encs: list[dict]) -> int:
    """Tokens every encoding shares before the position whose logits predict the first answer
    token (the prompt of one question, minus its last token); 0 when nothing can be shared."""
    first = min(next((t for t, y in enumerate(e["labels"]) if y != IGNORE_INDEX), len(e["labels"])) for e in encs)
    limit = first - 1
    ids0 = encs[0]["input_ids"]
    for e in encs[1:]:
        ids = e["input_ids"]
        k = 0
        while k < limit and ids[k] == ids0[k]:
            k += 1
        limit = k
    return max(limit, 0)


def supports_prefix_cache(model) -> bool:
    """Whether `model` is a Hugging Face causal LM (under PEFT / DDP wrappers) that takes a KV
    cache and ``logits_to_keep``: then answer variants of one question share one prompt pass."""
    core = core_model(model)
    return (isinstance(core, PreTrainedModel) and not core.config.is_encoder_decoder
            and accepts_forward_arg(model, "logits_to_keep") and cache_kwarg(model) is not None)


def _score_padded(model, encs: list[dict], device, token_stats: bool) -> list[dict[str, Any]]:
    """One right-padded forward over whole sequences (`answer_logits`: the lm-head from the
    first answer position on where the model allows it)."""
    batch = {
        "input_ids": pad_sequences([e["input_ids"] for e in encs], 0, "right").to(device),
        "attention_mask": pad_sequences([e["attention_mask"] for e in encs], 0, "right").to(device),
        "labels": pad_sequences([e["labels"] for e in encs], IGNORE_INDEX, "right").to(device),
    }
    return _records(*answer_logits(model, batch), token_stats)


def _score_shared(model, encs: list[dict], prefix: int, batch_size: int, device,
                  token_stats: bool) -> list[dict[str, Any]]:
    """Variants of one prompt: the first `prefix` tokens go through the model once (KV cache),
    then each chunk of `batch_size` continuations (right padded) attends to that cache."""
    head = torch.tensor([encs[0]["input_ids"][:prefix]], device=device)
    cache = output_cache(model(input_ids=head, attention_mask=torch.ones_like(head), use_cache=True, logits_to_keep=1))
    cache_arg = cache_kwarg(model)
    out: list[dict[str, Any]] = []
    chunks = [encs[i:i + batch_size] for i in range(0, len(encs), batch_size)]
    for k, chunk in enumerate(chunks):
        n = len(chunk)
        past = cache if k == len(chunks) - 1 else copy.deepcopy(cache)
        if n > 1:
            past.batch_repeat_interleave(n)
        ids = pad_sequences([e["input_ids"][prefix:] for e in chunk], 0, "right").to(device)
        tail_mask = pad_sequences([e["attention_mask"][prefix:] for e in chunk], 0, "right").to(device)
        labels = pad_sequences([e["labels"][prefix:] for e in chunk], IGNORE_INDEX, "right").to(device)
        attention = torch.cat([torch.ones(n, prefix, dtype=tail_mask.dtype, device=device), tail_mask], dim=1)
        positions = torch.arange(prefix, prefix + ids.shape[1], device=device).expand(n, -1)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                       **{cache_arg: past}).logits
        out.extend(_records(logits, labels, token_stats))
    return out


@torch.no_grad()
def score_answers(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8,
                  token_stats: bool = False, max_length: int | None = None,
                  progress: tqdm | None = None, share_prompt: bool | None = None,
                  protocol: Protocol | str | None = None) -> list[dict[str, Any]]:
    """Answer-token NLL of each (question, answer) pair: ``{"loss" (mean), "loss_sum",
    "num_tokens"}`` and, with `token_stats`, per-token ``logprobs``, ``mu`` and ``var`` (mean
    and variance of log p under the model's next-token distribution, for Min-K%++). Items
    are tokenised as `protocol` says (default native).

    Pairs that share a question (TOFU's ground-truth, paraphrased and perturbed answers) run
    the prompt once and the answers `batch_size` at a time against its KV cache
    (`share_prompt`, default: when `supports_prefix_cache`); the rest are right padded, sorted
    by length and scored `batch_size` at a time. Either way the vocabulary projection runs only
    from the first answer position on, and the values equal one full forward per sequence
    (tested to 1e-5)."""
    check_tokenizer(tokenizer)
    device = _device(model)
    if share_prompt is None:
        share_prompt = supports_prefix_cache(model)
    encs = [encode_qa(tokenizer, q, a, max_length, protocol) for q, a in pairs]
    out: list[dict[str, Any] | None] = [None] * len(pairs)
    alone: list[int] = []
    groups: dict[str, list[int]] = {}
    for i, (q, _a) in enumerate(pairs):
        groups.setdefault(q, []).append(i)
    for idx in groups.values():
        prefix = _shared_prefix([encs[i] for i in idx]) if share_prompt and len(idx) > 1 else 0
        if prefix < 1:
            alone.extend(idx)
            continue
        for i, rec in zip(idx, _score_shared(model, [encs[i] for i in idx], prefix, batch_size, device, token_stats)):
            out[i] = rec
        if progress is not None:
            progress.update(len(idx))
    alone.sort(key=lambda i: len(encs[i]["input_ids"]))
    for start in range(0, len(alone), batch_size):
        idx = alone[start:start + batch_size]
        for i, rec in zip(idx, _score_padded(model, [encs[i] for i in idx], device, token_stats)):
            out[i] = rec
        if progress is not None:
            progress.update(len(idx))
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], batch_size: int = 8, max_new_tokens: int = 200,
                     progress: tqdm | None = None, protocol: Protocol | str | None = None) -> list[str]:
    """Greedy generations for `questions` (prompts built as in training, left padded); the new
    tokens only, decoded without special tokens, cut at the EOS text and stripped. Questions
    are batched in order of prompt length (less padding); the result follows the input order.

    `protocol` sets the prompt, which EOS stops generation (native: the tokenizer's;
    open-unlearning / TOFU legacy: the model's ``generation_config`` list, as they pass none)
    and, for TOFU legacy, a total length (prompt + new tokens) instead of `max_new_tokens`."""
    protocol = get_protocol(protocol)
    collate = GenerationCollator(tokenizer, protocol)
    device = _device(model)
    length = ({"max_length": protocol.generation_max_length} if protocol.generation_max_length
              else {"max_new_tokens": max_new_tokens})
    eos = {"eos_token_id": tokenizer.eos_token_id} if protocol.generation_eos == "tokenizer" else {}
    eos_text = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""
    order = sorted(range(len(questions)), key=lambda i: len(prompt_ids(tokenizer, questions[i], protocol)))
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [{"question": questions[i], "answer": ""} for i in idx]
        batch = collate(rows)
        ids = batch["input_ids"].to(device)
        gen = model.generate(
            input_ids=ids, attention_mask=batch["attention_mask"].to(device), **length,
            do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id, **eos,
        )
        new = gen[:, ids.shape[1]:]
        for i, t in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            texts[i] = (t.split(eos_text)[0] if eos_text else t).strip()
        if progress is not None:
            progress.update(len(rows))
    return [texts[i] for i in range(len(questions))]


def _load_rows(source, split: str, max_items: int | None) -> list[dict]:
    return load_tofu(split, source, max_items=max_items).to_list()


# The holdout side of HFQ in an evaluation: at least this many items, or 3x the forget items (it is
# scored only, never generated). On the SmolLM2 TOFU frontier (18 runs, benchmarks/hfq_holdout_sets.py)
# 80 holdout items ranked the runs like true FQ (Spearman >= 0.8) in 76 % of random draws, 200 in 95 %,
# 240 in 99 %; all 400 read 0.91.
HOLDOUT_MIN_ITEMS = 200
HOLDOUT_FACTOR = 3


def holdout_size(n_forget: int) -> int:
    """How many holdout items an evaluation reads against `n_forget` forget items (all there are
    when fewer): ``max(HOLDOUT_FACTOR * n_forget, HOLDOUT_MIN_ITEMS)``."""
    return max(HOLDOUT_FACTOR * n_forget, HOLDOUT_MIN_ITEMS)


def _spread_cap(source, rows: list[dict], n: int | None) -> list[dict]:
    """At most `n` of `rows` (a split listed author by author, as TOFU and `data synth` write them),
    spread over its authors (`spread_over_authors`) rather than the first `n`."""
    if not n or len(rows) <= n:
        return rows
    per = qa_per_author(source)
    return spread_over_authors([rows[i:i + per] for i in range(0, len(rows), per)], n)


def holdout_rows(source, holdout_split: str, max_items: int | None, *, explicit: bool = False,
                  max_authors: int | None = None, forget_rows: list[dict] | None = None,
                  n_outside: int | None = None) -> tuple[list[dict] | None, str | None]:
    """Holdout items (about entities the model never trained on) and, when there are none, why.

    Sources, first match: the split `holdout_split` (given with `explicit`: it must exist);
    with `max_authors` (a model trained on the first N authors of ``full``), items about the
    authors outside them that have perturbed answers, as many as the forget items (`n_outside`:
    that many instead); the source's ``holdoutXX`` split. At most `max_items`, spread over the
    split's authors (`spread_over_authors`), not its first ones."""
    if explicit:
        return _spread_cap(source, _load_rows(source, holdout_split, None), max_items), None
    if max_authors is not None:
        forget_rows = forget_rows or []
        n = n_outside or len(forget_rows) or None
        n = min(n, max_items) if n and max_items else n or max_items
        return outside_authors_rows(source, max_authors, n_items=n,
                                    exclude_questions={r["question"] for r in forget_rows}), None
    if is_local_source(source) and holdout_split not in available_splits(source):
        return None, f"data source {source} has no {holdout_split} split (pass --holdout-split or --max-authors)"
    try:
        return _spread_cap(source, _load_rows(source, holdout_split, None), max_items), None
    except UnlearnError as exc:
        return None, f"cannot load {holdout_split}: {exc}"


def load_eval_rows(data_source, forget_split: str = "forget10", max_items: int | None = None,
                   holdout_split: str | None = None, max_authors: int | None = None
                   ) -> tuple[dict[str, list[dict]], dict[str, str], str | None]:
    """The rows `evaluate_model` scores: ``({split: rows}, {split: source split}, reason there is
    no holdout split or None)``; see `holdout_rows` for where the holdout items come from."""
    forget_percent(forget_split)  # validates the name
    source_splits = {name: tmpl.format(forget=forget_split) for name, tmpl in SOURCE_SPLITS.items()}
    rows = {name: _load_rows(data_source, split, max_items) for name, split in source_splits.items()}
    explicit = holdout_split is not None
    holdout_split = holdout_split or forget_split.replace("forget", "holdout", 1)
    n_hold = holdout_size(len(rows["forget"]))  # scored only: more items than the generated splits
    hold, reason = holdout_rows(data_source, holdout_split, n_hold, explicit=explicit, max_authors=max_authors,
                                 forget_rows=rows["forget"], n_outside=n_hold)
    if hold is not None:
        rows["holdout"] = hold
        source_splits["holdout"] = (f"full: authors after the first {max_authors}, with perturbed answers"
                                    if max_authors is not None and not explicit else holdout_split)
    return rows, source_splits, reason


def score_splits(model, tokenizer, rows_by_split: dict[str, list[dict]], batch_size: int = 8,
                 retain_logs: EvalLogs | None = None, protocol: Protocol | str | None = None) -> dict[str, Any]:
    """Scoring only (no generation): `compute_summary` of `rows_by_split` as `evaluate_items`
    scores them without generating, so ROUGE and model utility are n/a but the truth ratios,
    probabilities, holdout forget quality, utility proxy and membership AUCs are there. Cheap
    enough for every few training steps (`llm_unlearn.tune`) and before/after an unlearning run."""
    items = evaluate_items(model, tokenizer, rows_by_split, batch_size=batch_size, progress=False, generate=False,
                           protocol=protocol)
    per_item = {"format": ITEMS_FORMAT, "splits": {n: {"items": its} for n, its in items.items()}}
    logs = logs_from_items(per_item)
    summary = compute_summary(logs, retain_logs)
    summary["truth_ratios"] = {}  # per item, for scores computed later (e.g. against a retain model's)
    for name in ("forget", "holdout"):
        tr = split_truth_ratios(logs.splits[name]) if name in logs.splits else None
        if tr is not None:
            summary["truth_ratios"][name] = [float(v) for v in tr]
    return summary


def _mia_scores(answer: str, rec: dict[str, Any], min_k: float, protocol: Protocol) -> dict[str, float]:
    """LOSS and zlib on all answer tokens; Min-K% / Min-K%++ without the last token (EOS) when
    the protocol drops it, Min-K%++ with the protocol's floor on the variance."""
    cut = -1 if protocol.mia_drop_last_token else None
    lp, mu, var = rec["logprobs"][:cut], rec["mu"][:cut], rec["var"][:cut]
    sigma = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), protocol.mia_variance_floor))
    return {
        "loss": rec["loss"],
        "zlib": rec["loss"] / M.zlib_entropy(answer),
        "min_k": M.min_k_score(lp, min_k),
        "min_k_plus_plus": M.min_k_plus_plus_score(lp, mu, sigma, min_k),
    }


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def evaluate_items(model, tokenizer, rows_by_split: dict[str, list[dict]], batch_size: int = 8,
                   max_new_tokens: int = 200, min_k: float = M.MIN_K_DEFAULT,
                   progress: bool = True, generation_batch_size: int | None = None,
                   generate: bool = True, protocol: Protocol | str | None = None,
                   desc: str = "eval") -> dict[str, list[dict[str, Any]]]:
    """Per-item values for each split of `rows_by_split` (our split name -> TOFU rows). Splits
    named ``forget``/``holdout`` get membership scores; ``holdout`` gets no generation, and its
    paraphrased / perturbed answers are scored when its rows have them (for the holdout forget
    quality). `generate` False: scoring only (no generation, no ROUGE).
    `batch_size` sequences are scored per forward; `generation_batch_size` (default
    ``max(batch_size, 64)``) prompts are generated together (a decoding step costs little more
    for 40 rows than for 8 on a CPU: 2.4x faster on SmolLM2)."""
    gen_batch = generation_batch_size or max(batch_size, 64)
    protocol = get_protocol(protocol)
    was_training = model.training
    model.eval()
    try:
        plan = []  # (split, item index, kind, variant index, question, text)
        for split, rows in rows_by_split.items():
            for i, row in enumerate(rows):
                plan.append((split, i, "gt", 0, row["question"], row["answer"]))
                if split == "holdout" and not (row.get("paraphrased_answer") and row.get("perturbed_answer")):
                    continue
                if row.get("paraphrased_answer"):
                    plan.append((split, i, "paraphrased", 0, row["question"], row["paraphrased_answer"]))
                for j, p in enumerate(row.get("perturbed_answer") or []):
                    plan.append((split, i, "perturbed", j, row["question"], p))
        n_gen = sum(len(r) for s, r in rows_by_split.items() if s != "holdout") if generate else 0
        bar = stage_bar(desc, total=len(plan) + n_gen, unit="seq", disable=not progress)
        bar.set_postfix_str("scoring", refresh=False)
        items: dict[str, list[dict[str, Any]]] = {
            s: [{"index": i, "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)]
            for s, rows in rows_by_split.items()
        }
        # membership stats only where needed; separate passes keep the cheap path cheap
        needs_stats = [p for p in plan if p[0] in ("forget", "holdout") and p[2] == "gt"]
        rest = [p for p in plan if not (p[0] in ("forget", "holdout") and p[2] == "gt")]
        for group, stats in ((needs_stats, True), (rest, False)):
            recs = score_answers(model, tokenizer, [(p[4], p[5]) for p in group], batch_size,
                                 token_stats=stats, max_length=protocol.max_length, progress=bar,
                                 protocol=protocol)
            for (split, i, kind, _j, _q, text), rec in zip(group, recs):
                item = items[split][i]
                if kind == "perturbed":
                    for key, src in (("perturbed_loss", "loss"), ("perturbed_loss_sum", "loss_sum"),
                                     ("perturbed_num_tokens", "num_tokens")):
                        item.setdefault(key, []).append(rec[src])
                else:
                    item[f"{kind}_loss"] = rec["loss"]
                    item[f"{kind}_loss_sum"] = rec["loss_sum"]
                    item[f"{kind}_num_tokens"] = rec["num_tokens"]
                if stats:
                    item["mia"] = _mia_scores(text, rec, min_k, protocol)
        bar.set_postfix_str("generating", refresh=False)
        for split, rows in rows_by_split.items():
            if split == "holdout" or not generate:
                continue
            gens = generate_answers(model, tokenizer, [r["question"] for r in rows], gen_batch, max_new_tokens,
                                    progress=bar, protocol=protocol)
            rouge = M.rouge_l_recall(gens, [r["answer"] for r in rows])
            for item, g, r in zip(items[split], gens, rouge):
                item["generation"], item["rougeL_recall"] = g, float(r)
        bar.close()
    finally:
        model.train(was_training)
    return items


def evaluate_model(model, tokenizer, data_source, forget_split: str = "forget10",
                   retain_logs: str | Path | EvalLogs | None = None, max_items: int | None = None,
                   batch_size: int = 8, max_new_tokens: int | None = None, holdout_split: str | None = None,
                   min_k: float = M.MIN_K_DEFAULT, progress: bool = True,
                   model_name: str | None = None, generation_batch_size: int | None = None,
                   max_authors: int | None = None, protocol: Protocol | str | None = None,
                   allow_mixed_protocols: bool = False) -> dict[str, Any]:
    """Evaluate `model` on TOFU-style data. Returns ``{"summary": dict, "per_item": dict}``.

    Splits: ``{forget_split}_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``,
    ``world_facts_perturbed`` and, for the retain-free scores (holdout forget quality,
    membership AUCs), holdout items: `holdout_split` if given; with `max_authors` (a model
    trained on the first N authors of ``full``) the authors outside them; else the source's
    ``holdoutXX`` (when there is none these metrics are "n/a" with the reason). `retain_logs` (a path in any format `read_logs` accepts, or
    `EvalLogs`) is the retain model's evaluation, needed for forget quality and privleak.
    `max_items` caps every split (default: the protocol's cap, none natively, 300 for TOFU
    legacy) except the holdout, which is scored only and reads `holdout_size` items (at least
    200, spread over its authors); `max_new_tokens` defaults to the protocol's (200). `protocol` (default native)
    sets the prompt, tokenisation, lengths, generation and MIA details and is recorded in both
    outputs; retain logs of another protocol or evaluator are refused unless
    `allow_mixed_protocols`."""
    if batch_size < 1:
        raise UnlearnError(f"batch_size must be >= 1, got {batch_size}")
    if generation_batch_size is not None and generation_batch_size < 1:
        raise UnlearnError(f"generation_batch_size must be >= 1, got {generation_batch_size}")
    protocol = get_protocol(protocol)
    max_items = max_items if max_items is not None else protocol.max_items
    max_new_tokens = max_new_tokens if max_new_tokens is not None else protocol.max_new_tokens
    if max_new_tokens < 1:
        raise UnlearnError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    forget_percent(forget_split)  # validates the name
    retain = read_logs(retain_logs) if isinstance(retain_logs, (str, Path)) else retain_logs
    if retain is not None:
        check_same_protocol(protocol.name, retain, allow_mixed_protocols)
    t0 = time.time()
    rows, source_splits, mia_reason = load_eval_rows(data_source, forget_split, max_items, holdout_split, max_authors)
    if retain is not None:  # before the evaluation, not after it
        check_retain_for(retain, forget_split, len(rows["forget"]), [r["question"] for r in rows["forget"]])
    items = evaluate_items(model, tokenizer, rows, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           min_k=min_k, progress=progress, generation_batch_size=generation_batch_size,
                           protocol=protocol,
                           desc=f"eval {_short(model_name)}" if model_name else "eval")
    per_item = {
        "format": ITEMS_FORMAT,
        "data": str(data_source),
        "forget_split": forget_split,
        "mia_not_available": mia_reason,
        "protocol": protocol.to_dict(),
        "splits": {name: {"source_split": source_splits[name], "items": its} for name, its in items.items()},
    }
    logs = logs_from_items(per_item)
    summary = {
        "format": SUMMARY_FORMAT,
        "model": model_name or getattr(getattr(model, "config", None), "_name_or_path", None),
        "data": str(data_source),
        "forget_split": forget_split,
        "source_splits": source_splits,
        **compute_summary(logs, retain, allow_mixed_protocols=allow_mixed_protocols),
        "template": template_settings(tokenizer, protocol),
        "settings": {"protocol": protocol.name, "max_length": protocol.max_length,"batch_size": batch_size,
                     "generation_batch_size": generation_batch_size or max(batch_size, 64),
                     "max_new_tokens": max_new_tokens, "max_items": max_items,
                     "min_k": min_k, "generation": f"greedy, left padded, stops at the {protocol.generation_eos} EOS",
                     "scoring": f"right padded, {protocol.tokenisation} tokenisation (encode_qa), as in training"},
        "eval_time_s": round(time.time() - t0, 3),
    }
    summary.pop("logs", None)
    return {"summary": summary, "per_item": per_item}


def write_eval(out_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``summary.json`` and ``per_item.json`` of an `evaluate_model` result into
    `out_dir` (created); returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def clean(obj):
        if isinstance(obj, float) and not np.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, np.generic):
            return clean(obj.item())
        return obj

    (out / "summary.json").write_text(json.dumps(clean(result["summary"]), indent=2) + "\n")
    if result.get("per_item") is not None:  # None: only lm-eval / memorisation were scored
        (out / "per_item.json").write_text(json.dumps(clean(result["per_item"]), ensure_ascii=False) + "\n")
    return out
