"""`llm-unlearn finetune`: the target (split full) or retain (split retainXX) model."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_unlearn.cli.common import add_overwrite_flag
from llm_unlearn.data.protocol import add_protocol_argument


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", default="tiny", help="tiny, smollm2, a directory, a Hub id or a .gguf file")
    p.add_argument("--data", required=True, help="local directory or Hub dataset name (locuslab/TOFU)")
    p.add_argument("--split", default="full", help="full for the target model, retainXX for the retain model")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (scale alpha/r)")
    p.add_argument("--load-in-4bit", action="store_true", help="QLoRA: quantise the base to 4 bit")
    p.add_argument("--epochs", type=float, default=None, help="epochs (default 5; 15 for tiny)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-5; 3e-3 for tiny)")
    p.add_argument("--batch-size", type=int, default=8, help="per-device batch size")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, default=256,
                   help="max tokens per QA item (longer items are truncated and counted, never dropped)")
    p.add_argument("--max-authors", type=int, default=None,
                   help="only the first N authors of the split (QA per author from the source's meta.json, else 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, about a third more compute")
    add_protocol_argument(p)
    p.add_argument("--threads", default="auto",
                   help="torch threads: auto (one for models under 10 M parameters unless OMP_NUM_THREADS is set), "
                        "keep, or a number")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue an interrupted run (Ctrl-C saves a checkpoint) from CHECKPOINT, or the last one")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.checks import check_positive
    from llm_unlearn.data.source import check_split
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.outputs import check_output, staging_path

    tiny = args.model == "tiny"
    for flag, value in (("--batch-size", args.batch_size), ("--grad-accum", args.grad_accum),
                        ("--max-length", args.max_length), ("--lora-r", args.lora_r), ("--max-authors", args.max_authors)):
        if value is not None and value < 1:
            raise UnlearnError(f"{flag} must be >= 1, got {value}")
    check_positive("--epochs", args.epochs)
    check_positive("--lr", args.lr)
    if args.load_in_4bit and not args.lora:
        raise UnlearnError("--load-in-4bit (QLoRA) needs --lora: a 4-bit base cannot be trained directly")
    if args.threads not in ("auto", "keep") and not str(args.threads).isdigit():
        raise UnlearnError(f"--threads must be auto, keep or a number, got {args.threads!r}")
    check_split(args.split, args.data)  # validate before --overwrite deletes anything (and before torch)
    inputs = [None if tiny else args.model, args.data]
    check_output(args.output, args.overwrite, inputs)
    # the cheap checks are done: now the library (torch, transformers, trl)
    from llm_unlearn.finetune import FinetuneConfig, finetune
    from llm_unlearn.interrupt import announce_interrupts
    from llm_unlearn.models import resolve_model_path
    from llm_unlearn.outputs import staged_dir

    if not tiny:
        resolve_model_path(args.model)
    resume = _resume_point(args.resume, staging_path(args.output))
    cfg = FinetuneConfig(
        model=args.model, data=args.data, split=args.split, output=args.output, lora=args.lora,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, load_in_4bit=args.load_in_4bit,
        epochs=args.epochs if args.epochs is not None else (15.0 if tiny else 5.0),
        lr=args.lr if args.lr is not None else (3e-3 if tiny else 1e-5),
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length,
        max_authors=args.max_authors, seed=args.seed, activation_checkpointing=args.activation_checkpointing,
        protocol=args.protocol,
        threads=args.threads,
    )
    announce_interrupts()
    with staged_dir(args.output, args.overwrite, inputs, resume=resume is not None) as stage:
        cfg.output = str(stage.path)
        finetune(cfg, resume_from_checkpoint=resume)
    print(f"saved finetuned model to {stage.final}")
    return 0


def _resume_point(resume, staging) -> str | None:
    """The checkpoint `--resume` names, checked before any work."""
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.interrupt import last_checkpoint

    if resume is None:
        return None
    if resume is True:
        found = last_checkpoint(Path(staging) / "checkpoints")
        if found is None:
            raise UnlearnError(f"--resume: no checkpoint of an interrupted run ({Path(staging) / 'checkpoints'} "
                               "has none); run without --resume")
        return found
    if not (Path(resume) / "trainer_state.json").is_file():
        raise UnlearnError(f"--resume {resume}: not a checkpoint directory (no trainer_state.json)")
    return str(resume)
