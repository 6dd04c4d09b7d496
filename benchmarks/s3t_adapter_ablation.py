"""Where the demo's S3T loses utility: sharding, rank, or what the adapter can train? Not a test;
prints a table, writes ``benchmarks/results/s3t_adapter_ablation.json``.

Reads one finished demo directory (``llm-unlearn demo --output DIR`` or `run_demo`: it holds the
data, the single retain model, and the tiny S3T base pretrained on a disjoint corpus). Every row
below trains on the same retain split plus the utility sets, from that same S3T base, and is
evaluated against the demo's retain model:

* full-weight finetuning (the demo's single-model settings);
* S3T with one shard and one slice (no sharding, no slicing, no ensemble), rank 64 and 128;
* a plain LoRA of every decoder Linear (rank 64, the S3T stage's lr and epochs), then the same
  plus a LoRA of the input embeddings, then the same plus a trained copy of the output head
  (``modules_to_save``).

    python benchmarks/s3t_adapter_ablation.py --demo DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, fmt_table, machine_info  # noqa: E402

import llm_unlearn.finetune as finetune_mod  # noqa: E402
from llm_unlearn.models import attach_lora  # noqa: E402

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KEYS = ("model_utility", "retain_probability", "retain_truth_ratio", "retain_rougeL_recall")


def lora_variant(kind: str):
    """`attach_lora` for the LoRA rows: every decoder Linear; + ``embed_tokens``; + a trained head copy."""
    def attach(model, r=8, alpha=16, quantized=False, seed=0, **_):
        if kind == "decoder":
            return attach_lora(model, r=r, alpha=alpha, quantized=quantized, seed=seed)
        names = [n for n, _ in model.named_modules() if n.endswith(DECODER_LINEARS)]
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=names + ["embed_tokens"],
                         modules_to_save=["lm_head"] if kind == "head" else None, task_type="CAUSAL_LM")
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)
    return attach


def cli(*args: str) -> None:
    """The installed `llm-unlearn` command, as a user runs it (its console output dropped)."""
    exe = shutil.which("llm-unlearn") or str(Path(sys.executable).with_name("llm-unlearn"))
    subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", required=True, help="a finished demo directory (data, retain, s3t_base, summary.json)")
    p.add_argument("--work", default=None, help="where the rows' models go (default DEMO/adapter_ablation)")
    p.add_argument("--epochs", type=float, default=50, help="epochs of the S3T and LoRA rows (the demo's stage)")
    p.add_argument("--lr", type=float, default=1e-3, help="their learning rate (the demo's S3T lr)")
    p.add_argument("--out", default=str(RESULTS / "s3t_adapter_ablation.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    demo = Path(args.demo)
    cfg = json.loads((demo / "summary.json").read_text())["config"]
    data, base, work = demo / "data", demo / "s3t_base", Path(args.work or demo / "adapter_ablation")
    work.mkdir(parents=True, exist_ok=True)
    split = f"retain{100 - int(cfg['forget_split'].removeprefix('forget')):02d}"
    retain_logs = demo / "retain" / "eval" / "per_item.json"
    rows, t0 = [], time.time()

    def evaluate(name: str, model_dir: Path, what: str) -> None:
        out = work / f"eval_{name}"
        cli("eval", "--model", str(model_dir), "--data", str(data), "--retain-logs", str(retain_logs),
            "--max-new-tokens", str(cfg["eval_max_new_tokens"]), "--output", str(out), "--overwrite")
        m = json.loads((out / "summary.json").read_text())["metrics"]
        rows.append({"row": name, "what": what, **{k: m.get(k) for k in KEYS}})
        print(f"{name}: MU {m['model_utility']:.3f}", flush=True)

    def finetune(name: str, **kw) -> Path:
        out = work / name
        if out.exists():
            shutil.rmtree(out)
        finetune_mod.finetune(finetune_mod.FinetuneConfig(model=str(base), data=str(data), split=split, output=str(out),
                                                          seed=cfg["seed"], with_utility=True, **kw))
        return out

    evaluate("single_demo", demo / "retain", "the demo's single retain model (from the tiny model, full weights)")
    evaluate("full", finetune("full", epochs=cfg["ft_epochs"], lr=cfg["ft_lr"], batch_size=cfg["ft_batch_size"]),
             "full-weight finetuning of the S3T base, the demo's single-model settings")
    for r in (64, 128):
        out = work / f"s3t_1x1_r{r}"
        cli("s3t", "train", "--model", str(base), "--data", str(data), "--split", split, "--output", str(out),
            "--shards", "1", "--slices", "1", "--sequences", "1", "--lora-r", str(r), "--lora-alpha", str(2 * r),
            "--epochs-per-stage", str(args.epochs), "--lr", str(args.lr), "--seed", str(cfg["seed"]), "--with-utility",
            "--layout", cfg.get("s3t_layout") or "stacked", "--overwrite")
        evaluate(f"s3t_1x1_r{r}", out, f"S3T, 1 shard x 1 slice, LoRA rank {r}")
    for kind, what in (("decoder", "LoRA r64 of every decoder Linear"),
                       ("embed", "... + LoRA of the input embeddings"),
                       ("head", "... + a trained copy of the output head")):
        finetune_mod.attach_lora = lora_variant(kind)
        evaluate(f"lora_{kind}", finetune(f"lora_{kind}", epochs=args.epochs, lr=args.lr, batch_size=8, lora=True,
                                          lora_r=64, lora_alpha=128), what)
    ref = next(r["model_utility"] for r in rows if r["row"] == "full")
    for r in rows:
        r["mu_vs_full"] = r["model_utility"] / ref if ref else None
    print(fmt_table(["Row", "MU", "MU / full", "retain prob", "retain TR", "what"],
                    [[r["row"], r["model_utility"], r["mu_vs_full"], r["retain_probability"], r["retain_truth_ratio"],
                      r["what"]] for r in rows]))
    result = {"benchmark": "s3t_adapter_ablation", "machine": machine_info(), "command": " ".join(sys.argv),
              "settings": {"demo": str(demo), "demo_config": cfg, "epochs": args.epochs, "lr": args.lr, "split": split},
              "rows": rows, "total_s": round(time.time() - t0, 1), "targets": []}
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
