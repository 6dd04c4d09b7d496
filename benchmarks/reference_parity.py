"""Reference parity: our TOFU evaluation against open-unlearning's own, item by item (not a test:
prints a table, writes benchmarks/results/reference_parity.json).

The fixture ``shared/data/tofu/reference_logs/open-unlearning_smollm2`` holds open-unlearning's
``TOFU_EVAL.json`` / ``TOFU_SUMMARY.json`` for SmolLM2-135M-Instruct (as `llm-unlearn models fetch
smollm2-135m-instruct` writes it) on the first 40 forget10 items, with a prompt equal to our
native one (its README). This script

1. evaluates the same model on the same items (``--protocol``, default native; generation batch
   32 as the fixture), and compares per item: answer loss, paraphrased and perturbed losses,
   truth ratio, ROUGE-L recall where the generations are equal;
2. scores the fixture's ``TOFU_EVAL.json`` with `compute_summary` (what ``llm-unlearn score``
   prints) and compares with its ``TOFU_SUMMARY.json``.

Targets (issue 17): per-item answer loss and truth ratio within 5e-4; ROUGE-L recall equal
wherever the generations are equal; the summary reproduced to 4 digits.

    flock /tmp/heavy.lock python benchmarks/reference_parity.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_DATA, RESULTS, fmt_table, machine_info  # noqa: E402

DATA = Path(os.environ.get("LLM_UNLEARN_TOFU_DATA") or DEFAULT_DATA)
FIXTURE_NAME = "reference_logs/open-unlearning_smollm2"
N_ITEMS = 40
TOL = 5e-4


def evaluate_fixture_items(model_spec: str, data: Path, protocol: str, n_items: int = N_ITEMS,
                           generation_batch_size: int = 32):
    """Our per-item logs (`EvalLogs`) of `model_spec` on the first `n_items` forget10 items."""
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval.evaluator import evaluate_items
    from llm_unlearn.eval.logs import ITEMS_FORMAT, logs_from_items
    from llm_unlearn.models import load_model, load_tokenizer, resolve_model_path

    model = load_model(model_spec, dtype="float32")
    tok = load_tokenizer(resolve_model_path(model_spec))
    rows = load_tofu("forget10_perturbed", data, max_items=n_items).to_list()
    items = evaluate_items(model, tok, {"forget": rows}, batch_size=8, max_new_tokens=200, progress=False,
                           generation_batch_size=generation_batch_size, protocol=protocol)
    return logs_from_items({"format": ITEMS_FORMAT, "forget_split": "forget10", "protocol": {"name": protocol},
                            "splits": {"forget": {"source_split": "forget10_perturbed", "items": items["forget"]}}})


def score_fixture(fixture: Path) -> dict:
    """(our aggregates of TOFU_EVAL.json, TOFU_SUMMARY.json, max relative difference)."""
    from llm_unlearn.eval.logs import compute_summary, read_logs

    m = compute_summary(read_logs(fixture / "TOFU_EVAL.json"))["metrics"]
    ref = json.loads((fixture / "TOFU_SUMMARY.json").read_text())
    ours = {"forget_Q_A_Prob": m["forget_probability"], "forget_Q_A_ROUGE": m["forget_rougeL_recall"],
            "forget_truth_ratio": m["forget_truth_ratio"]}
    rows = {k: {"ours": ours[k], "reference": ref[k], "equal_4_digits": f"{ours[k]:.4g}" == f"{ref[k]:.4g}"}
            for k in ref}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(DATA), help="TOFU copy (default ../shared/data/tofu or $LLM_UNLEARN_TOFU_DATA)")
    ap.add_argument("--fixture", default=None, help=f"default: DATA/{FIXTURE_NAME}")
    ap.add_argument("--protocol", default="native")
    ap.add_argument("--out", default=str(RESULTS / "reference_parity.json"))
    args = ap.parse_args(argv)
    from llm_unlearn.eval.logs import read_logs
    from llm_unlearn.eval.parity import compare_split

    fixture = Path(args.fixture) if args.fixture else Path(args.data) / FIXTURE_NAME
    if not (fixture / "TOFU_EVAL.json").is_file():
        print(f"error: no fixture at {fixture}", file=sys.stderr)
        return 2
    t0 = time.time()
    ours = evaluate_fixture_items(args.model, Path(args.data), args.protocol)
    ref = read_logs(fixture / "TOFU_EVAL.json")
    cmp = compare_split(ours, ref, "forget")
    eval_s = time.time() - t0
    summary = score_fixture(fixture)

    rows = []
    for key in ("answer_loss", "paraphrased_loss", "perturbed_loss", "truth_ratio", "probability"):
        d = cmp[key]
        rows.append([key, d["n"], f"{d['max_abs']:.2e}", f"{d['mean_abs']:.2e}"])
    print(fmt_table(["per item (forget, 40)", "n", "max |Δ|", "mean |Δ|"], rows))
    print(f"generations equal: {cmp['generations_equal']}/{cmp['n_items']}; ROUGE-L recall equal where equal: "
          f"{cmp['rouge_equal_where_generations_equal']} (max |Δ| {cmp['rouge_max_abs_where_equal']})")
    print(fmt_table(["TOFU_SUMMARY.json", "ours (score)", "reference", "4 digits"],
                    [[k, f"{v['ours']:.6f}", f"{v['reference']:.6f}", v["equal_4_digits"]] for k, v in summary.items()]))

    targets = [
        {"target": "per-item answer loss max |Δ| vs open-unlearning", "limit": TOL,
         "measured": cmp["answer_loss"]["max_abs"], "pass": cmp["answer_loss"]["max_abs"] <= TOL},
        {"target": "per-item truth ratio max |Δ| vs open-unlearning", "limit": TOL,
         "measured": cmp["truth_ratio"]["max_abs"], "pass": cmp["truth_ratio"]["max_abs"] <= TOL},
        {"target": "ROUGE-L recall equal wherever generations are equal", "limit": 0.0,
         "measured": cmp["rouge_max_abs_where_equal"],
         "pass": bool(cmp["rouge_equal_where_generations_equal"]),
         "generations_equal": f"{cmp['generations_equal']}/{cmp['n_items']}"},
        {"target": "score on TOFU_EVAL.json reproduces TOFU_SUMMARY.json to 4 digits", "limit": "4 significant digits",
         "measured": {k: v["ours"] for k, v in summary.items()}, "pass": all(v["equal_4_digits"] for v in summary.values())},
    ]
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['measured']}")
    result = {
        "benchmark": "reference_parity", "machine": machine_info(),
        "command": "python benchmarks/reference_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"model": args.model, "protocol": args.protocol, "fixture": str(fixture), "items": N_ITEMS,
                     "dtype": "float32", "generation_batch_size": 32, "max_new_tokens": 200},
        "per_item": cmp, "summary": summary, "eval_seconds": round(eval_s, 1), "targets": targets,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
