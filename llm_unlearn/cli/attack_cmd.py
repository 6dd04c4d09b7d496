"""`llm-unlearn attack`: is it really forgotten? Relearning, quantization, paraphrase and few-shot
attacks and a CKA representation check on an unlearned model, with the target and retain models
as baselines; writes ``attacks.json`` and ``attacks_per_item.json`` to --output. The same flags
on ``llm-unlearn eval --attacks`` put the results into the evaluation's summary and per-item log."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_unlearn.errors import UnlearnError

# = llm_unlearn.eval.attacks.ATTACKS / QUANT_MODES (not imported here: `--help` stays free of torch)
ATTACK_NAMES = ("relearn", "quantize", "paraphrase", "fewshot", "cka")
QUANT_MODE_NAMES = ("int8", "nf4", "fp4")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def add_attack_args(p, required: bool) -> None:
    """The attack flags shared by `attack` and `eval` (`required`: --attacks must be given)."""
    p.add_argument("--attacks", default="all" if required else None,
                   help=f"comma-separated attacks: {', '.join(ATTACK_NAMES)}, or all"
                        + (" (default all)" if required else " (default: none)"))
    p.add_argument("--target-model", default=None,
                   help="the model before unlearning, for recovery (default: the 'model' of RUN/run.json)")
    p.add_argument("--retain-model", default=None, help="the retain model, attacked as a baseline")
    p.add_argument("--relearn-steps", type=_int_list, default=(10, 30), help="relearning steps on half A (default 10,30)")
    p.add_argument("--relearn-lr", type=float, default=2e-5, help="relearning learning rate (AdamW, constant)")
    p.add_argument("--relearn-batch-size", type=int, default=4, help="half-A items per relearning step")
    p.add_argument("--quant-modes", default=",".join(QUANT_MODE_NAMES), help="bitsandbytes modes: int8, nf4, fp4")
    p.add_argument("--fewshot-k", type=int, default=3, help="retain QA pairs before each forget question")
    p.add_argument("--attack-seed", type=int, default=0, help="seed of the A/B split, relearning order, few-shot picks")
    p.add_argument("--cka-positions", choices=("answer", "all"), default="answer",
                   help="token positions CKA compares: answer tokens (default) or all (prompt and question too)")


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.cli.common import add_overwrite_flag

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="the unlearned model: run directory, adapter or model directory")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory to load on top of --model")
    p.add_argument("--data", required=True, help="local TOFU-schema directory or Hub dataset name")
    p.add_argument("--forget-split", default="forget10", help="forget split (forget01/05/10 …)")
    add_attack_args(p, required=True)
    p.add_argument("--max-items", type=int, default=None, help="attack on the first N forget items")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=200, help="greedy generation length (ROUGE-L)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    p.add_argument("--output", required=True, help="output directory (attacks.json, attacks_per_item.json)")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def attack_config(args: argparse.Namespace):
    """`AttackConfig` from the parsed flags (validates names before any model is loaded)."""
    from llm_unlearn.eval.attacks import AttackConfig

    return AttackConfig(attacks=args.attacks, relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr,
                        relearn_batch_size=args.relearn_batch_size,
                        quant_modes=tuple(m.strip() for m in args.quant_modes.split(",") if m.strip()),
                        fewshot_k=args.fewshot_k, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        max_items=args.max_items, seed=args.attack_seed,
                        cka_positions=getattr(args, "cka_positions", "answer"),
                        generation_batch_size=getattr(args, "generation_batch_size", None))


def default_target(model: str) -> str | None:
    """The model an unlearning run started from (``model`` of its run.json), if it is there."""
    from llm_unlearn.runinfo import read_manifest

    if not Path(model).is_dir():
        return None
    spec = read_manifest(model).get("model")
    return str(spec) if spec else None


def attack_models(args: argparse.Namespace, device: str):
    """(target, retain) loaded for the attacks (either may be None), on `device`."""
    from llm_unlearn.eval.loading import load_for_eval

    target_spec = args.target_model or default_target(args.model)
    out = []
    for spec in (target_spec, args.retain_model):
        if spec is None:
            out.append(None)
            continue
        m, _ = load_for_eval(spec, None, args.dtype)
        out.append(m.to(device))
    return out[0], out[1], target_spec


def run_cli_attacks(args: argparse.Namespace, model, tok, device: str) -> dict:
    """Run the configured attacks on a loaded model; the result of `run_attacks`."""
    from llm_unlearn.eval.attacks import run_attacks

    cfg = attack_config(args)
    target, retain, target_spec = attack_models(args, device)
    names = {"unlearned": args.model + (f" + {args.adapter}" if args.adapter else "")}
    if target_spec:
        names["target"] = target_spec
    if args.retain_model:
        names["retain"] = args.retain_model
    return run_attacks(model, tok, args.data, args.forget_split, cfg, target=target, retain=retain, model_names=names)


def print_summary(summary: dict) -> None:
    from llm_unlearn.eval.attacks import robustness_rows

    def f(x, d=3):
        return "n/a" if x is None else f"{x:.{d}f}"

    print(f"{'attack':16s} {'prob before':>11s} {'after':>7s} {'recov.':>7s} {'ROUGE-L before':>14s} {'after':>7s} "
          f"{'recov.':>7s} {'TR before':>9s} {'after':>7s}")
    for r in robustness_rows(summary):
        print(f"{r['attack']:16s} {f(r['unlearned_before_probability']):>11s} {f(r['unlearned_after_probability']):>7s} "
              f"{f(r['recovery_probability'], 2):>7s} {f(r['unlearned_before_rougeL_recall']):>14s} "
              f"{f(r['unlearned_after_rougeL_recall']):>7s} {f(r['recovery_rougeL_recall'], 2):>7s} "
              f"{f(r['unlearned_before_truth_ratio']):>9s} {f(r['unlearned_after_truth_ratio']):>7s}")
    for pair, v in (summary.get("cka") or {}).items():
        print(f"CKA {pair.replace('_', ' ')}: mean over layers {f(v['mean'])}")
    if summary.get("cka_shift") is not None:
        print(f"representation shift from the target: {f(summary['cka_shift'], 2)} of the retain model's "
              "(0 = unchanged, 1 = as far as the retain model)")
    for name, reason in summary.get("not_available", {}).items():
        print(f"{name}: {reason}")


def validate(args: argparse.Namespace) -> None:
    """Cheap checks before any model is loaded: attack names, modes, the forget split."""
    from llm_unlearn.eval.attacks import build_plan

    cfg = attack_config(args)
    build_plan(args.data, args.forget_split, cfg)
    for spec, flag in ((args.retain_model, "--retain-model"), (args.target_model, "--target-model")):
        if spec and (spec.startswith((".", "/", "~")) or spec.count("/") > 1) and not Path(spec).exists():
            raise UnlearnError(f"{flag}: model directory not found: {spec}")


def run(args: argparse.Namespace) -> int:
    import torch

    from llm_unlearn.cli.common import prepare_output_dir
    from llm_unlearn.eval.attacks import write_attacks
    from llm_unlearn.eval.loading import load_for_eval

    validate(args)
    out = prepare_output_dir(args.output, args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_for_eval(args.model, args.adapter, args.dtype)
    model = model.to(device)
    result = run_cli_attacks(args, model, tok, device)
    write_attacks(out, result)
    print_summary(result["summary"])
    print(f"wrote {out / 'attacks.json'} and {out / 'attacks_per_item.json'}")
    return 0
