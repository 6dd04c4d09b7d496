"""`llm-unlearn score`: every TOFU aggregate from existing per-item logs (ours, open-unlearning's
TOFU_EVAL.json or TOFU's legacy eval_log*.json), without running a model."""

from __future__ import annotations

import argparse


def register(sub, name: str, help_text: str) -> None:
    from llm_unlearn.data.protocol import add_allow_mixed_argument

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--logs", required=True, help="per-item logs of the model (file or directory, any supported format)")
    p.add_argument("--retain-logs", default=None, help="per-item logs of the retain model (forget quality, privleak)")
    p.add_argument("--output", default=None, help="also write the summary as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_allow_mixed_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.cli.common import write_json
    from llm_unlearn.eval.logs import (
        SUMMARY_FORMAT,
        compute_summary,
        forgetting_note,
        format_value,
        read_logs,
        retain_free_note,
    )
    from llm_unlearn.outputs import check_output, staged_file

    out = check_output(args.output, args.overwrite, [args.logs, args.retain_logs]) if args.output else None
    logs = read_logs(args.logs)
    retain = read_logs(args.retain_logs) if args.retain_logs else None
    summary = {"format": SUMMARY_FORMAT, **compute_summary(logs, retain, args.allow_mixed_protocols)}
    print(f"logs: {logs.path} ({logs.fmt}, protocol {logs.protocol}); items: "
          + ", ".join(f"{k} {n}" for k, n in summary["n_items"].items()))
    if retain is not None:
        print(f"retain logs: {retain.path} ({retain.fmt}, protocol {retain.protocol})")
        if summary.get("mixed_protocols"):
            print(f"note: mixed protocols (--allow-mixed-protocols): {summary['mixed_protocols']}")
    m = summary["metrics"]
    n_forget = summary["n_items"].get("forget")
    for key, value in m.items():
        reason = summary["not_available"].get(key) if value is None else (retain_free_note(key) or None)
        if key == "forget_quality_floor" and value is not None:
            n_ret = summary["retain_logs"]["n_forget_items"] if summary["retain_logs"] else n_forget
            reason = f"smallest p-value reachable with {n_forget} vs {n_ret} items"
        print(f"{key:36s} {format_value(value, key)}" + (f"  ({reason})" if reason else ""))
        if key == "holdout_forget_quality" and summary.get("forgetting_direction"):
            print(f"{'':36s} {forgetting_note(summary['forgetting_direction'])}")
    if m["forget_quality"] is not None and m["forget_quality"] <= m["forget_quality_floor"] * (1 + 1e-9):
        print("note: forget quality is at the floor (complete separation): a bound, not a measurement")
    if out is not None:
        with staged_file(out, args.overwrite, [args.logs, args.retain_logs]) as tmp:
            write_json(tmp, summary)
        print(f"wrote {out}")
    return 0
