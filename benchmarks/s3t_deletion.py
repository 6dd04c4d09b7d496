"""S3T deletion benchmark (Chowdhury et al., 2024): not a test, prints tables, writes JSON.

1. latency  – one deletion through the ledger (mark, truncate, switch serving) vs retraining the
              affected shard from scratch (all its sequences × stages). Target: ≥ 1000× faster.
2. stream   – random stream of single-sample deletions: how many are served before the first
              retrain, S3T (B sequences) vs SISA (B = 1) on the same shards and slices (real
              ledger, checkpoints faked: this measures the deletion logic, not training).
3. tofu     – delete a whole fictitious author (TOFU-schema data: the forget split) from an S3T
              model, retrain what has to be retrained, and evaluate forget quality against an S3T
              model trained without that author (the retain model) and model utility.

    PYTHONPATH=. python benchmarks/s3t_deletion.py --sections latency,stream,tofu
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _data(tmp: Path, authors: int, qa: int) -> Path:
    from llm_unlearn.data.synthetic import generate, write_splits

    return write_splits(generate(authors, qa, seed=0), tmp / "data")


def _cfg(data: Path, out: Path, split: str, args, **kw):
    from llm_unlearn.s3t.train import S3TConfig

    base = dict(model="tiny", data=str(data), split=split, output=str(out), shards=args.shards, slices=args.slices,
                sequences=args.sequences, epochs_per_stage=args.epochs, lr=1e-2, batch_size=8, seed=0)
    base.update(kw)
    return S3TConfig(**base)


def bench_latency(tmp: Path, data: Path, args) -> dict:
    import shutil

    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.train import train_s3t

    out = tmp / "lat_run"
    out.mkdir()
    t0 = time.perf_counter()
    train_s3t(_cfg(data, out, "full", args))
    train_all = time.perf_counter() - t0
    ledger = DeletionLedger.open(out)
    ids = ledger.sample_ids()
    rng = random.Random(0)
    cold = []  # a fresh process-like ledger object per deletion (what one CLI call pays)
    for _ in range(min(args.deletions, 10)):
        run = tmp / "lat_copy"
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(out, run)
        led = DeletionLedger.open(run)
        t = time.perf_counter()
        led.delete(ids=[rng.choice(ids)])
        cold.append(time.perf_counter() - t)
        led.close()
    run = tmp / "lat_warm"
    shutil.copytree(out, run)
    led = DeletionLedger.open(run)
    led.status()  # open the connection, as a long-running service has
    lat = []  # a stream of distinct deletions through one warm ledger (a service)
    for victim in rng.sample(ids, min(args.deletions, len(ids))):
        t = time.perf_counter()
        led.delete(ids=[victim])
        lat.append(time.perf_counter() - t)
    # retrain the affected shard from scratch: force shard 0 to need a retrain, time the retrain
    run = tmp / "lat_retrain"
    shutil.copytree(out, run)
    led = DeletionLedger.open(run)
    firsts = {order[0] for order in led.sequence_orders(0).values()}
    led.delete(ids=[led.sample_ids(shard=0, slices=[k])[0] for k in firsts])
    from llm_unlearn.s3t.service import retrain

    t = time.perf_counter()
    retrain(run, [0])
    retrain_s = time.perf_counter() - t
    med = statistics.median(lat)
    return {"train_all_s": train_all, "deletion_median_s": med, "deletion_p95_s": sorted(lat)[int(0.95 * len(lat)) - 1],
            "deletion_cold_median_s": statistics.median(cold), "retrain_shard_s": retrain_s,
            "speedup": retrain_s / med, "speedup_cold": retrain_s / statistics.median(cold), "deletions": len(lat)}


def _fake_run(tmp: Path, n: int, shards: int, slices: int, sequences: int, seed: int):
    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.plan import make_plan

    ids = [f"full:{i}" for i in range(n)]
    plan = make_plan(ids, shards, slices, sequences, num_layers=slices, method="cyclic", seed=seed)
    where = plan.slice_of()
    rows = [{"sample_id": s, "question": s, "answer": s, "shard": where[s][0], "slice": where[s][1]} for s in ids]
    tmp.mkdir(parents=True)
    ledger = DeletionLedger.create(tmp, rows, plan.sequences, {"package_version": "bench"})
    for s in range(shards):
        for b, order in enumerate(plan.sequences[s]):
            for k in range(1, slices + 1):
                used = [x for sl in order[:k] for x in plan.shards[s][sl]]
                ledger.record_stage(s, b, k, 0, order[:k], "fake", "0" * 64, "0" * 64, used, seed=0)
        ledger.publish(s)
    return ledger, ids


def bench_stream(tmp: Path, args) -> dict:
    out = {}
    for label, B in (("SISA (B=1)", 1), (f"S3T (B={args.stream_sequences})", args.stream_sequences)):
        served = []
        for trial in range(args.trials):
            ledger, ids = _fake_run(tmp / f"stream_{B}_{trial}", args.stream_items, args.stream_shards,
                                    args.stream_slices, B, seed=trial)
            order = ids[:]
            random.Random(1000 + trial).shuffle(order)
            count = 0
            for sid in order:
                if ledger.delete(ids=[sid]).retrain_shards:
                    break
                count += 1
            served.append(count)
        out[label] = {"mean": statistics.mean(served), "median": statistics.median(served), "runs": served}
    return out


def bench_tofu(tmp: Path, data: Path, args) -> dict:
    from llm_unlearn.data.tofu import load_tofu, matching_retain_split
    from llm_unlearn.eval.evaluator import evaluate_model
    from llm_unlearn.eval.logs import logs_from_items
    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.serve import load_s3t_model
    from llm_unlearn.s3t.service import retrain
    from llm_unlearn.s3t.train import train_s3t

    forget = load_tofu(args.forget_split, str(data))
    runs = {}
    for name, split in (("s3t", "full"), ("retain", matching_retain_split(args.forget_split))):
        out = tmp / f"tofu_{name}"
        out.mkdir()
        train_s3t(_cfg(data, out, split, args, epochs_per_stage=args.tofu_epochs, lr=2e-2))
        runs[name] = out

    def evaluate(run, retain_logs=None):
        model = load_s3t_model(run)
        return evaluate_model(model, model.tokenizer, str(data), forget_split=args.forget_split,
                              retain_logs=retain_logs, max_items=args.eval_items, batch_size=8,
                              max_new_tokens=args.max_new_tokens, progress=False, model_name=str(run))

    retain_eval = evaluate(runs["retain"])
    retain_logs = logs_from_items(retain_eval["per_item"])
    before = evaluate(runs["s3t"], retain_logs)["summary"]
    ledger = DeletionLedger.open(runs["s3t"])
    forget_q = {(r["question"], r["answer"]) for r in forget}
    victims = [r["sample_id"] for r in ledger.samples(ledger.sample_ids()) if (r["question"], r["answer"]) in forget_q]
    t = time.perf_counter()
    res = ledger.delete(ids=victims)
    delete_s = time.perf_counter() - t
    after_delete = evaluate(runs["s3t"], retain_logs)["summary"]
    t = time.perf_counter()
    retrained = retrain(runs["s3t"])
    retrain_s = time.perf_counter() - t
    after_retrain = evaluate(runs["s3t"], retain_logs)["summary"]
    pick = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio", "retain_rouge")

    def keep(summary):
        metrics = summary.get("metrics", {})
        return {k: metrics[k] for k in pick if k in metrics}

    return {"forget_split": args.forget_split, "author_items": len(victims), "delete_s": delete_s,
            "retrain_shards": res.retrain_shards, "retrained": retrained, "retrain_s": retrain_s,
            "before": keep(before), "after_delete": keep(after_delete), "after_retrain": keep(after_retrain),
            "retain_model": keep(retain_eval["summary"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="latency,stream,tofu")
    p.add_argument("--authors", type=int, default=10)
    p.add_argument("--qa-per-author", type=int, default=10)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--deletions", type=int, default=20)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--stream-items", type=int, default=400)
    p.add_argument("--stream-shards", type=int, default=4)
    p.add_argument("--stream-slices", type=int, default=4)
    p.add_argument("--stream-sequences", type=int, default=4)
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--tofu-epochs", type=float, default=3.0)
    p.add_argument("--eval-items", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    result = {"settings": vars(args)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = _data(tmp, args.authors, args.qa_per_author)
        if "latency" in sections:
            r = result["latency"] = bench_latency(tmp, data, args)
            print(f"\n== deletion latency (tiny, {args.shards} shards x {args.slices} slices x {args.sequences} seq)")
            print(f"{'deletion, warm ledger':>24} {r['deletion_median_s'] * 1e3:10.2f} ms (median)  p95 "
                  f"{r['deletion_p95_s'] * 1e3:.2f} ms")
            print(f"{'deletion, cold open':>24} {r['deletion_cold_median_s'] * 1e3:10.2f} ms (median)")
            print(f"{'retrain one shard':>24} {r['retrain_shard_s']:10.2f} s")
            print(f"{'speedup warm / cold':>24} {r['speedup']:10.0f} x / {r['speedup_cold']:.0f} x  (target >= 1000 x)")
        if "stream" in sections:
            r = result["stream"] = bench_stream(tmp, args)
            print(f"\n== deletions served before the first retrain ({args.stream_items} items, {args.stream_shards} "
                  f"shards x {args.stream_slices} slices, {args.trials} random streams)")
            for label, v in r.items():
                print(f"{label:>14}  mean {v['mean']:6.2f}  median {v['median']:5.1f}")
        if "tofu" in sections:
            r = result["tofu"] = bench_tofu(tmp, data, args)
            print(f"\n== delete a whole author ({r['author_items']} items of {args.forget_split}); "
                  f"delete {r['delete_s'] * 1e3:.1f} ms, retrained shards {r['retrained']} in {r['retrain_s']:.1f} s")
            for k in ("before", "after_delete", "after_retrain", "retain_model"):
                print(f"{k:>14}  " + "  ".join(f"{m}={v:.4g}" if isinstance(v, float) else f"{m}={v}"
                                               for m, v in r[k].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "s3t_deletion.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}  # keep sections not rerun
    merged.update(result)
    path.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
