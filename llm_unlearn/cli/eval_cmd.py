"""`llm-unlearn eval`: evaluate a model (full weights, LoRA adapter or S3T ensemble) on TOFU-style
forgetting and utility; writes ``summary.json`` and ``per_item.json`` to --output."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.cli.attack_cmd import add_attack_args
    from llm_unlearn.cli.common import add_overwrite_flag
    from llm_unlearn.data.protocol import add_allow_mixed_argument, add_protocol_argument

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="model directory, Hub id, alias (smollm2, tiny) or S3T run directory")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory to load on top of --model")
    p.add_argument("--data", default=None,
                   help="local TOFU-schema directory or Hub dataset name (optional with --lm-eval-tasks or "
                        "--forget-corpus: then only those are scored)")
    p.add_argument("--forget-split", default="forget10", help="forget split (forget01/05/10 …)")
    p.add_argument("--retain-logs", default=None,
                   help="the retain model's eval (our output dir / per_item.json, TOFU_EVAL.json or TOFU "
                        "eval_log*.json dir); needed for forget quality and privleak")
    p.add_argument("--holdout-split", default=None,
                   help="holdout split (items about entities the model never trained on) for the retain-free scores: "
                        "holdout forget quality and membership AUCs (default: holdoutXX of --data)")
    p.add_argument("--max-authors", type=int, default=None,
                   help="the model was finetuned on the first N authors of full (a TOFU subset): the holdout items "
                        "are the other authors' (those with perturbed answers)")
    p.add_argument("--max-items", type=int, default=None,
                   help="evaluate at most N items per split (default: the protocol's cap, none; tofu-legacy 300); "
                        "the holdout, scored only, reads max(3 x the forget items, 200), spread over its authors")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward pass")
    p.add_argument("--generation-batch-size", type=int, default=None,
                   help="prompts per greedy generate call (default: max(batch size, 64))")
    p.add_argument("--max-new-tokens", type=int, default=None, help="greedy generation length (default: the protocol's, 200)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    p.add_argument("--aggregate", default=None,
                   help="S3T run: how served shards are combined (mean-logprob, mixture, posterior, route; "
                        "default: the run's recorded mode)")
    p.add_argument("--allow-base", action="store_true",
                   help="S3T run with no shard serving: evaluate the bare base model instead of refusing")
    g = p.add_argument_group("corpus unlearning (WMDP / MUSE)")
    g.add_argument("--lm-eval-tasks", default=None,
                   help="comma-separated lm-eval-harness tasks scored on the loaded model, e.g. "
                        "wmdp_bio,wmdp_cyber,mmlu (accuracy vs chance into summary.json)")
    g.add_argument("--lm-eval-include", default=None,
                   help="directory of extra lm-eval task configs (YAML), e.g. DATA/domain/tasks of data synth")
    g.add_argument("--lm-eval-limit", type=float, default=None, help="score at most N items per lm-eval task")
    g.add_argument("--forget-corpus", default=None,
                   help="forget corpus (.txt/.jsonl or NAME[:CONFIG[:SPLIT]]) for MUSE verbatim memorisation")
    g.add_argument("--memorisation-prefix", type=int, default=32, help="prefix tokens given to the model")
    g.add_argument("--memorisation-continuation", type=int, default=64, help="continuation tokens compared (ROUGE-L F1)")
    g.add_argument("--memorisation-max-docs", type=int, default=None, help="score at most N documents")
    p.add_argument("--output", required=True, help="output directory (summary.json, per_item.json)")
    add_protocol_argument(p)
    add_allow_mixed_argument(p)
    add_attack_args(p, required=False)
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def _is_s3t_run(model: str) -> bool:
    from llm_unlearn.runinfo import read_manifest

    return Path(model).is_dir() and read_manifest(model).get("kind") == "s3t"


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.checks import check_file, check_local_model
    from llm_unlearn.data.source import check_split
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.outputs import check_output, staged_dir

    # every check before a model loads: flags, model path, output, device, data, retain-log
    # compatibility; the torch-free ones first, so a typo fails in a fraction of a second
    for flag, value in (("--batch-size", args.batch_size), ("--generation-batch-size", args.generation_batch_size),
                        ("--max-new-tokens", args.max_new_tokens), ("--max-items", args.max_items),
                        ("--memorisation-prefix", args.memorisation_prefix),
                        ("--memorisation-continuation", args.memorisation_continuation),
                        ("--memorisation-max-docs", args.memorisation_max_docs)):
        if value is not None and value < 1:
            raise UnlearnError(f"{flag} must be >= 1, got {value}")
    if args.data is None and not (args.lm_eval_tasks or args.forget_corpus):
        raise UnlearnError("nothing to evaluate: pass --data (TOFU-style), --lm-eval-tasks or --forget-corpus")
    if args.data is None and args.attacks:
        raise UnlearnError("--attacks score TOFU-style data: pass --data")
    s3t = _is_s3t_run(args.model)
    if not s3t:
        check_local_model(args.model)
    check_file("--adapter", args.adapter)
    check_file("--lm-eval-include", args.lm_eval_include)
    inputs = [args.model, args.adapter, args.data, args.retain_logs, args.forget_corpus]
    check_output(args.output, args.overwrite, inputs)
    if args.data is not None:
        check_split(f"{args.forget_split}_perturbed", args.data)
    if not s3t and (args.aggregate or args.allow_base):
        raise UnlearnError("--aggregate and --allow-base apply to an S3T run directory only")
    if s3t:  # the serving mode is known and some shard serves (or --allow-base), before any model loads
        from llm_unlearn.s3t.service import check_servable

        check_servable(args.model, args.aggregate, args.allow_base)

    from llm_unlearn.data.protocol import get_protocol
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval.loading import load_for_eval
    from llm_unlearn.eval.logs import (
        SUMMARY_FORMAT,
        check_retain_for,
        check_same_protocol,
        forgetting_note,
        format_value,
        read_logs,
        retain_free_note,
    )
    from llm_unlearn.models import resolve_device, resolve_model_path

    if not s3t:
        resolve_model_path(args.model)  # aliases, adapters and their base models
    device = resolve_device(args.device)
    max_items = args.max_items if args.max_items is not None else get_protocol(args.protocol).max_items
    retain = read_logs(args.retain_logs) if args.retain_logs else None
    if args.data is not None:
        forget = load_tofu(f"{args.forget_split}_perturbed", args.data, max_items=max_items)
        if retain is not None:
            check_same_protocol(args.protocol, retain, args.allow_mixed_protocols)
            check_retain_for(retain, args.forget_split, len(forget), list(forget["question"]))
    corpus = None
    if args.forget_corpus:
        from llm_unlearn.data.corpus import load_corpus

        corpus = load_corpus(args.forget_corpus)
    if args.lm_eval_tasks:
        from llm_unlearn.eval.lm_eval_tasks import parse_tasks

        parse_tasks(args.lm_eval_tasks)
    if args.attacks:
        from llm_unlearn.cli.attack_cmd import validate

        validate(args)

    from llm_unlearn.eval.evaluator import evaluate_model, write_eval
    from llm_unlearn.threads import apply_thread_policy

    name = args.model + (f" + {args.adapter}" if args.adapter else "")
    with staged_dir(args.output, args.overwrite, inputs) as stage:
        model, tok = load_for_eval(args.model, args.adapter, args.dtype, args.aggregate, args.allow_base)
        threads = apply_thread_policy(model if hasattr(model, "parameters") else getattr(model, "model", None))
        if hasattr(model, "to") and not getattr(model, "hf_device_map", None):
            model = model.to(device)
        if args.data is None:
            result = {"summary": {"format": SUMMARY_FORMAT, "model": name, "settings": {}}, "per_item": None}
        else:
            result = evaluate_model(model, tok, args.data, forget_split=args.forget_split, retain_logs=retain,
                                    max_items=args.max_items, batch_size=args.batch_size,
                                    generation_batch_size=args.generation_batch_size,
                                    max_new_tokens=args.max_new_tokens, holdout_split=args.holdout_split,
                                    max_authors=args.max_authors, model_name=name,
                                    protocol=args.protocol, allow_mixed_protocols=args.allow_mixed_protocols)
        result["summary"]["settings"]["threads"] = threads
        if s3t:
            result["summary"]["s3t"] = {"aggregate": model.aggregate, "served_shards": sorted(model.served)}
        s = result["summary"]
        if args.lm_eval_tasks:
            from llm_unlearn.eval.lm_eval_tasks import run_lm_eval

            limit = args.lm_eval_limit
            limit = int(limit) if limit is not None and limit >= 1 else limit
            s["lm_eval"] = run_lm_eval(model, tok, args.lm_eval_tasks, include=args.lm_eval_include,
                                       batch_size=args.batch_size, limit=limit)
        if corpus is not None:
            from llm_unlearn.eval.memorisation import corpus_memorisation

            mem = corpus_memorisation(model, tok, corpus["text"], prefix_tokens=args.memorisation_prefix,
                                      continuation_tokens=args.memorisation_continuation,
                                      batch_size=args.batch_size, max_documents=args.memorisation_max_docs)
            s["verbatim_memorisation"] = {"corpus": args.forget_corpus, **mem}
        if args.attacks:
            from llm_unlearn.cli.attack_cmd import run_cli_attacks

            attacked = run_cli_attacks(args, model, tok, device)
            result["summary"]["attacks"] = attacked["summary"]  # every attacked value stays with the evaluation
            result["per_item"]["attacks"] = attacked["per_item"]
        write_eval(stage.path, result)
    out = stage.final
    s = result["summary"]
    if args.data is not None:
        for key in ("forget_quality", "holdout_forget_quality", "mia_auc_loss", "mia_auc_min_k", "model_utility",
                    "utility_proxy", "forget_rougeL_recall", "forget_probability", "forget_truth_ratio", "privleak"):
            reason = s["not_available"].get(key) or retain_free_note(key)
            print(f"{key:24s} {format_value(s['metrics'][key], key)}" + (f"  ({reason})" if reason else ""))
            if key == "holdout_forget_quality" and s.get("forgetting_direction"):
                print(f"{'':24s} {forgetting_note(s['forgetting_direction'])}")
    if s.get("mixed_protocols"):
        print(f"note: mixed protocols (--allow-mixed-protocols): {s['mixed_protocols']}")
    for task, row in s.get("lm_eval", {}).items():
        chance = f", chance {row['chance']:.3f}, n {row['n']}" if "chance" in row else ""
        err = f" ± {row['acc_stderr']:.3f}" if row.get("acc_stderr") is not None else ""
        print(f"lm-eval {task:16s} acc {row['acc']:.3f}{err}{chance}")
    if "verbatim_memorisation" in s:
        v = s["verbatim_memorisation"]
        print(f"verbatim memorisation    ROUGE-L F1 {v['mean']:.3f} over {v['documents']} documents")
    if args.attacks:
        from llm_unlearn.cli.attack_cmd import print_summary

        print_summary(s["attacks"])
    print(f"wrote {out / 'summary.json'}" + (f" and {out / 'per_item.json'}" if result["per_item"] else ""))
    return 0
