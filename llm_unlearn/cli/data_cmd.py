"""`llm-unlearn data synth|show`."""

from __future__ import annotations

import argparse
import json

from llm_unlearn.cli.common import add_overwrite_flag


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="write synthetic fictitious-author splits (TOFU schema) as JSONL")
    s.add_argument("--authors", type=int, default=20, help="number of fictitious authors in `full`")
    s.add_argument("--qa-per-author", type=int, default=20, help="QA pairs per author (max 45)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    s.add_argument("--domain-devices", type=int, default=24,
                   help="devices of the fictitious technical domain written to OUT/domain (corpora, 4-choice "
                        "questions with balanced choices: a multiple of 4 makes chance exactly 25%%, lm-eval task "
                        "configs; as many more devices in the holdout corpus); 0: none")
    s.add_argument("--domain-documents", type=int, default=1,
                   help="documents per domain device, each in its own sentence order (4: the augmentation under "
                        "which a finetuned model answers questions on the facts, not only continues the text)")
    s.add_argument("--out", required=True, help="output directory")
    add_overwrite_flag(s)
    s.set_defaults(func=run_synth)
    sh = dsub.add_parser("show", help="print the splits of a source and their sizes")
    sh.add_argument("--data", required=True, help="local directory or Hub dataset name")
    sh.add_argument("--split", default=None, help="print the first rows of this split")
    sh.set_defaults(func=run_show)


def run_synth(args: argparse.Namespace) -> int:
    from llm_unlearn.data.synthetic import generate, write_splits
    from llm_unlearn.errors import UnlearnError

    try:
        splits = generate(args.authors, args.qa_per_author, args.seed)
    except ValueError as exc:
        raise UnlearnError(str(exc)) from None
    domain = None
    if args.domain_devices:
        from llm_unlearn.data.domain import generate_domain, write_domain

        try:  # before anything is written
            domain = generate_domain(args.domain_devices, seed=args.seed, documents=args.domain_documents,
                                     mentions=2 if args.domain_documents == 1 else 1)
        except ValueError as exc:
            flag = "--domain-documents" if args.domain_documents < 1 else "--domain-devices"
            raise UnlearnError(f"{flag}: {exc}") from None
    from llm_unlearn.outputs import staged_dir

    with staged_dir(args.out, args.overwrite, flag="--out") as stage:
        write_splits(splits, stage.path)
    out = stage.final
    for name, rows in splits.items():
        print(f"{name:24s} {len(rows):6d}")
    if domain is not None:
        write_domain(domain, out / "domain")  # in place: its task configs name the data files by absolute path
        for name, rows in domain.items():
            print(f"{'domain/' + name:24s} {len(rows):6d}")
        print(f"lm-eval task configs in {out / 'domain' / 'tasks'} (synth_domain, synth_general)")
    print(f"wrote {len(splits)} splits to {out}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from llm_unlearn.data.source import available_splits, check_source, is_local_source, read_split

    check_source(args.data)
    if is_local_source(args.data):  # no datasets / torch needed
        if args.split:
            rows = read_split(args.split, args.data)
            for row in rows[:3]:
                print(json.dumps(row, ensure_ascii=False))
            print(f"{args.split}: {len(rows)} rows")
            return 0
        for name in available_splits(args.data):
            print(f"{name:24s} {len(read_split(name, args.data)):6d}")
        return 0
    from llm_unlearn.data.tofu import load_tofu  # a Hub dataset

    if args.split:
        ds = load_tofu(args.split, args.data)
        for row in ds.select(range(min(3, len(ds)))):
            print(json.dumps(row, ensure_ascii=False))
        print(f"{args.split}: {len(ds)} rows")
        return 0
    import datasets

    for name in datasets.get_dataset_config_names(args.data):
        print(f"{name:24s} {len(load_tofu(name, args.data)):6d}")
    return 0
