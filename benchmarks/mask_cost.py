"""Mask cost and the WAGLE γ sweep (not a test: prints tables, writes JSON to benchmarks/results/).

1. Cost: time and peak memory of `compute_mask` (WAGLE: retain + forget gradients in fp32)
   against one GradDiff unlearning epoch (UnlearnTrainer, AdamW) on the same forget/retain data.
   Target: mask ≤ 1 epoch in time, ≤ 1.5× the epoch's peak memory. Each phase runs in its own
   subprocess; peak memory is CUDA max allocated on a GPU, else the process's max RSS minus that
   of a process that only loaded model and data.
2. γ sweep (--gamma-sweep): masks at ratio 0.2 for γ ∈ {1e-3 … 1e3, ∞} and the baselines, each
   followed by the same short masked GradDiff run (plain AdamW loop); forget-NLL rise and
   retain-NLL rise are reported (results/gamma_sweep_lr<lr>.json); they chose DEFAULT_GAMMA.

    python benchmarks/mask_cost.py                 # cost on the tiny model + synthetic data
    python benchmarks/mask_cost.py --gamma-sweep   # γ sweep
    python benchmarks/mask_cost.py --model DIR --data DIR   # cost on a real finetuned model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _prepare_tiny(workdir: Path) -> tuple[str, str]:
    """Synthetic data (10 authors x 10 QA) and a tiny Llama finetuned on it (cached in workdir)."""
    from llm_unlearn.data.synthetic import generate, write_splits
    from llm_unlearn.finetune import FinetuneConfig, finetune

    data = workdir / "data"
    model = workdir / "target"
    if not (data / "full.jsonl").is_file():
        write_splits(generate(10, 10, seed=0), data)
    if not (model / "config.json").is_file():
        finetune(FinetuneConfig(model="tiny", data=str(data), split="full", output=str(model), epochs=10, lr=3e-3,
                                batch_size=16, seed=0))
    return str(model), str(data)


def _load(model_dir: str, data: str, forget_split: str, max_length: int):
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu, matching_retain_split
    from llm_unlearn.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    if torch.cuda.is_available():
        model.to("cuda")
    forget, _ = tokenize_qa_dataset(load_tofu(forget_split, data), tok, max_length=max_length)
    retain, _ = tokenize_qa_dataset(load_tofu(matching_retain_split(forget_split), data), tok, max_length=max_length)
    return model, tok, forget, retain


def _peak_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def phase(args) -> dict:
    """One measured phase (run in a fresh process): load | mask | epoch."""
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator

    model, tok, forget, retain = _load(args.model, args.data, args.forget_split, args.max_length)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cols = ["input_ids", "attention_mask", "labels"]
    t0 = time.perf_counter()
    if args.phase == "mask":
        from llm_unlearn.masks import compute_mask

        # WAGLE's retain gradient over as many retain items as the epoch sees (one per forget item)
        retain_sub = retain.shuffle(seed=0).select(range(min(len(retain), len(forget))))
        fl = DataLoader(forget.select_columns(cols), batch_size=args.batch_size, collate_fn=QACollator(tok))
        rl = DataLoader(retain_sub.select_columns(cols), batch_size=args.batch_size, collate_fn=QACollator(tok))
        mask = compute_mask(model, fl, rl, method="wagle", ratio=0.8, progress=False)
        extra = {"density": mask.density()}
    elif args.phase == "epoch":
        from llm_unlearn.data.pairing import ForgetRetainDataset
        from llm_unlearn.trainers import GradDiffConfig, GradDiffTrainer

        with tempfile.TemporaryDirectory() as out:
            cfg = GradDiffConfig(output_dir=out, num_train_epochs=1, learning_rate=1e-5,
                                 per_device_train_batch_size=args.batch_size, use_cpu=not torch.cuda.is_available(),
                                 disable_tqdm=True, logging_steps=1000)
            trainer = GradDiffTrainer(model=model, args=cfg, train_dataset=ForgetRetainDataset(forget, retain, seed=0),
                                      processing_class=tok)
            t0 = time.perf_counter()  # the epoch itself, not the trainer's set-up
            trainer.train()
        extra = {}
    else:
        extra = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"phase": args.phase, "seconds": time.perf_counter() - t0, "peak_bytes": _peak_bytes(), **extra}


def run_cost(args) -> dict:
    rows = {}
    for name in ("load", "mask", "epoch"):
        cmd = [sys.executable, __file__, "--phase", name, "--model", args.model, "--data", args.data,
               "--forget-split", args.forget_split, "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    base = 0 if torch.cuda.is_available() else rows["load"]["peak_bytes"]
    mask_mem = rows["mask"]["peak_bytes"] - base
    epoch_mem = rows["epoch"]["peak_bytes"] - base
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu", "model": args.model,
        "forget_split": args.forget_split, "batch_size": args.batch_size,
        "mask_seconds": rows["mask"]["seconds"], "epoch_seconds": rows["epoch"]["seconds"],
        "time_ratio": rows["mask"]["seconds"] / rows["epoch"]["seconds"],
        "mask_peak_mb": mask_mem / 2**20, "epoch_peak_mb": epoch_mem / 2**20,
        "memory_ratio": mask_mem / max(epoch_mem, 1), "memory_basis": "cuda max allocated" if base == 0
        else "max RSS above a load-only process",
    }
    print(f"{'':<12}{'seconds':>10}{'peak MB':>10}")
    print(f"{'mask':<12}{result['mask_seconds']:>10.2f}{result['mask_peak_mb']:>10.1f}")
    print(f"{'1 epoch':<12}{result['epoch_seconds']:>10.2f}{result['epoch_peak_mb']:>10.1f}")
    print(f"mask/epoch: time {result['time_ratio']:.2f}x (target <= 1), memory {result['memory_ratio']:.2f}x (target <= 1.5)")
    return result


def _mean_nll(model, loader) -> float:
    total = n = 0.0
    with torch.no_grad():
        for b in loader:
            total += float(model(**b).loss) * len(b["input_ids"])
            n += len(b["input_ids"])
    return total / n


def run_gamma_sweep(args) -> dict:
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator
    from llm_unlearn.masks import compute_mask

    torch.manual_seed(0)
    _, tok, forget, retain = _load(args.model, args.data, args.forget_split, args.max_length)
    cols = ["input_ids", "attention_mask", "labels"]
    collate = QACollator(tok)
    forget_l = DataLoader(forget.select_columns(cols), batch_size=args.batch_size, collate_fn=collate)
    retain_eval = retain.select_columns(cols).select(range(min(len(retain), 100)))
    retain_l = DataLoader(retain_eval, batch_size=args.batch_size, collate_fn=collate)
    retain_score = DataLoader(retain.select_columns(cols).shuffle(seed=1).select(range(min(len(retain), 100))),
                              batch_size=args.batch_size, collate_fn=collate)

    def unlearn(mask) -> tuple[float, float]:
        from llm_unlearn.masks import enforce_mask
        from llm_unlearn.models import load_model

        model = load_model(args.model)
        f0, r0 = _mean_nll(model, forget_l), _mean_nll(model, retain_l)
        enforcer = enforce_mask(model, mask) if mask is not None else None
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
        if enforcer is not None:
            enforcer.attach_optimizer(opt)
        fb, rb = list(forget_l), list(retain_score)
        model.train()
        for step in range(args.steps):
            loss = -model(**fb[step % len(fb)]).loss + model(**rb[step % len(rb)]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        model.eval()
        return _mean_nll(model, forget_l) - f0, _mean_nll(model, retain_l) - r0

    from llm_unlearn.models import load_model

    base = load_model(args.model)
    settings = [("none", None)] + [(f"wagle γ={g:g}", ("wagle", g)) for g in args.gammas]
    settings += [(m, (m, None)) for m in args.baselines]
    rows = []
    for label, spec in settings:
        mask = None
        if spec is not None:
            method, gamma = spec
            kw = {"gamma": gamma} if gamma is not None else {}
            mask = compute_mask(base, forget_l, retain_score, method=method, ratio=args.ratio, progress=False, **kw)
        d_f, d_r = unlearn(mask)
        rows.append({"setting": label, "gamma": spec[1] if spec else None, "forget_nll_rise": d_f,
                     "retain_nll_rise": d_r, "net": d_f - d_r})
        print(f"{label:<22} forget NLL +{d_f:7.3f}  retain NLL +{d_r:7.3f}  net {d_f - d_r:7.3f}", flush=True)
    wagle = [r for r in rows if r["setting"].startswith("wagle")]
    best = max(wagle, key=lambda r: r["net"])
    print(f"best γ by forget rise − retain rise: {best['gamma']}")
    return {"ratio": args.ratio, "steps": args.steps, "lr": args.lr, "model": args.model, "rows": rows,
            "best_gamma": best["gamma"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="finetuned model dir (default: tiny, trained here)")
    p.add_argument("--data", default=None, help="TOFU-schema dir (default: synthetic, generated here)")
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "llm_unlearn_mask_bench"))
    p.add_argument("--gamma-sweep", action="store_true")
    p.add_argument("--gammas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, math.inf])
    p.add_argument("--baselines", nargs="*", default=["salun", "random"], help="sweep: baseline masks to compare")
    p.add_argument("--ratio", type=float, default=0.2, help="sweep: mask ratio")
    p.add_argument("--steps", type=int, default=20, help="sweep: GradDiff steps")
    p.add_argument("--lr", type=float, default=1e-3, help="sweep: learning rate")
    p.add_argument("--phase", choices=["load", "mask", "epoch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase:
        print(json.dumps(phase(args)))
        return
    if args.model is None:
        args.model, args.data = _prepare_tiny(Path(args.workdir))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.gamma_sweep:
        result = run_gamma_sweep(args)
        (RESULTS / f"gamma_sweep_lr{args.lr:g}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    else:
        result = run_cost(args)
        (RESULTS / "mask_cost.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
