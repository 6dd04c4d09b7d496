"""Does HFQ rank the frontier's runs like true FQ once every run is read against the same holdout
items? Not a test; prints a table, writes ``benchmarks/results/hfq_holdout_sets.json``.

The frontier's pooled Spearman(HFQ, true FQ) mixed two holdout sets: the target, the retain model
and the untuned rows were evaluated with ``holdoutXX`` (80 items), the tuned rows' final evaluation
with the first 80 items of ``holdout_all`` (other authors). Here every run whose weights are still
in the frontier's cache is scored (scoring only, no generation) on both sets, and the own-model HFQ
(holdout under the evaluated model) and the anchored HFQ (holdout under the target) are recomputed
on each set and on their union, against each run's logged forget truth ratios and true FQ.

    python benchmarks/hfq_holdout_sets.py --runs ~/.cache/llm_unlearn/frontier/runs_a8f15893c9 \\
        --data ~/.cache/llm_unlearn/frontier/data_20authors_forget20 --forget-split forget20

Scoring is resumable: ``--scores FILE`` keeps each run's holdout truth ratios as they are computed
(~4 min per SmolLM2 run on one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, fmt_table, machine_info  # noqa: E402


def model_path(runs: Path, run: str) -> Path | None:
    """The weights of a frontier row: a tuned row's chosen adapter, else the model its run.json names."""
    if (runs / run / "chosen" / "adapter_config.json").is_file() or (runs / run / "chosen" / "config.json").is_file():
        return runs / run / "chosen"
    info = runs / run / "run.json"
    if info.is_file():
        d = json.loads(info.read_text()).get("model_dir")
        if d and Path(d).is_dir():
            return Path(d)
    return None


def eval_logs(runs: Path, run: str) -> Path:
    d = runs / run / "eval" / "per_item.json"
    return d if d.is_file() else runs / run / "chosen" / "eval" / "per_item.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the frontier's runs directory (runs_<hash>)")
    p.add_argument("--data", required=True, help="the frontier's data subset (with holdoutXX and holdout_all)")
    p.add_argument("--forget-split", default="forget20")
    p.add_argument("--tuned-items", type=int, default=80, help="holdout_all items the tuned rows were evaluated on")
    p.add_argument("--scores", default=None, help="JSON cache of each run's holdout truth ratios (resumable)")
    p.add_argument("--out", default=str(RESULTS / "hfq_holdout_sets.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval import metrics as M
    from llm_unlearn.eval.evaluator import score_splits
    from llm_unlearn.eval.loading import load_for_eval
    from llm_unlearn.eval.logs import read_logs, split_truth_ratios

    runs, t0 = Path(args.runs).expanduser(), time.time()
    hold_split = args.forget_split.replace("forget", "holdout", 1)
    sets = {hold_split: load_tofu(hold_split, args.data).to_list(),
            f"holdout_all[:{args.tuned_items}]": load_tofu("holdout_all", args.data).to_list()[:args.tuned_items]}
    rows = [r for rs in sets.values() for r in rs]
    cache = Path(args.scores) if args.scores else None
    scores = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    names = sorted(d.name for d in runs.iterdir() if eval_logs(runs, d.name).is_file())
    skipped = []
    for run in names:
        if run in scores:
            continue
        path = model_path(runs, run)
        if path is None:
            skipped.append(run)
            continue
        t = time.time()
        model, tok = load_for_eval(str(path))
        scores[run] = {"questions": [r["question"] for r in rows],
                       "ratios": score_splits(model, tok, {"holdout": rows})["truth_ratios"]["holdout"]}
        if cache:
            cache.write_text(json.dumps(scores))
        print(f"scored {run} in {time.time() - t:.0f} s", flush=True)
        del model

    def ratios(run: str, keep: set[str] | None) -> list[float]:
        s = scores[run]
        return [v for q, v in zip(s["questions"], s["ratios"]) if keep is None or q in keep]

    keep = {name: {r["question"] for r in rs} for name, rs in sets.items()}
    keep["both"] = None
    ref = split_truth_ratios(read_logs(eval_logs(runs, "retain")).splits["forget"])
    table = []
    for run in sorted(scores):
        forget = split_truth_ratios(read_logs(eval_logs(runs, run)).splits["forget"])
        row = {"run": run, "forget_quality": M.forget_quality(forget, ref)["pvalue"]}
        for name, k in keep.items():
            row[f"own {name}"] = M.holdout_forget_quality(forget, ratios(run, k))["pvalue"]
            row[f"anchored {name}"] = M.holdout_forget_quality(forget, ratios("target", k))["pvalue"]
        table.append(row)
    evaluated = [r for r in table if r["run"] != "retain"]
    cols = [c for c in table[0] if c not in ("run", "forget_quality")]
    spearman = {c: M.spearman([r[c] for r in evaluated], [r["forget_quality"] for r in evaluated]) for c in cols}
    header = ["Run", "True FQ", *cols]
    print(fmt_table(header, [[r["run"], r["forget_quality"], *[r[c] for c in cols]] for r in table]))
    print(f"\nSpearman(HFQ, true FQ) over {len(evaluated)} runs (the retain model's row excluded):")
    for c, v in spearman.items():
        print(f"  {c:32s} {v:.3f}")
    if skipped:
        print(f"not scored (no weights in the cache): {', '.join(skipped)}")
    own = {c: v for c, v in spearman.items() if c.startswith("own")}
    result = {
        "benchmark": "hfq_holdout_sets", "machine": machine_info(), "command": " ".join(sys.argv),
        "settings": {"runs": str(runs), "data": args.data, "forget_split": args.forget_split,
                     "holdout_sets": {k: len(v) for k, v in sets.items()}},
        "rows": table, "spearman": spearman, "n": len(evaluated), "not_scored": skipped,
        "total_s": round(time.time() - t0, 1),
        "targets": [{"target": f"own-model HFQ ranks runs like true FQ on one common holdout set ({c[4:]}): "
                               "Spearman >= 0.8", "limit": 0.8, "measured": v, "n": len(evaluated), "pass": v >= 0.8}
                    for c, v in own.items()],
    }
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
