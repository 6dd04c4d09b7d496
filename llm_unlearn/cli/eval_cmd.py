"""`llm-unlearn eval`: evaluate a model (full weights, LoRA adapter or S3T ensemble) on TOFU-style
forgetting and utility; writes ``summary.json`` and ``per_item.json`` to --output."""

from __future__ import annotations

import argparse


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.cli.common import add_overwrite_flag

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="model directory, Hub id, alias (smollm2, tiny) or S3T run directory")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory to load on top of --model")
    p.add_argument("--data", required=True, help="local TOFU-schema directory or Hub dataset name")
    p.add_argument("--forget-split", default="forget10", help="forget split (forget01/05/10 …)")
    p.add_argument("--retain-logs", default=None,
                   help="the retain model's eval (our output dir / per_item.json, TOFU_EVAL.json or TOFU "
                        "eval_log*.json dir); needed for forget quality and privleak")
    p.add_argument("--holdout-split", default=None, help="holdout split for membership inference (default holdoutXX)")
    p.add_argument("--max-items", type=int, default=None, help="evaluate at most N items per split")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward pass")
    p.add_argument("--generation-batch-size", type=int, default=None,
                   help="prompts per greedy generate call (default: max(batch size, 64))")
    p.add_argument("--max-new-tokens", type=int, default=200, help="greedy generation length")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    p.add_argument("--output", required=True, help="output directory (summary.json, per_item.json)")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.cli.common import check_output, prepare_output_dir
    from llm_unlearn.data.source import check_split

    # validate cheap inputs before loading torch and a model
    check_split(f"{args.forget_split}_perturbed", args.data)
    check_output(args.output, args.overwrite)
    import torch

    from llm_unlearn.eval.evaluator import evaluate_model, write_eval
    from llm_unlearn.eval.loading import load_for_eval
    from llm_unlearn.eval.logs import format_value, read_logs

    retain = read_logs(args.retain_logs) if args.retain_logs else None
    out = prepare_output_dir(args.output, args.overwrite)
    model, tok = load_for_eval(args.model, args.adapter, args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if hasattr(model, "to") and not getattr(model, "hf_device_map", None):
        model = model.to(device)
    result = evaluate_model(model, tok, args.data, forget_split=args.forget_split, retain_logs=retain,
                            max_items=args.max_items, batch_size=args.batch_size,
                            generation_batch_size=args.generation_batch_size,
                            max_new_tokens=args.max_new_tokens, holdout_split=args.holdout_split,
                            model_name=args.model + (f" + {args.adapter}" if args.adapter else ""))
    write_eval(out, result)
    s = result["summary"]
    for key in ("forget_quality", "model_utility", "forget_rougeL_recall", "forget_probability",
                "forget_truth_ratio", "mia_auc_min_k", "privleak"):
        reason = s["not_available"].get(key)
        print(f"{key:24s} {format_value(s['metrics'][key], key)}" + (f"  ({reason})" if reason else ""))
    print(f"wrote {out / 'summary.json'} and {out / 'per_item.json'}")
    return 0
