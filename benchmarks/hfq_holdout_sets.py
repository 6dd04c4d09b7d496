"""Does HFQ rank the frontier's runs like true FQ, and how much does that depend on which holdout
items it reads? Not a test; prints tables, writes ``benchmarks/results/hfq_holdout_sets.json``.

The frontier's pooled Spearman(HFQ, true FQ) mixed two holdout sets of four whole authors each (the
target, the retain model and the untuned rows read ``holdoutXX``, the last four authors outside the
subset; the tuned rows' final evaluation the first 80 items of ``holdout_all``, the first four).
Here every run whose weights are still in the frontier's cache is scored (scoring only, no
generation) on all of ``holdout_all`` (400 items, 20 authors), and its own-model HFQ (holdout under
the evaluated model) and anchored HFQ (holdout under the target) are recomputed, against its logged
forget truth ratios and true FQ, on: each block of four consecutive authors (how `--max-authors`
drew its holdout before session 25), the product's draw now (as many items spread over every
author, `llm_unlearn.data.tofu.spread_over_authors`), all 400 items, and ``--draws`` random sets of
each kind (four random authors; four random items from every author) for the spread.

    python benchmarks/hfq_holdout_sets.py --runs ~/.cache/llm_unlearn/frontier/runs_a8f15893c9 \\
        --data ~/.cache/llm_unlearn/frontier/data_20authors_forget20 --forget-split forget20 --scores FILE

Scoring is resumable: ``--scores`` keeps each run's holdout truth ratios as they are computed (~6 min
per SmolLM2 run and 240 items on one thread); ``--shard K/N --score-only`` splits the runs over
processes, ``--report-only`` then reads every cache file.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, fmt_table, machine_info  # noqa: E402

from llm_unlearn.data.tofu import spread_over_authors  # noqa: E402
from llm_unlearn.eval.evaluator import holdout_size  # noqa: E402


def model_path(runs: Path, run: str) -> Path | None:
    """The weights of a frontier row: a tuned row's chosen adapter, a grid row's own (LoRA) directory,
    else the model its run.json names."""
    for d in (runs / run / "chosen", runs / run):
        if (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
            return d
    info = runs / run / "run.json"
    if info.is_file():
        d = json.loads(info.read_text()).get("model_dir")
        if d and Path(d).is_dir():
            return Path(d)
    return None


def eval_logs(runs: Path, run: str) -> Path:
    d = runs / run / "eval" / "per_item.json"
    return d if d.is_file() else runs / run / "chosen" / "eval" / "per_item.json"


def merge_scores(caches: list[dict]) -> dict:
    """One cache from several (processes side by side): per run, the union of the scored questions."""
    out: dict[str, dict] = {}
    for cache in caches:
        for run, s in cache.items():
            have = out.setdefault(run, {"questions": [], "ratios": []})
            seen = set(have["questions"])
            for q, v in zip(s["questions"], s["ratios"]):
                if q not in seen:
                    have["questions"].append(q)
                    have["ratios"].append(v)
                    seen.add(q)
    return out


def by_author(every: list[dict], per_author: int) -> list[list[dict]]:
    """`every` (whole authors of `per_author` consecutive items) as one list per author."""
    return [every[i:i + per_author] for i in range(0, len(every), per_author)]


def author_sets(every: list[dict], per_author: int, block: int = 4) -> dict[str, list[dict]]:
    """Holdout sets drawn from `every` (whole authors of `per_author` consecutive items each): each run
    of `block` consecutive authors (how the product drew its holdout before session 25: the last
    such block), as many items spread over every author (`spread_over_authors`), the evaluation's
    draw now (`holdout_size` of the block's item count, spread), and all of them."""
    groups = by_author(every, per_author)
    n = block * per_author
    sets = {f"authors {a + 1}-{min(a + block, len(groups))}": [r for g in groups[a:a + block] for r in g]
            for a in range(0, len(groups), block)}
    sets[f"spread {n}"] = spread_over_authors(groups, n)
    m = holdout_size(n)  # what `eval` now reads against n forget items
    if m < len(every):
        sets[f"spread {m}"] = spread_over_authors(groups, m)
    sets[f"all {len(every)}"] = list(every)
    return sets


def random_draws(every: list[dict], per_author: int, block: int, draws: int, sizes: list[int], seed: int = 0
                 ) -> dict[str, list[set[str]]]:
    """`draws` random holdout sets of each kind, as question sets: `block` whole authors; as many
    items spread over every author (the same number from each, at random positions); and, for each
    of `sizes`, the product's draw (`spread_over_authors`: every kind of question equally often)
    with the authors in a random order, so each author gets another rotation of positions."""
    rng = random.Random(seed)
    groups = by_author(every, per_author)
    k = max(1, block * per_author // len(groups))

    def balanced(n: int) -> set[str]:
        return {r["question"] for r in spread_over_authors(rng.sample(groups, len(groups)), n)}

    out = {"random authors": [{r["question"] for g in rng.sample(groups, block) for r in g} for _ in range(draws)],
           "random spread": [{r["question"] for g in groups for r in rng.sample(g, min(k, len(g)))}
                             for _ in range(draws)]}
    for n in sizes:
        out[f"random balanced spread {n}"] = [balanced(n) for _ in range(draws)]
    return out


def earlier_rows(path: str | None, table: list[dict], columns: list[str]) -> tuple[list[dict], dict[str, float]]:
    """The rows of an earlier report (`path`) for runs `table` does not hold, each marked with its
    source, and, for the runs in both, the largest relative difference over `columns` (a rebuilt
    target or retain model should read as it did)."""
    if not path:
        return [], {}
    mine = {r["run"]: r for r in table}
    old = json.loads(Path(path).read_text())["rows"]
    missing = [c for c in columns if any(c not in r for r in old)]
    if missing:
        raise ValueError(f"{path}: rows without {missing[0]!r} (another holdout layout)")
    agreement = {r["run"]: max(abs(r[c] - mine[r["run"]][c]) / max(abs(r[c]), 1e-300) for c in columns)
                 for r in old if r["run"] in mine}
    return [{**r, "from": path} for r in old if r["run"] not in mine], agreement


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="the frontier's runs directory (runs_<hash>)")
    p.add_argument("--data", required=True, help="the frontier's data subset (with holdoutXX and holdout_all)")
    p.add_argument("--forget-split", default="forget20")
    p.add_argument("--block", type=int, default=4, help="authors per contiguous holdout block (80 items on TOFU)")
    p.add_argument("--draws", type=int, default=200, help="random holdout sets of each kind, for the spread")
    p.add_argument("--scores", nargs="+", default=None,
                   help="JSON caches of each run's holdout truth ratios: all are read, the first is written (resumable)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="score only every N-th run from the K-th (several processes side by side, each with its own "
                        "first --scores file); the report then reads all the files")
    p.add_argument("--score-only", action="store_true", help="score the runs, write the cache, print no report")
    p.add_argument("--report-only", action="store_true", help="score nothing: report the runs the caches hold in full")
    p.add_argument("--per-author", type=int, default=20, help="items per author in holdout_all (TOFU: 20)")
    p.add_argument("--with-rows", default=None, metavar="JSON",
                   help="an earlier report of this benchmark on the same data: its rows (each run's HFQ on every "
                        "fixed holdout set) join this one's for the runs scored here no longer (weights gone), so the "
                        "fixed sets' Spearman covers both; runs in both are compared (the largest difference is "
                        "reported); the random draws need every run's per-item scores, so none are drawn and the report "
                        "keeps the earlier one's draws target")
    p.add_argument("--same-as", nargs="+", default=[], metavar="RUN=OTHER",
                   help="a run whose weights are OTHER's (a tuned search that restored its start: the target), "
                        "whose cache entry is gone: its row is OTHER's, under its own name")
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
    every = load_tofu("holdout_all", args.data).to_list()
    sets = author_sets(every, args.per_author, args.block)
    caches = [Path(f) for f in args.scores or []]
    scores = merge_scores([json.loads(f.read_text()) for f in caches if f.is_file()])
    names = sorted(d.name for d in runs.iterdir() if eval_logs(runs, d.name).is_file())
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        names = names[k::n]
    skipped = []
    for run in [] if args.report_only else names:
        have = set(scores.get(run, {}).get("questions", []))
        todo = [r for r in every if r["question"] not in have]
        if not todo:
            continue
        path = model_path(runs, run)
        if path is None:
            skipped.append(run)
            continue
        t = time.time()
        model, tok = load_for_eval(str(path))
        new = score_splits(model, tok, {"holdout": todo})["truth_ratios"]["holdout"]
        old = scores.get(run, {"questions": [], "ratios": []})
        scores[run] = {"questions": old["questions"] + [r["question"] for r in todo], "ratios": old["ratios"] + new}
        if caches:
            caches[0].write_text(json.dumps(scores))
        print(f"scored {len(todo)} holdout items of {run} in {time.time() - t:.0f} s", flush=True)
        del model
    if args.score_only:
        return 0

    def ratios(run: str, keep: set[str]) -> list[float]:
        s = scores[run]
        return [v for q, v in zip(s["questions"], s["ratios"]) if q in keep]

    keep = {name: {r["question"] for r in rs} for name, rs in sets.items()}
    ref = split_truth_ratios(read_logs(eval_logs(runs, "retain")).splits["forget"])
    complete = sorted(r for r in scores if keep[f"all {len(every)}"] <= set(scores[r]["questions"]))
    forget = {r: split_truth_ratios(read_logs(eval_logs(runs, r)).splits["forget"]) for r in complete}
    fq = {r: M.forget_quality(forget[r], ref)["pvalue"] for r in complete}
    evaluated = [r for r in complete if r != "retain"]  # the retain model's FQ is 1 by definition

    def hfq(run: str, k: set[str], anchored: bool) -> float:
        return M.holdout_forget_quality(forget[run], ratios("target" if anchored else run, k))["pvalue"]

    def rank(k: set[str], anchored: bool) -> float:
        return M.spearman([hfq(r, k, anchored) for r in evaluated], [fq[r] for r in evaluated])

    table = [{"run": r, "forget_quality": fq[r],
              **{f"{kind} {name}": hfq(r, k, kind == "anchored") for name, k in keep.items()
                 for kind in ("own", "anchored")}} for r in complete]
    columns = [f"{kind} {name}" for name in keep for kind in ("own", "anchored")]
    try:
        earlier, agreement = earlier_rows(args.with_rows, table, ["forget_quality", *columns])
    except (OSError, ValueError, KeyError) as exc:  # KeyError: a JSON without rows
        print(f"error: --with-rows {args.with_rows}: {exc}", file=sys.stderr)
        return 2
    table += earlier
    for spec in args.same_as:
        run, _, other = spec.partition("=")
        src = next((r for r in table if r["run"] == other), None)
        if src is None or not run:
            print(f"error: --same-as {spec}: no row {other!r} to copy", file=sys.stderr)
            return 2
        table.append({**src, "run": run, "same_as": other})
    pooled = [r for r in table if r["run"] != "retain"]
    spearman = {c: M.spearman([r[c] for r in pooled], [r["forget_quality"] for r in pooled]) for c in columns}
    sizes = sorted(n for n in {40, 80, 120, 160, 200, holdout_size(args.block * args.per_author), 320} if n < len(every))
    # the draws need every run's per-item scores: with --with-rows they stay the earlier report's
    draws = {} if args.with_rows else random_draws(every, args.per_author, args.block, args.draws, sizes)
    spread = {}
    for name, ks in draws.items():
        for kind in ("own", "anchored"):
            v = sorted(rank(k, kind == "anchored") for k in ks)
            spread[f"{kind} {name}"] = {"median": statistics.median(v), "p10": v[len(v) // 10],
                                        "p90": v[(9 * len(v)) // 10], "min": v[0], "max": v[-1],
                                        "share >= 0.8": sum(x >= 0.8 for x in v) / len(v), "draws": len(v)}
    big = f"all {len(every)}"
    pick = f"spread {min(holdout_size(args.block * args.per_author), len(every))}"
    pick = pick if pick in keep else big
    blocks = [n for n in keep if n.startswith("authors ")]
    show = [f"own {pick}", f"anchored {pick}", f"own {big}", f"anchored {big}"]
    print(fmt_table(["Run", "True FQ", *show, "own, 4-author blocks (min-max)"],
                    [[r["run"], r["forget_quality"], *[r[c] for c in show],
                      f"{min(r['own ' + b] for b in blocks):.3g}-{max(r['own ' + b] for b in blocks):.3g}"]
                     for r in table]))
    if args.with_rows:
        print(f"\n{len(earlier)} runs from {args.with_rows} (not scored here); runs in both: "
              + (", ".join(f"{r} (largest relative difference {d:.2g})" for r, d in agreement.items()) or "none"))
    print(f"\nSpearman(HFQ, true FQ) over {len(pooled)} runs (the retain model's row excluded):")
    print(fmt_table(["Holdout set", "Items", "own-model HFQ", "anchored HFQ"],
                    [[n, len(keep[n]), spearman[f"own {n}"], spearman[f"anchored {n}"]] for n in keep]))
    if args.with_rows:
        print(f"\nrandom holdout sets: not drawn (they need per-item scores); see {args.with_rows}")
    else:
        print(f"\n{args.draws} random holdout sets of each kind (Spearman, own-model / anchored):")
        print(fmt_table(["Kind", "Reference", "median", "10th pct", "90th pct", "min", "share >= 0.8"],
                        [[n.split(" ", 1)[1], n.split(" ", 1)[0], d["median"], d["p10"], d["p90"], d["min"],
                          d["share >= 0.8"]] for n, d in spread.items()]))
    if skipped or len(complete) < len(scores):
        print("not scored (no weights in the cache, or scoring unfinished): "
              + ", ".join(sorted(set(skipped) | (set(scores) - set(complete)))))
    if args.with_rows:  # the earlier report's draws target, over its own runs
        old_targets = json.loads(Path(args.with_rows).read_text()).get("targets", [])
        draws_target = next(({**t, "from": args.with_rows} for t in old_targets if "random draws" in t["target"]), None)
    else:
        p10 = spread.get(f"own random balanced spread {pick.split()[1]}", {}).get("p10")  # none when pick is all items
        draws_target = {"target": f"... and on 90 % of random draws of that size (10th percentile of {args.draws})",
                        "limit": 0.8, "measured": p10, "n": len(evaluated), "pass": p10 is not None and p10 >= 0.8}
    result = {
        "benchmark": "hfq_holdout_sets", "machine": machine_info(), "command": " ".join(sys.argv),
        "settings": {"runs": str(runs), "data": args.data, "forget_split": args.forget_split, "block": args.block,
                     "draws": args.draws, "holdout_sets": {k: len(v) for k, v in keep.items()}},
        "rows": table, "spearman": spearman, "random_draws": spread, "n": len(pooled), "n_scored": len(evaluated),
        "with_rows": args.with_rows, "agreement_with_earlier": agreement,
        "not_scored": sorted(set(skipped) | (set(scores) - set(complete))),
        "total_s": round(time.time() - t0, 1),
        "targets": [{"target": f"own-model HFQ ranks runs like true FQ on the evaluation's holdout draw ({pick}): "
                               "Spearman >= 0.8", "limit": 0.8, "measured": spearman[f"own {pick}"],
                     "n": len(pooled), "pass": spearman[f"own {pick}"] >= 0.8},
                    *([draws_target] if draws_target else [])],
    }
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
