"""`llm-unlearn mask`: compute a weight-attribution mask (WAGLE or a baseline) on the original
model and save it (bit-packed safetensors) for `llm-unlearn unlearn --mask FILE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_unlearn.cli.choices import MASK_DEFAULT_GAMMA as DEFAULT_GAMMA
from llm_unlearn.cli.choices import MASK_GRANULARITIES as GRANULARITIES
from llm_unlearn.cli.choices import MASK_METHODS as METHODS
from llm_unlearn.cli.choices import MASK_SCOPES as SCOPES
from llm_unlearn.cli.common import add_overwrite_flag


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="the model to unlearn: directory (full or LoRA adapter, merged), alias or Hub id")
    p.add_argument("--data", default=None, help="local TOFU-schema directory or Hub dataset name (QA data)")
    p.add_argument("--forget-split", default=None, help="split to forget (default forget10)")
    p.add_argument("--forget-corpus", default=None,
                   help="instead of --data: documents to forget (.txt, .jsonl with text, or NAME[:CONFIG[:SPLIT]])")
    p.add_argument("--retain-corpus", default=None, help="instead of --data: documents to keep (wagle)")
    p.add_argument("--retain-split", default=None, help="split to keep (default: the matching retainXX)")
    p.add_argument("--method", choices=METHODS, default="wagle", help="attribution score (default wagle)")
    p.add_argument("--ratio", type=float, default=0.8, help="fraction of the covered weights that may change, in (0, 1]")
    p.add_argument("--scope", choices=SCOPES, default=None,
                   help="global (one top-k over all linear weights), per_layer (per tensor), per_row (within each "
                        "output row; wanda's default), all (global over every parameter incl. embeddings, norms, "
                        "lm_head, as WAGLE's reference); default: per_row for wanda, else global")
    p.add_argument("--granularity", choices=GRANULARITIES, default="element",
                   help="element: one bit per weight; row: one per output channel (cheap LoRA enforcement)")
    p.add_argument("--target-modules", default=None,
                   help="regex on module names (default: every linear layer except lm_head)")
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA,
                   help=f"wagle: diagonal Hessian constant γ of the retain loss (default {DEFAULT_GAMMA}; 'inf' drops the retain term)")
    p.add_argument("--batch-size", type=int, default=8, help="items per batch for gradients / activations")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per QA item or corpus window")
    p.add_argument("--max-retain", type=int, default=None, help="use only the first N retain items (default all)")
    p.add_argument("--dtype", default="float32", help="model dtype (gradients are accumulated in float32 anyway)")
    p.add_argument("--seed", type=int, default=0, help="seed (random method)")
    p.add_argument("--output", required=True, help="mask file to write (.safetensors)")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.data.source import check_input_kinds, check_split, matching_retain_split
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.outputs import check_output

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length),
                        ("--max-retain", args.max_retain)):
        if value is not None and value < 1:
            raise UnlearnError(f"{flag} must be >= 1, got {value}")
    if not args.gamma > 0:
        raise UnlearnError(f"--gamma must be > 0, got {args.gamma}")
    inputs = [args.model, args.data, args.forget_corpus, args.retain_corpus]
    out = check_output(args.output, args.overwrite, inputs)
    needs_forget = args.method in ("wagle", "salun", "wanda")
    needs_retain = args.method == "wagle"
    kind = check_input_kinds(args.data, args.forget_split, args.retain_split, args.forget_corpus, args.retain_corpus)
    if kind == "corpus":
        retain_split = forget_split = None
        if needs_retain and args.retain_corpus is None:
            raise UnlearnError("--method wagle needs --retain-corpus with --forget-corpus")
    else:
        forget_split = args.forget_split or "forget10"
        retain_split = args.retain_split or matching_retain_split(forget_split)
        for split, needed in ((forget_split, needs_forget), (retain_split, needs_retain)):
            if needed:
                check_split(split, args.data)  # before torch is imported
    # the cheap checks are done: now the library (torch, transformers)
    import torch
    from torch.utils.data import DataLoader

    from llm_unlearn.data.corpus import chunk_corpus, load_corpus
    from llm_unlearn.data.qa import QACollator, tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.masks import check_ratio, compute_mask
    from llm_unlearn.models import is_adapter_dir, load_model, load_tokenizer, resolve_model_path
    from llm_unlearn.outputs import staged_file
    from llm_unlearn.threads import apply_thread_policy

    check_ratio(args.ratio)
    path = resolve_model_path(args.model)
    if kind == "corpus":
        forget_rows = load_corpus(args.forget_corpus) if needs_forget else None
        retain_rows = load_corpus(args.retain_corpus) if needs_retain else None
    else:
        forget_rows = load_tofu(forget_split, args.data) if needs_forget else None
        retain_rows = load_tofu(retain_split, args.data) if needs_retain else None
    if retain_rows is not None and args.max_retain is not None:
        retain_rows = retain_rows.select(range(min(len(retain_rows), args.max_retain)))

    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=args.dtype)
    apply_thread_policy(model)
    if Path(path).is_dir() and is_adapter_dir(path):
        model = model.merge_and_unload()  # the mask is over the weights unlearning starts from
    if torch.cuda.is_available():
        model.to("cuda")
    collate = QACollator(tokenizer)

    def loader(rows):
        if rows is None:
            return None
        if kind == "corpus":
            tok, _ = chunk_corpus(rows, tokenizer, max_length=args.max_length)
        else:
            tok, _ = tokenize_qa_dataset(rows, tokenizer, max_length=args.max_length)
        return DataLoader(tok.select_columns(["input_ids", "attention_mask", "labels"]),
                          batch_size=args.batch_size, collate_fn=collate)

    mask = compute_mask(model, loader(forget_rows), loader(retain_rows), method=args.method, ratio=args.ratio,
                        scope=args.scope, target_modules=args.target_modules, gamma=args.gamma, seed=args.seed,
                        granularity=args.granularity)
    if kind == "corpus":
        mask.meta.update({"model": str(args.model), "forget_corpus": str(args.forget_corpus),
                          "retain_corpus": str(args.retain_corpus) if needs_retain else None})
    else:
        mask.meta.update({"model": str(args.model), "data": str(args.data), "forget_split": forget_split,
                          "retain_split": retain_split if needs_retain else None})
    with staged_file(out, args.overwrite, inputs) as tmp:
        mask.save(tmp)
    print(mask.summary(max_rows=40))
    print(f"saved mask to {out}")
    return 0
