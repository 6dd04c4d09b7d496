"""`llm-unlearn demo`: the main job on the embedded default (see llm_unlearn.demo)."""

from __future__ import annotations

import argparse

from llm_unlearn.cli.common import add_overwrite_flag


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + ": synthetic authors -> target and retain "
                       "models -> GradDiff, NPO, NPO+WAGLE over LoRA -> S3T deletion of one author -> "
                       "evaluation -> report.")
    p.add_argument("--output", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--model", default="tiny", help="tiny (default, offline, minutes) or smollm2 (after `models fetch`)")
    p.add_argument("--data", default=None, help="a local TOFU-layout directory instead of synthetic data")
    p.add_argument("--authors", type=int, default=20, help="fictitious authors (synthetic) or first N authors (--data)")
    p.add_argument("--qa-per-author", type=int, default=10, help="QA pairs per synthetic author")
    p.add_argument("--small", action="store_true", help="CI size: 10 authors, fewer epochs")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.demo import DemoConfig, run_demo
    from llm_unlearn.interrupt import announce_interrupts

    announce_interrupts(False)  # the demo's console is its bars and table (an earlier command may have set it)

    # threads: finetune and run_unlearning apply llm_unlearn.threads.apply_thread_policy (one thread for
    # the 1 M-parameter tiny model: the default demo takes 130 s on one thread of a 2-core machine)
    cfg = DemoConfig(output=args.output, model=args.model, data=args.data, authors=args.authors,
                     qa_per_author=args.qa_per_author, small=args.small, seed=args.seed)
    run_demo(cfg, overwrite=args.overwrite)
    return 0
