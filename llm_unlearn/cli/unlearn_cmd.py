"""`llm-unlearn unlearn`: run an unlearning method on a finetuned model (calls
`llm_unlearn.unlearn.run_unlearning`). Precedence: method defaults < ``--config`` YAML < flags."""

from __future__ import annotations

import argparse

from llm_unlearn.cli.choices import MASK_DEFAULT_GAMMA as DEFAULT_GAMMA
from llm_unlearn.cli.choices import UNLEARN_METHODS as METHODS
from llm_unlearn.cli.common import add_overwrite_flag
from llm_unlearn.data.protocol import add_protocol_argument

# flag dest -> config field (flags left at None do not override)
HYPERPARAMETER_FLAGS: dict[str, str] = {
    "lr": "learning_rate", "epochs": "num_train_epochs", "max_steps": "max_steps",
    "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "max_length": "max_length", "seed": "seed", "beta": "beta", "alpha": "alpha", "gamma": "gamma",
    "delta": "delta", "retain_loss": "retain_loss_type", "steering_coeff": "steering_coeff",
    "steering_scale": "steering_scale", "layer": "layer",
    "update_layers": "update_layers", "refusals": "refusals_file", "save_steps": "save_steps",
    "logging_steps": "logging_steps", "report_to": "report_to", "hub_model_id": "hub_model_id", "optim": "optim",
    "protocol": "protocol",
    "sam_rho": "sam_rho",
}


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + ". Precedence: defaults < --config < flags.")
    p.add_argument("--model", required=True, help="finetuned model: directory (full or LoRA adapter), alias or Hub id")
    p.add_argument("--data", default=None, help="local TOFU-schema directory or Hub dataset name (QA data)")
    p.add_argument("--forget-split", default=None, help="split to forget (default forget10)")
    p.add_argument("--retain-split", default=None, help="split to keep (default: the matching retainXX)")
    c = p.add_argument_group("corpus unlearning (raw text instead of --data QA splits; WMDP / MUSE)")
    c.add_argument("--forget-corpus", default=None,
                   help="documents to forget: .txt (blank-line separated), .jsonl with a text field, or a Hub "
                        "dataset NAME[:CONFIG[:SPLIT]], e.g. cais/wmdp-corpora:cyber-forget-corpus")
    c.add_argument("--retain-corpus", default=None, help="documents to keep (same forms as --forget-corpus)")
    c.add_argument("--max-windows-per-doc", type=int, default=None,
                   help="keep only the first N max-length windows of each document (WMDP: 1); default all, "
                        "so the loss covers every token")
    p.add_argument("--method", required=True, metavar="{" + ",".join(METHODS) + "}", help="unlearning method")
    p.add_argument("--output", required=True, help="output directory (model or adapter, tokenizer, run.json)")
    p.add_argument("--config", default=None, help="YAML file with fields of the method's config (NPOConfig, …)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter; the reference is the model with adapters off")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--load-in-4bit", action="store_true", help="QLoRA: quantise the base to 4 bit (with --lora)")
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16")
    g = p.add_argument_group("hyperparameters (override the config file)")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 2.25e-3 with --lora, 1e-4 full weights, from benchmarks/defaults.py; "
                        "rmu 5e-5)")
    g.add_argument("--epochs", type=float, default=None, help="epochs over the forget set (default 5)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=None, help="forget items per device and micro-batch (default 4)")
    g.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps (default 1)")
    g.add_argument("--max-length", type=int, default=None, help="max tokens per QA item (default 256)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 42)")
    g.add_argument("--beta", type=float, default=None, help="npo / npo_sam / simnpo / idk_dpo inverse temperature")
    g.add_argument("--alpha", type=float, default=None, help="retain-term weight (0: forget term only)")
    g.add_argument("--gamma", type=float, default=None, help="forget-term weight")
    g.add_argument("--delta", type=float, default=None, help="simnpo margin δ")
    g.add_argument("--sam-rho", type=float, default=None, help="npo_sam: SAM radius ρ of the weight perturbation (default 0.01)")
    g.add_argument("--retain-loss", choices=["nll", "kl"], default=None, help="retain term: nll or kl(ref||θ)")
    g.add_argument("--steering-coeff", type=float, default=None, help="rmu: norm c of the random target direction")
    g.add_argument("--steering-scale", type=float, default=None,
                   help="rmu: adaptive c = s x each forget token's activation norm (replaces --steering-coeff)")
    g.add_argument("--layer", type=int, default=None, help="rmu: decoder layer whose activations are steered")
    g.add_argument("--update-layers", default=None, help="rmu: comma-separated layers whose parameters train")
    g.add_argument("--refusals", default=None, help="idk_dpo: refusal answers file (default: idontknow.txt of --data)")
    g.add_argument("--optim", default=None,
                   help="optimizer (TrainingArguments.optim; default AdamW): adafactor drops AdamW's two moments "
                        "(-1.1 GB on a 135 M model in fp32)")
    g.add_argument("--optim-in-backward", action="store_true",
                   help="update each weight inside backward as soon as its gradient is complete (no full gradient "
                        "buffer; one process; per-parameter clipping; see `llm-unlearn plan-memory`)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    g.add_argument("--save-steps", type=int, default=None, help="save a checkpoint every N steps (enables saving)")
    g.add_argument("--logging-steps", type=float, default=None, help="log every N steps")
    g.add_argument("--report-to", default=None, help="none, all, tensorboard, wandb, trackio, …")
    g.add_argument("--push-to-hub", action="store_true", help="push the result to the Hub (needs --hub-model-id, a token)")
    g.add_argument("--hub-model-id", default=None, help="Hub repository for --push-to-hub")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any config field (value parsed as YAML), e.g. --set lr_scheduler_type=constant")
    p.add_argument("--mask", default=None, help="a saved weight mask (llm-unlearn mask): only its weights change")
    p.add_argument("--mask-method", default=None, help="compute a mask first: wagle, salun, magnitude, wanda, random")
    p.add_argument("--mask-ratio", type=float, default=None, help="fraction of weights that may change (with --mask-method)")
    p.add_argument("--mask-granularity", choices=["element", "row"], default=None,
                   help="with --mask-method: element (one bit per weight, the paper) or row (output channels, cheap "
                        "for 7B LoRA); default element")
    p.add_argument("--mask-scope", choices=["global", "per_layer", "per_row", "all"], default=None,
                   help="with --mask-method: one top-k over all linear weights (global), within each tensor "
                        "(per_layer), within each output row (per_row, wanda's default) or over every parameter "
                        "incl. embeddings, norms and lm_head (all, WAGLE's reference); default global, wanda per_row")
    p.add_argument("--mask-gamma", type=float, default=None,
                   help=f"with --mask-method wagle: γ, the retain-gradient weight of the score (default {DEFAULT_GAMMA:g})")
    p.add_argument("--holdout-split", default=None,
                   help="holdout items for the holdout forget quality printed before / after (default holdoutXX)")
    p.add_argument("--max-authors", type=int, default=None,
                   help="the model was finetuned on the first N authors of full: holdout items are the other authors'")
    add_protocol_argument(p, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from a checkpoint directory, or the last one of an interrupted run (Ctrl-C saves "
                        "one) or in --output")
    p.add_argument("--threads", default="auto",
                   help="torch threads: auto (one for models under 10 M parameters unless OMP_NUM_THREADS is set), "
                        "keep, or a number")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    import yaml

    from llm_unlearn.errors import UnlearnError

    out = {field: getattr(args, dest) for dest, field in HYPERPARAMETER_FLAGS.items() if getattr(args, dest) is not None}
    if args.save_steps is not None:
        out["save_strategy"] = "steps"
    if args.gradient_checkpointing:
        out["activation_checkpointing"] = True
    if args.optim_in_backward:
        out["optim_in_backward"] = True
    if args.push_to_hub:
        out["push_to_hub"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UnlearnError(f"--set expects FIELD=VALUE, got '{item}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.checks import check_file
    from llm_unlearn.data.source import check_input_kinds, check_split, matching_retain_split
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.outputs import check_output

    # cheap checks first: a wrong split or an existing output answers before torch is imported
    if args.method not in METHODS:
        raise UnlearnError(f"unknown method '{args.method}'; valid methods: {', '.join(METHODS)}")
    kind = check_input_kinds(args.data, args.forget_split, args.retain_split, args.forget_corpus, args.retain_corpus)
    if kind == "qa":
        forget_split = args.forget_split or "forget10"
        check_split(forget_split, args.data)
        check_split(args.retain_split or matching_retain_split(forget_split), args.data)
    check_file("--config", args.config)
    # a missing --mask file is reported by run_unlearning after the mask-option combinations, which say more
    if args.resume is None:
        check_output(args.output, args.overwrite, [args.model, args.data, args.config, args.mask, args.forget_corpus,
                                                   args.retain_corpus])
    if args.threads not in ("auto", "keep") and not str(args.threads).isdigit():
        raise UnlearnError(f"--threads must be auto, keep or a number, got {args.threads!r}")
    from llm_unlearn.interrupt import announce_interrupts
    from llm_unlearn.unlearn import run_unlearning

    announce_interrupts()
    out, result = run_unlearning(
        model=args.model, data=args.data, output=args.output, method=args.method, forget_split=args.forget_split,
        retain_split=args.retain_split, config=args.config, overrides=overrides_from_args(args), lora=args.lora,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
        mask=args.mask, mask_method=args.mask_method, mask_ratio=args.mask_ratio,
        mask_granularity=args.mask_granularity, mask_scope=args.mask_scope, mask_gamma=args.mask_gamma,
        resume_from_checkpoint=args.resume, overwrite=args.overwrite, holdout_split=args.holdout_split,
        max_authors=args.max_authors, forget_corpus=args.forget_corpus, retain_corpus=args.retain_corpus,
        max_windows_per_doc=args.max_windows_per_doc,
        threads=int(args.threads) if str(args.threads).isdigit() else args.threads,
    )
    from llm_unlearn.eval.logs import forgetting_note, format_value

    nll, hfq = result["nll"], result.get("hfq") or {}
    retain = (f"retain NLL {nll['retain_before']:.3f} -> {nll['retain_after']:.3f}"
              if nll["retain_before"] is not None else "no retain data")
    print(f"{args.method}: forget NLL {nll['forget_before']:.3f} -> {nll['forget_after']:.3f}, {retain} "
          f"({result['steps']} steps)")
    if hfq.get("before") is not None:
        print(f"holdout forget quality (retain-free, 1 = forget items look unseen): "
              f"{format_value(hfq['before'], 'holdout_forget_quality')} -> "
              f"{format_value(hfq['after'], 'holdout_forget_quality')}"
              + (f" ({format_value(hfq['after_vs_start_holdout'], 'holdout_forget_quality')} against the holdout items "
                 "under the starting model)" if hfq.get("after_vs_start_holdout") is not None else ""))
    elif args.forget_corpus is None:
        print(f"holdout forget quality: n/a ({hfq.get('not_available') or 'not scored'})")
    if result.get("warning"):
        print(f"warning: {result['warning']}")
    elif hfq.get("direction"):  # which way the forget items differ from unseen ones (HFQ is two-sided)
        d = hfq["direction"]
        print(f"forgetting: {forgetting_note(d)}" + (f"; {d['advice']}" if d.get("advice") else ""))
    print(f"saved {'adapter' if args.lora else 'model'}, tokenizer and run.json to {out}")
    return 0
