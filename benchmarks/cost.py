"""Cost of unlearning on SmolLM2-135M-Instruct (fp32, CPU) over real TOFU: not a test; prints a
table and writes ``benchmarks/results/cost.json``.

Every configuration runs in a fresh Python process (`common.run_phase`) and reports its own peak
RSS (``ru_maxrss``), so peaks never mix:

- one unlearning epoch per method (`llm_unlearn.trainers.METHODS`: the UnlearnTrainer with AdamW,
  batch 4 forget + 4 retain items, 40 forget items = 10 optimizer steps), full weights and LoRA:
  training seconds (``trainer.train()``), reference set-up seconds (trainer construction: for
  full-weight NPO / IdkDPO the cached reference log-likelihoods), tokens/s (non-pad forget +
  retain tokens of the epoch / training seconds) and peak RSS;
- the reference model three ways (NPO+RT): full weights with the cached reference, full weights
  with a KL retain term (a frozen copy of the model), LoRA with the adapter-disabled reference;
- full-weight NPO with another optimizer (``--optims``, default Adafactor: factored second
  moments, no first moment), the memory AdamW's two fp32 moments cost;
- full-weight NPO with the optimizer step inside backward (``--in-backward``, default
  ``adamw_torch,adamw_torch+ckpt,adafactor+ckpt``: `optim_in_backward`, no full gradient buffer);
- for every full-weight row: peak memory as a multiple of the fp32 weights (peak RSS minus the
  RSS after imports, over the weights' bytes), time as a multiple of the compute floor, and time
  and memory as ratios to the AdamW row of the same method in the same run (issue #20);
- the compute floor of every full-weight row: matmul FLOPs of the epoch (6 × parameters × tokens
  for forward + backward; decoder on the non-pad tokens, vocabulary head on the answer tokens,
  i.e. perfect packing) divided by the best matmul speed probed before and after training in that
  process. No fp32 implementation of the method on that machine trains faster than that;
- the WAGLE mask (`llm_unlearn.masks.compute_mask`) on the same forget / retain items;
- the whole TOFU evaluation (`evaluate_model`: forget, retain, real authors, world facts, 40 items
  each: probability, truth ratio, greedy generation + ROUGE-L);
- S3T deletion latency vs retraining the affected shard, read from ``results/s3t_deletion.json``
  (``benchmarks/s3t_deletion.py``, tiny model) — it is not re-measured here.

    python benchmarks/cost.py                                   # everything (~15 min on 2 cores)
    python benchmarks/cost.py --data DIR --model smollm2 --methods npo,grad_diff --modes full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    default_data,
    fmt_table,
    machine_info,
    peak_rss_bytes,
    run_phase,
    write_tofu_subset,
)

FORGET_SPLIT = "forget10"
GB = 1e9

# target name -> (row key, field, limit, description)
TARGETS = [
    ("npo_time", "npo/full/cached", "train_s", 29.0, "NPO, 10 steps of 4+4 items, full weights, cached ref: training s"),
    ("npo_memory", "npo/full/cached", "peak_rss_gb", 2.4, "NPO, full weights, cached ref: peak RSS GB"),
    ("graddiff_time", "grad_diff/full/-", "train_s", 25.0, "GradDiff, 10 steps of 4+4 items, full weights: training s"),
    ("eval_time", "eval", "eval_s", 110.0, "TOFU evaluation (4 splits x 40 items, with generation): wall s"),
    ("eval_memory", "eval", "peak_rss_gb", 2.2, "TOFU evaluation: peak RSS GB"),
]
LORA_RATIO_LIMIT = 0.6
# issue #20: targets on the design, not the host (the time / GB limits above are host-bound)
INBWD_ROW = "npo/full/cached+inbwd+adafactor+ckpt"
DESIGN_TARGETS = [
    ("npo_inbwd_memory", INBWD_ROW, "peak_over_weights", 2.5,
     "NPO+RT full weights, optimizer step in backward (Adafactor) + checkpointing: (peak RSS − RSS after imports) / "
     "fp32 weights"),
    ("npo_inbwd_time", INBWD_ROW, "time_vs_adamw", 1.3,
     "the same row's training time / the AdamW row's (npo/full/cached), same run"),
]


def _design_ratios(rows: dict) -> None:
    """Add to every full-weight training row: peak above the runtime over the fp32 weights, time
    over the compute floor, and time / memory over the method's AdamW row (same run)."""
    for key, r in rows.items():
        if "compute_floor_s" not in r or "train_s" not in r:
            continue
        weights_gb = r.get("weights_fp32_gb")  # rows measured before issue #20 (other runs, hosts) get none
        if not weights_gb:
            continue
        above = r["peak_rss_gb"] - r["rss_after_imports_gb"]
        r["peak_over_weights"] = above / weights_gb
        r["time_over_floor"] = r["train_s"] / r["compute_floor_s"]
        base = rows.get("/".join(key.split("+")[0].split("/")[:2]) + ("/cached" if key.startswith("npo/") else "/-"))
        if base and "train_s" in base and base.get("weights_fp32_gb") and base is not r:
            r["time_vs_adamw"] = r["train_s"] / base["train_s"]
            r["memory_vs_adamw"] = above / (base["peak_rss_gb"] - base["rss_after_imports_gb"])


# ---------------------------------------------------------------------------------------- phases


def _current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of this process now, in bytes (Linux; empty elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


class _MemTrace:
    """Where the peak RSS is: a thread samples RSS split into anonymous memory (heap, tensors) and
    file-backed pages (mapped libraries, a safetensors mapping) and glibc's live allocations
    (`llm_unlearn.perf.MallocPeak`: what is allocated and not freed, without the free memory the
    heap keeps) every `interval` s; `snapshot(name)` records all three at a point of the run."""

    def __init__(self, interval: float = 0.005):
        import threading

        from llm_unlearn.perf import MallocPeak

        self._malloc = MallocPeak(interval=3600)  # only its reader; sampled here with the status
        self.points: dict[str, dict[str, float]] = {}
        self.at_peak: dict[str, float] = {}
        self.max_anon = self.max_file = self.max_live = 0
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, int]:
        st = _proc_status()
        live = self._malloc.live()
        self.max_anon = max(self.max_anon, st.get("RssAnon", 0))
        self.max_file = max(self.max_file, st.get("RssFile", 0))
        self.max_live = max(self.max_live, live)
        if st.get("VmRSS", 0) >= self.at_peak.get("rss", 0) * GB:
            self.at_peak = {"rss": st.get("VmRSS", 0) / GB, "anon": st.get("RssAnon", 0) / GB,
                            "file": st.get("RssFile", 0) / GB, "malloc_live": live / GB}
        return {**st, "live": live}

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def snapshot(self, name: str) -> None:
        s = self._sample()
        self.points[name] = {"rss": s.get("VmRSS", 0) / GB, "anon": s.get("RssAnon", 0) / GB,
                             "file": s.get("RssFile", 0) / GB, "malloc_live": s["live"] / GB}

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._malloc.stop()
        self._sample()
        return {"points_gb": {k: {f: round(v, 3) for f, v in p.items()} for k, p in self.points.items()},
                "at_sampled_rss_peak_gb": {k: round(v, 3) for k, v in self.at_peak.items()},
                "max_anon_gb": round(self.max_anon / GB, 3), "max_file_gb": round(self.max_file / GB, 3),
                "max_malloc_live_gb": round(self.max_live / GB, 3)}


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _gflops_probe(n: int = 50) -> float:
    """fp32 matmul speed right now, over `n` products (the machine may be shared: this says how
    fast it was)."""
    import torch

    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 512 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9


def _peak_gflops(repeats: int = 7) -> float:
    """The best of `repeats` short probes: what the cores can do when nothing else holds them."""
    return max(_gflops_probe(10) for _ in range(repeats))


def _start(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    return {"threads": args.threads, "gflops_probe": round(_gflops_probe(), 1), "rss_after_imports_gb": _current_rss() / GB}


def _load(args):
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu, matching_retain_split
    from llm_unlearn.unlearn import load_target

    model, tok = load_target(args.model, dtype="float32")
    forget, _ = tokenize_qa_dataset(load_tofu(FORGET_SPLIT, args.data), tok, max_length=args.max_length)
    retain, _ = tokenize_qa_dataset(load_tofu(matching_retain_split(FORGET_SPLIT), args.data), tok,
                                    max_length=args.max_length)
    forget = forget.select(range(min(len(forget), args.items)))
    retain = retain.select(range(min(len(retain), args.items)))
    return model, tok, forget, retain


def phase_train(args) -> dict:
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.models import attach_lora
    from llm_unlearn.perf import allocator_policy, huge_pages_enabled
    from llm_unlearn.scoring import IGNORE_INDEX
    from llm_unlearn.trainers import get_method
    from llm_unlearn.unlearn import build_config

    info = _start(args)
    trace = _MemTrace()
    trace.snapshot("imports")
    peak_before = _peak_gflops() if args.mode == "full" else None
    model, tok, forget, retain = _load(args)
    info["rss_after_load_gb"] = _current_rss() / GB
    trace.snapshot("load")
    trainer_cls, _ = get_method(args.method)
    with tempfile.TemporaryDirectory() as out:
        overrides = {"num_train_epochs": 1.0, "learning_rate": args.lr, "per_device_train_batch_size": args.batch_size,
                     "warmup_steps": 0.0, "logging_steps": 1000, "disable_tqdm": True, "seed": 0,
                     "max_length": args.max_length}
        if args.ref == "frozen":
            overrides["retain_loss_type"] = "kl"
        if args.ckpt:
            overrides["activation_checkpointing"] = True
        if args.optim:
            overrides["optim"] = args.optim
        if args.in_backward_phase:
            overrides["optim_in_backward"] = True
        cfg = build_config(args.method, overrides=overrides, output_dir=out)
        if args.mode == "lora":
            model = attach_lora(model, r=args.lora_r, alpha=2 * args.lora_r, seed=0)
        pairs = ForgetRetainDataset(forget, retain if trainer_cls.needs_retain(cfg) else None, seed=0)
        used = [pairs.forget[i] for i in range(len(pairs))]
        if pairs.retain is not None:
            used += [pairs.retain[j] for j in pairs.retain_index]
        tokens = sum(len(it["input_ids"]) for it in used)
        answer_tokens = sum(sum(1 for t in it["labels"] if t != IGNORE_INDEX) for it in used)
        kwargs = {"refusals": None} if args.method == "idk_dpo" else {}
        t0 = time.perf_counter()
        trainer = trainer_cls(model=model, args=cfg, train_dataset=pairs, processing_class=tok, **kwargs)
        setup_s = time.perf_counter() - t0
        info["rss_after_setup_gb"] = _current_rss() / GB
        trace.snapshot("setup")
        step_rss = _step_rss_callback()
        trainer.add_callback(step_rss)
        rows, remove = _count_rows(model)
        t0, cpu0 = time.perf_counter(), _cpu_s()
        result = trainer.train()
        train_s, train_cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
        trace.snapshot("trained")
        remove()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["weights_fp32_gb"] = 4 * sum(p.numel() for p in model.parameters()) / GB
    if args.mode == "full":  # the peak speed seen before or after training: a slow moment must not raise the floor
        info["gflops_peak"] = max(peak_before, _peak_gflops())
        info.update(_flop_floor(model, rows, tokens, answer_tokens, info["gflops_peak"]))
    return {**info, "optimizer": cfg.optim, "train_s": train_s, "train_cpu_s": train_cpu_s, "setup_s": setup_s,
            "steps": result.global_step,
            "step_s": step_rss.seconds, "rss_after_step_gb": step_rss.rss, "tokens": tokens,
            "tokens_per_s": tokens / train_s, "trainable_params": trainable,
            "frozen_copy": trainer.ref_model is not None, "memory_trace": trace.stop(),
            "allocator": allocator_policy(),
            "huge_pages": huge_pages_enabled(),
            "peak_rss_bytes": peak_rss_bytes()}


def _count_rows(model):
    """Count the positions the decoder runs (padded) and the rows the vocabulary head runs over
    the forward passes that build a graph (training; not the no-grad reference passes).
    Returns (counts, remove_hooks)."""
    import torch

    from llm_unlearn.scoring import core_model

    core = core_model(model)
    counts = {"decoder_positions": 0, "head_rows": 0}

    def on_embed(_module, inputs):
        if torch.is_grad_enabled():
            counts["decoder_positions"] += inputs[0].numel()

    def on_head(_module, inputs):
        if torch.is_grad_enabled():
            counts["head_rows"] += inputs[0].shape[:-1].numel()

    handles = [core.get_input_embeddings().register_forward_pre_hook(on_embed),
               core.get_output_embeddings().register_forward_pre_hook(on_head)]
    return counts, lambda: [h.remove() for h in handles]


def _flop_floor(model, rows: dict, tokens: int, answer_tokens: int, gflops: float) -> dict:
    """Matmul FLOPs of the epoch as run (padded positions; the head on the rows `logits_to_keep`
    kept) and at perfect packing (decoder on the non-pad `tokens`, head on the `answer_tokens`
    only), and the seconds the latter takes at `gflops` (the peak probe): the floor. Training a
    weight matrix costs 6 FLOPs per parameter and row (forward 2, backward 4); attention scores
    and element-wise ops are left out, so the floor is an underestimate."""
    from llm_unlearn.scoring import core_model

    core = core_model(model)
    embed, head = core.get_input_embeddings().weight, core.get_output_embeddings().weight
    decoder = sum(p.numel() for p in core.parameters() if p.dim() == 2 and p is not embed and p is not head)
    as_run = 6 * (decoder * rows["decoder_positions"] + head.numel() * rows["head_rows"])
    floor = 6 * (decoder * tokens + head.numel() * answer_tokens)
    return {"decoder_params": decoder, "head_params": head.numel(), **rows, "answer_tokens": answer_tokens,
            "matmul_tflop_as_run": as_run / 1e12, "matmul_tflop_packed": floor / 1e12,
            "compute_floor_s": floor / (gflops * 1e9)}


def _step_rss_callback():
    """A Trainer callback recording wall seconds and current RSS (GB) after every optimizer step."""
    from transformers import TrainerCallback

    class StepRSS(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.rss: list[float] = []
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(round(now - self._t, 2))
            self._t = now
            self.rss.append(round(_current_rss() / GB, 3))

    return StepRSS()


def phase_mask(args) -> dict:
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator
    from llm_unlearn.masks import compute_mask

    info = _start(args)
    model, tok, forget, retain = _load(args)
    cols = ["input_ids", "attention_mask", "labels"]

    def loader(ds):
        return DataLoader(ds.select_columns(cols), batch_size=args.batch_size, collate_fn=QACollator(tok))

    t0 = time.perf_counter()
    mask = compute_mask(model, loader(forget), loader(retain), method=args.mask_method, ratio=0.5, progress=False)
    return {**info, "mask_s": time.perf_counter() - t0, "density": mask.density(), "peak_rss_bytes": peak_rss_bytes()}


def phase_eval(args) -> dict:
    from llm_unlearn.eval.evaluator import evaluate_model

    info = _start(args)
    model, tok, _, _ = _load(args)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    result = evaluate_model(model, tok, args.data, forget_split=FORGET_SPLIT, max_items=args.items,
                            batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, progress=False)
    eval_s, eval_cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    splits = result["per_item"]["splits"]
    gen_tokens = [len(tok(it["generation"], add_special_tokens=False)["input_ids"])
                  for s in splits.values() for it in s["items"] if "generation" in it]
    return {**info, "eval_s": eval_s, "eval_cpu_s": eval_cpu_s, "items": {k: len(v["items"]) for k, v in splits.items()},
            "mean_generated_tokens": sum(gen_tokens) / max(len(gen_tokens), 1),
            "metrics": {k: result["summary"]["metrics"].get(k) for k in ("model_utility", "forget_truth_ratio")},
            "peak_rss_bytes": peak_rss_bytes()}


def phase_profile(args) -> dict:
    """Where memory and evaluation time go: runtime, weights, AdamW state, the activations one
    forward pass of a training batch keeps for backward, and the evaluation's scoring vs
    generation time per sequence (measured on a sample, scaled to the full evaluation)."""
    import torch
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator, prompt_ids
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval.evaluator import SOURCE_SPLITS, generate_answers, score_answers
    from llm_unlearn.scoring import model_logits, sequence_logprobs_from_logits

    info = _start(args)
    model, tok, forget, _ = _load(args)
    n_params = sum(p.numel() for p in model.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    batch = next(iter(DataLoader(forget.select_columns(["input_ids", "attention_mask", "labels"]),
                                 batch_size=args.batch_size, collate_fn=QACollator(tok))))
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model_logits(model, batch)
        sequence_logprobs_from_logits(logits, batch["labels"])
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    out = {**info, "params": n_params, "weights_gb": n_params * 4 / GB, "grads_gb": n_params * 4 / GB,
           "adamw_state_gb": 2 * n_params * 4 / GB, "batch_shape": list(batch["input_ids"].shape),
           "answer_tokens_in_batch": answer_tokens, "logits_gb": logits.numel() * 4 / GB,
           "activations_saved_per_forward_gb": sum(saved.values()) / GB}
    # what full-weight NPO / GradDiff cannot go below with fp32 AdamW, whatever the allocator: the
    # runtime, weights, gradients and both moments, plus one forward's activations (split_backward
    # keeps one of the forget / retain graphs alive at a time, next to the gradients)
    out["full_weight_adamw_floor_gb"] = (out["rss_after_imports_gb"] + out["weights_gb"] + out["grads_gb"]
                                         + out["adamw_state_gb"] + out["activations_saved_per_forward_gb"])
    del logits
    model.eval()
    # evaluation: time per scored sequence and per generated answer, on a sample
    rows = {name: load_tofu(tmpl.format(forget=FORGET_SPLIT), args.data).to_list()[:args.items]
            for name, tmpl in SOURCE_SPLITS.items()}
    n_scored = sum(len(r) * (1 + (1 if r[0].get("paraphrased_answer") else 0) + len(r[0].get("perturbed_answer") or []))
                   for r in rows.values())
    n_gen = sum(len(r) for r in rows.values())
    sample = rows["forget"][:8]
    pairs = [(r["question"], a) for r in sample for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]]
    t0 = time.perf_counter()
    score_answers(model, tok, pairs, batch_size=args.eval_batch_size)
    score_per_seq = (time.perf_counter() - t0) / len(pairs)
    t0 = time.perf_counter()
    generate_answers(model, tok, [r["question"] for r in sample], batch_size=args.eval_batch_size,
                     max_new_tokens=args.max_new_tokens)
    gen_per_item = (time.perf_counter() - t0) / len(sample)
    prompt_len = len(prompt_ids(tok, sample[0]["question"]))
    out.update({"eval_sequences_scored": n_scored, "eval_generations": n_gen,
                "eval_score_s_per_sequence": score_per_seq, "eval_generate_s_per_item": gen_per_item,
                "eval_scoring_s_estimate": score_per_seq * n_scored, "eval_generation_s_estimate": gen_per_item * n_gen,
                "prompt_tokens_example": prompt_len, "peak_rss_bytes": peak_rss_bytes()})
    return out


def phase_load(args) -> dict:
    info = _start(args)
    _load(args)
    return {**info, "peak_rss_bytes": peak_rss_bytes()}


PHASES = {"train": phase_train, "mask": phase_mask, "eval": phase_eval, "load": phase_load, "profile": phase_profile}


# ---------------------------------------------------------------------------------------- driver


def _median_run(runs: list[dict]) -> dict:
    """One row from repeated runs of a configuration: the run with the median peak RSS, plus every
    run's peak RSS and training seconds (peak RSS of the same configuration varies by up to 0.4 GB
    between runs, with the allocator's heap layout)."""
    if len(runs) == 1 or "error" in runs[0]:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["peak_rss_gb"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["peak_rss_gb_runs"] = [round(r["peak_rss_gb"], 3) for r in runs]
    row["train_s_runs"] = [round(r["train_s"], 2) for r in runs]
    return row


def _configs(args) -> list[tuple[str, list[str]]]:
    """(row key, phase args) of every measured configuration."""
    rows = [("load", ["--phase", "load"])]
    for method in args.methods:
        for mode in args.modes:
            refs = ["-"]
            if method in ("npo", "idk_dpo"):
                refs = ["cached"] if mode == "full" else ["adapter-disabled"]
                if method == "npo" and mode == "full":
                    refs.append("frozen")
            for ref in refs:
                phase = ["--phase", "train", "--method", method, "--mode", mode,
                         "--ref", "frozen" if ref == "frozen" else "default"]
                rows.append((f"{method}/{mode}/{ref}", phase))
                if args.checkpointing and method == "npo" and ref != "frozen":
                    rows.append((f"{method}/{mode}/{ref}+ckpt", [*phase, "--ckpt"]))
                if method == "npo" and ref == "cached":
                    rows += [(f"{method}/{mode}/{ref}+{optim}", [*phase, "--optim", optim]) for optim in args.optims]
                if method == "npo" and ref == "cached" and mode == "full":
                    for spec in args.in_backward:  # "optim" or "optim+ckpt"
                        optim, _, ckpt = spec.partition("+")
                        key = f"{method}/{mode}/{ref}+inbwd" + ("" if optim == "adamw_torch" else f"+{optim}")
                        extra = ["--optim", optim, "--phase-in-backward"] + (["--ckpt"] if ckpt else [])
                        rows.append((key + ("+ckpt" if ckpt else ""), [*phase, *extra]))
                        for alloc in args.allocators:  # the same row under another LLM_UNLEARN_MALLOC policy
                            rows.append((key + ("+ckpt" if ckpt else "") + f"@{alloc}",
                                         [*phase, *extra, "--malloc", alloc]))
    if "wagle" in args.masks:
        rows.append(("mask/wagle", ["--phase", "mask", "--mask-method", "wagle"]))
    if "random" in args.masks:
        rows.append(("mask/random", ["--phase", "mask", "--mask-method", "random"]))
    if args.eval:
        rows.append(("eval", ["--phase", "eval"]))
    if args.profile:
        rows.append(("profile", ["--phase", "profile"]))
    return rows


def _s3t_numbers() -> dict | None:
    path = RESULTS / "s3t_deletion.json"
    if not path.is_file():
        return None
    lat = json.loads(path.read_text()).get("latency", {})
    return {"source": "benchmarks/results/s3t_deletion.json (python benchmarks/s3t_deletion.py; tiny model, synthetic data)",
            **{k: lat.get(k) for k in ("deletion_median_s", "deletion_p95_s", "deletion_cold_median_s",
                                       "retrain_shard_s", "speedup", "speedup_cold")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model spec (default smollm2: SmolLM2-135M-Instruct from the cache)")
    p.add_argument("--data", default=default_data(), help="TOFU-layout directory (default ../shared/data/tofu)")
    p.add_argument("--authors", type=int, default=20, help="first N authors as the subset (forget10 = last 10%%)")
    p.add_argument("--items", type=int, default=40, help="forget / retain items trained on; eval items per split")
    p.add_argument("--methods", default="grad_ascent,grad_diff,npo,simnpo,idk_dpo,rmu")
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--masks", default="wagle,random", help="mask methods to time ('' for none)")
    p.add_argument("--no-eval", dest="eval", action="store_false")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="skip the NPO rows with activation checkpointing (the memory fix being measured)")
    p.add_argument("--optims", default="adafactor",
                   help="optimizers (TrainingArguments.optim) besides AdamW for full-weight NPO rows ('' for none)")
    p.add_argument("--in-backward", default="adamw_torch,adamw_torch+ckpt,adafactor+ckpt",
                   help="full-weight NPO rows with optim_in_backward: comma list of OPTIM or OPTIM+ckpt ('' for none)")
    p.add_argument("--allocators", default="",
                   help="in-backward rows again under these LLM_UNLEARN_MALLOC policies (comma list: reuse, lean:8M, "
                        "...), keyed ROW@POLICY")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every training configuration; the row is the run with the median peak RSS")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the memory / eval-time breakdown")
    p.add_argument("--only", default=None, help="comma list of row keys to (re)measure, merged into an existing --out")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=64, help="greedy generation length in the evaluation")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--threads", type=int, default=__import__("os").cpu_count(),
                   help="torch threads per process (default: all cores; on a shared, oversubscribed machine 1 is faster)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "llm_unlearn_cost"),
                   help="where the TOFU subset is written")
    p.add_argument("--out", default=str(RESULTS / "cost.json"))
    # one phase in this (fresh) process; used by the driver
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    p.add_argument("--ref", default="default", help=argparse.SUPPRESS)
    p.add_argument("--mask-method", default="wagle", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--optim", default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase-in-backward", dest="in_backward_phase", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--malloc", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:
        if args.malloc:  # read when training picks its allocator (llm_unlearn.perf), after this
            os.environ["LLM_UNLEARN_MALLOC"] = args.malloc
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.data is None:
        p.error("--data DIR is required (no ../shared/data/tofu beside the repository)")
    args.methods = [m for m in args.methods.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    args.masks = [m for m in args.masks.split(",") if m]
    args.optims = [m for m in args.optims.split(",") if m]
    args.in_backward = [m for m in args.in_backward.split(",") if m]
    args.allocators = [m for m in args.allocators.split(",") if m]
    source = args.data
    data = write_tofu_subset(source, Path(args.work) / f"tofu_{args.authors}authors", args.authors, FORGET_SPLIT)
    info = machine_info()
    common_args = ["--model", args.model, "--data", str(data), "--items", str(args.items),
                   "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
                   "--max-length", str(args.max_length), "--max-new-tokens", str(args.max_new_tokens),
                   "--lr", str(args.lr), "--lora-r", str(args.lora_r), "--threads", str(args.threads)]
    rows: dict[str, dict] = {}
    configs = _configs(args)
    previous: dict = {}
    if args.only:
        wanted = set(args.only.split(","))
        configs = [c for c in configs if c[0] in wanted]
        if Path(args.out).is_file():
            previous = json.loads(Path(args.out).read_text())
            rows.update(previous.get("rows", {}))
    t_start = time.time()
    for key, phase_args in configs:
        runs = []
        for rep in range(args.repeats if phase_args[1] == "train" else 1):
            print(f"[{time.strftime('%H:%M:%S')}] {key} ..." + (f" (run {rep + 1}/{args.repeats})" if rep else ""),
                  flush=True)
            try:
                r = run_phase(__file__, [*phase_args, *common_args])
            except RuntimeError as exc:
                print(f"  failed: {exc}", flush=True)
                runs = [{"error": str(exc).splitlines()[-1]}]
                break
            r["peak_rss_gb"] = r.pop("peak_rss_bytes") / GB
            runs.append(r)
        rows[key] = r = _median_run(runs)
        if "error" in r:
            continue
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in ("command", "metrics", "step_s", "rss_after_step_gb")}
        print(f"  {shown}", flush=True)

    _design_ratios(rows)
    # tables
    train_rows = [[k, r.get("train_s"), r.get("compute_floor_s"), r.get("setup_s"), r.get("steps"), r.get("tokens_per_s"),
                   r.get("peak_rss_gb"), r.get("trainable_params")] for k, r in rows.items() if "train_s" in r]
    print("\nOne unlearning epoch (40 forget items, batch 4 forget + 4 retain):")
    print(fmt_table(["method/mode/reference", "train s", "floor s", "setup s", "steps", "tokens/s", "peak RSS GB",
                     "trainable"], train_rows))
    full_rows = [[k, r.get("peak_over_weights"), r.get("time_over_floor"), r.get("time_vs_adamw"),
                  r.get("memory_vs_adamw")] for k, r in rows.items() if "peak_over_weights" in r]
    print("\nFull-weight rows (issue #20): peak RSS − runtime as a multiple of the fp32 weights, time as a multiple of "
          "the compute floor, time and memory (above runtime) as ratios to the AdamW row of the method:")
    print(fmt_table(["row", "peak / weights", "time / floor", "time / AdamW", "memory / AdamW"], full_rows))
    other = [[k, r.get("mask_s", r.get("eval_s")), r.get("wall_s"), r.get("peak_rss_gb")]
             for k, r in rows.items() if "mask_s" in r or "eval_s" in r or k == "load"]
    print("\nMask computation, evaluation, load-only baseline:")
    print(fmt_table(["phase", "seconds", "process wall s", "peak RSS GB"], other))

    prof = rows.get("profile")
    if prof and "params" in prof:
        print("\nWhere memory and evaluation time go (profile):")
        print(fmt_table(["item", "value"], [
            ["python + torch + libraries (RSS after imports, GB)", prof["rss_after_imports_gb"]],
            ["weights fp32 (GB)", prof["weights_gb"]], ["gradients (GB)", prof["grads_gb"]],
            ["AdamW state (GB)", prof["adamw_state_gb"]],
            ["full-weight floor: runtime + weights + grads + AdamW + one forward (GB)",
             prof.get("full_weight_adamw_floor_gb")],
            [f"activations kept by one forward of {prof['batch_shape']} (GB)", prof["activations_saved_per_forward_gb"]],
            ["  of which logits (GB)", prof["logits_gb"]],
            ["answer tokens / all positions in that batch",
             f"{prof['answer_tokens_in_batch']}/{prof['batch_shape'][0] * prof['batch_shape'][1]}"],
            [f"eval: {prof['eval_sequences_scored']} sequences scored, est. s", prof["eval_scoring_s_estimate"]],
            [f"eval: {prof['eval_generations']} generations, est. s", prof["eval_generation_s_estimate"]],
            ["prompt tokens (chat template + question), example", prof["prompt_tokens_example"]]]))

    targets = []
    for name, key, fld, limit, desc in TARGETS:
        value = rows.get(key, {}).get(fld)
        entry = {"target": name, "description": desc, "limit": limit, "measured": value,
                 "pass": None if value is None else bool(value <= limit)}
        if name in ("npo_time", "npo_memory", "graddiff_time"):
            entry["note"] = "host-bound (issue #8); issue #20 replaces it with npo_inbwd_memory / npo_inbwd_time"
        if fld == "train_s" and "compute_floor_s" in rows.get(key, {}):
            entry["compute_floor_s"] = rows[key]["compute_floor_s"]  # the least time at that process's matmul speed
        targets.append(entry)
    for name, key, fld, limit, desc in DESIGN_TARGETS:
        value = rows.get(key, {}).get(fld)
        targets.append({"target": name, "description": desc, "limit": limit, "measured": value,
                        "pass": None if value is None else bool(value <= limit)})
    for key, r in rows.items():  # the in-backward row under other allocator policies: both limits at once
        if key.startswith(INBWD_ROW + "@") and "peak_over_weights" in r and "time_vs_adamw" in r:
            both = r["peak_over_weights"] <= DESIGN_TARGETS[0][3] and r["time_vs_adamw"] <= DESIGN_TARGETS[1][3]
            targets.append({"target": f"npo_inbwd memory and time with LLM_UNLEARN_MALLOC={key.split('@', 1)[1]} "
                                      "(informational)", "limit": f"<= {DESIGN_TARGETS[0][3]} x weights and <= "
                                                                  f"{DESIGN_TARGETS[1][3]} x AdamW time",
                            "measured": {"peak_over_weights": r["peak_over_weights"],
                                         "time_vs_adamw": r["time_vs_adamw"]}, "pass": None, "both_within": both})
    lora, frozen = rows.get("npo/lora/adapter-disabled", {}), rows.get("npo/full/frozen", {})
    if "peak_rss_gb" in lora and "peak_rss_gb" in frozen:
        ratio = lora["peak_rss_gb"] / frozen["peak_rss_gb"]
        base = rows.get("load", {}).get("peak_rss_gb")
        above = ((lora["peak_rss_gb"] - base) / (frozen["peak_rss_gb"] - base)) if base else None
    else:
        ratio = above = None
    targets.append({"target": "lora_memory_ratio", "limit": LORA_RATIO_LIMIT, "measured": ratio,
                    "description": "peak RSS of NPO over LoRA (adapter-disabled ref) / full-weight NPO with a frozen copy",
                    "measured_above_load_baseline": above,
                    "pass": None if ratio is None else bool(ratio <= LORA_RATIO_LIMIT)})
    if prof and "full_weight_adamw_floor_gb" in prof:
        targets.append({"target": "npo_memory floor, fp32 AdamW (informational)", "limit": 2.4,
                        "measured": prof["full_weight_adamw_floor_gb"], "pass": None,
                        "description": "runtime + weights + gradients + AdamW moments + one forward's activations "
                                       "(rows.profile): the least peak RSS full-weight NPO can have"})
    lora_ckpt = rows.get("npo/lora/adapter-disabled+ckpt", {})
    if "peak_rss_gb" in lora_ckpt and "peak_rss_gb" in frozen:
        # informational, not the target: the same ratio with activation checkpointing on the LoRA run
        targets.append({"target": "lora_memory_ratio_with_checkpointing (informational)", "limit": LORA_RATIO_LIMIT,
                        "measured": lora_ckpt["peak_rss_gb"] / frozen["peak_rss_gb"], "pass": None,
                        "description": "as lora_memory_ratio, LoRA run with activation_checkpointing=True"})
    print("\nTargets:")
    print(fmt_table(["target", "measured", "limit", "pass"],
                    [[t["target"], t["measured"], t["limit"], "-" if t["pass"] is None else t["pass"]]
                     for t in targets]))
    s3t = _s3t_numbers()
    if s3t:
        print(f"\nS3T (from results/s3t_deletion.json): deletion median {s3t['deletion_median_s']:.4f} s vs retraining "
              f"a shard {s3t['retrain_shard_s']:.2f} s ({s3t['speedup']:.0f}x)")

    driver = ["python", "benchmarks/cost.py", *(argv if argv is not None else sys.argv[1:])]
    commands = previous.get("commands", [previous["command"]] if "command" in previous else [])
    if configs or not commands:
        commands = [*commands, " ".join(driver)]
    result = {
        "benchmark": "cost", "machine": info, "load_average_at_end": list(__import__("os").getloadavg()),
        "settings": {"model": args.model, "dtype": "float32", "data_source": str(source), "subset": str(data),
                     "authors": args.authors, "threads": args.threads, "forget_split": FORGET_SPLIT, "items": args.items,
                     "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
                     "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "target_modules": "all-linear"},
                     "mask_ratio": 0.5, "eval_batch_size": args.eval_batch_size,
                     "max_new_tokens": args.max_new_tokens, "optimizer": "AdamW (Trainer default); rows '+name' use TrainingArguments.optim=name",
                     "memory": "peak RSS (ru_maxrss) of a fresh process per configuration, incl. Python + torch + data",
                     "tokens": "non-pad forget + retain tokens of the epoch"},
        "command": commands[0], "commands": commands, "rows": rows, "targets": targets, "s3t": s3t,
        "total_s": round(time.time() - t_start + previous.get("total_s", 0.0), 1),
    }
    if previous:  # rows merged into an earlier run: keep its machine record, note this one
        result["machine"] = previous.get("machine", info)
        result["later_runs"] = [*previous.get("later_runs", []), {"command": " ".join(driver),
                                                                  "load_average_at_start": info["load_average_at_start"],
                                                                  "measured": [c[0] for c in configs]}]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {out} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
