"""`llm-unlearn report`: Markdown + self-contained HTML report with plots from run directories
(RUN_DIR/run.json and RUN_DIR/eval/summary.json + per_item.json; see llm_unlearn.eval.report)."""

from __future__ import annotations

import argparse


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.cli.common import add_overwrite_flag

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with eval/summary.json)")
    p.add_argument("--output", required=True, help="output directory (report.md, report.html, PNG plots)")
    p.add_argument("--title", default="llm-unlearn TOFU report", help="report title")
    add_overwrite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.eval.report import build_report, load_run
    from llm_unlearn.outputs import check_output, staged_dir

    check_output(args.output, args.overwrite, args.runs)  # never a run directory it reads
    for d in args.runs:
        load_run(d)  # validate before creating the output
    with staged_dir(args.output, args.overwrite, args.runs) as stage:
        build_report(args.runs, stage.path, title=args.title)
    paths = {"markdown": stage.final / "report.md", "html": stage.final / "report.html"}
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0
