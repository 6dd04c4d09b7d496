"""`llm-unlearn tune`: search an unlearning method's hyperparameters and stopping step by the holdout
forget quality under a utility constraint, without a retain model (calls `llm_unlearn.tune.tune`)."""

from __future__ import annotations

import argparse
import dataclasses

from llm_unlearn.cli.common import add_overwrite_flag
from llm_unlearn.data.protocol import add_protocol_argument

_SKIP = {"progress", "protocol"}


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.tune_config import TuneConfig

    p = sub.add_parser(name, help=help_text, description=(
        help_text + ". Each trial is scored every --eval-every steps (holdout forget quality, utility proxy; no "
        "generation) and keeps its best step; never reads a retain model (--retain-logs only for the final report). "
        "QA data (--data, --forget-split) or corpora (--forget-corpus, --retain-corpus, --holdout-corpus: forget "
        "quality = KS p-value of per-window Min-K% scores, forget vs holdout windows; utility = token probability "
        "on held-out retain documents)."))
    for f in dataclasses.fields(TuneConfig):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=help_)
        elif isinstance(f.default, bool):
            if f.default:
                p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help="do not: " + help_)
            else:
                p.add_argument(flag, action="store_true", help=help_)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), default=f.default,
                           help=f"{help_} (default {f.default[0]:g} {f.default[1]:g})")
        elif f.name in ("beta_range", "alpha_range"):
            p.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), default=None, help=help_)
        elif f.default is None:
            typ = int if f.name in ("max_authors", "max_length") or "items" in f.name else str
            p.add_argument(flag, type=typ, default=None, help=help_)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=f"{help_} (default {f.default})")
    add_protocol_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --output (killed, or given a larger --trials): its finished "
                        "trials count, an interrupted trial runs again with the same parameters; the search "
                        "settings must be the same (a new search starts if --output holds none)")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.tune import RANGE_FIELDS, TuneConfig, tune

    names = {f.name for f in dataclasses.fields(TuneConfig)} - _SKIP
    cfg = TuneConfig(**{n: getattr(args, n) for n in names}, progress=not args.quiet, protocol=args.protocol)
    for name in RANGE_FIELDS:  # argparse gives lists
        if getattr(cfg, name) is not None:
            setattr(cfg, name, tuple(getattr(cfg, name)))
    summary = tune(cfg, overwrite=args.overwrite, resume=args.resume)
    print(f"wrote {summary['chosen_dir']} (the chosen run), trials.json, trials.png and tune.json to {cfg.output}")
    return 0
