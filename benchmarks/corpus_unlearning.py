"""Corpus unlearning on the synthetic technical domain (issue 19): the WMDP setting, offline.

A model (default SmolLM2-135M-Instruct) is finetuned on the fictitious domain corpus plus the
general-facts corpus (`llm_unlearn.data.domain`), then unlearned on the domain corpus with RMU,
NPO and NPO + WAGLE (general corpus retained). Each model is scored with lm-eval-harness on the
domain 4-choice questions (should fall to chance) and the general ones (should stay), and with
MUSE verbatim memorisation (ROUGE-L F1 of continuations of domain-document prefixes).

Targets: the finetuned model is at least 10 points above chance on the domain (a precondition:
otherwise there is nothing to unlearn); the best method brings domain MCQ accuracy to within 5
points of chance while general MCQ accuracy drops by less than 2 points (anchor: RMU on Zephyr-7b, WMDP-cyber 28.2 vs chance 25,
MMLU -1.0). Hyperparameters are the methods' defaults / the flags below, fixed before the run;
nothing is selected on the scores reported. The `tuned-*` rows (``--methods tuned-npo,...``) are
chosen by `llm-unlearn tune` on the corpora, retain-free: the corpus forget quality (Min-K% scores
of forget vs holdout-corpus documents) under a retain-NLL floor; the MCQ scores are never seen by
the search. Finetuned models are cached (``--cache``), so further methods reuse them.

    flock /tmp/heavy.lock python benchmarks/corpus_unlearning.py                       # SmolLM2, seeds 0 1 2
    python benchmarks/corpus_unlearning.py --seeds 1 --tag s1 &   # seeds side by side, then:
    python benchmarks/corpus_unlearning.py --merge results/corpus_unlearning_s0.json ... --tag smollm2
    python benchmarks/corpus_unlearning.py --model tiny --devices 8 --seeds 0 --tag tiny   # minutes, CPU
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import RESULTS, fmt_table, machine_info, md_table  # noqa: E402

from llm_unlearn.data.domain import generate_domain, write_domain  # noqa: E402
from llm_unlearn.eval.lm_eval_tasks import run_lm_eval  # noqa: E402
from llm_unlearn.eval.memorisation import corpus_memorisation  # noqa: E402
from llm_unlearn.finetune import finetune_on_corpus  # noqa: E402
from llm_unlearn.unlearn import run_unlearning  # noqa: E402

TASKS = "synth_domain,synth_general"
# settings that do not change a run's rows: runs differing only in these pool with --merge
RUN_ONLY_SETTINGS = ("seeds", "tag", "merge", "cache", "finetune_only", "methods", "work")  # methods: seeds may run different rows


def load(spec: str, domain_dir: Path):
    from llm_unlearn.models import build_tiny_model, load_model, load_tokenizer, train_tiny_tokenizer

    if spec == "tiny":
        texts = [json.loads(line)["text"] for name in ("forget_corpus", "retain_corpus")
                 for line in (domain_dir / f"{name}.jsonl").read_text().splitlines()]
        tok = train_tiny_tokenizer(texts, vocab_size=1024)
        return build_tiny_model(tok, seed=0), tok
    return load_model(spec, dtype="float32"), load_tokenizer(spec)


def score(model, tok, domain_dir: Path, args) -> dict:
    t0 = time.time()
    mcq = run_lm_eval(model, tok, TASKS, include=domain_dir / "tasks", batch_size=args.eval_batch_size)
    texts = [json.loads(line)["text"] for line in (domain_dir / "forget_corpus.jsonl").read_text().splitlines()]
    mem = corpus_memorisation(model, tok, texts, prefix_tokens=args.mem_prefix,
                              continuation_tokens=args.mem_continuation, batch_size=args.eval_batch_size)
    return {"domain_acc": mcq["synth_domain"]["acc"], "domain_stderr": mcq["synth_domain"]["acc_stderr"],
            "domain_chance": mcq["synth_domain"]["chance"], "general_acc": mcq["synth_general"]["acc"],
            "general_stderr": mcq["synth_general"]["acc_stderr"], "verbmem": mem["mean"],
            "eval_s": round(time.time() - t0, 1)}


def method_runs(args) -> dict[str, dict]:
    common = {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "max_length": args.max_length,
              "logging_steps": max(1, args.steps // 5), "seed": 0}
    return {
        "rmu": {"method": "rmu", "overrides": {**common, "learning_rate": args.rmu_lr,
                                              "steering_coeff": args.rmu_c, "alpha": args.rmu_alpha}},
        "npo": {"method": "npo", "overrides": {**common, "learning_rate": args.npo_lr}},
        "npo+wagle": {"method": "npo", "overrides": {**common, "learning_rate": args.npo_lr},
                      "mask_method": "wagle", "mask_ratio": args.mask_ratio},
    }


def save(model, tok, out: Path) -> Path:
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def finetuned(seed: int, args, domain_dir: Path):
    """(model, tokenizer, [base row, finetuned row]): the model finetuned on the seed's domain, from
    `--cache` when a run with the same settings saved it, else finetuned (and saved) here."""
    key_settings = {"model": args.model, "devices": args.devices, "seed": seed, "ft_epochs": args.ft_epochs,
                    "ft_lr": args.ft_lr, "batch_size": args.batch_size, "max_length": args.max_length,
                    "mem_prefix": args.mem_prefix, "mem_continuation": args.mem_continuation,
                    "domain_sha256": hashlib.sha256((domain_dir / "forget_corpus.jsonl").read_bytes()
                                                    + (domain_dir / "domain_mcq.jsonl").read_bytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(key_settings, sort_keys=True).encode()).hexdigest()[:10]
    cached = Path(args.cache) / f"finetuned_{key}" if args.cache else None
    if cached is not None and (cached / "rows.json").is_file():
        from llm_unlearn.models import load_model, load_tokenizer

        print(f"reusing the finetuned model {cached}", flush=True)
        return load_model(str(cached), dtype="float32"), load_tokenizer(str(cached)), \
            json.loads((cached / "rows.json").read_text()), cached
    torch.manual_seed(seed)
    model, tok = load(args.model, domain_dir)
    rows = [{"seed": seed, "model": "base", **score(model, tok, domain_dir, args)}]
    t0 = time.time()
    finetune_on_corpus(model, tok, [domain_dir / "forget_corpus.jsonl", domain_dir / "retain_corpus.jsonl"],
                       epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.batch_size, max_length=args.max_length,
                       seed=seed)
    rows.append({"seed": seed, "model": "finetuned", "train_s": round(time.time() - t0, 1),
                 **score(model, tok, domain_dir, args)})
    print(fmt_table(["seed", "model", "domain", "general", "verbmem"],
                    [[seed, r["model"], r["domain_acc"], r["general_acc"], r["verbmem"]] for r in rows]), flush=True)
    if cached is not None:
        tmp = cached.with_name(cached.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        save(model, tok, tmp)
        (tmp / "settings.json").write_text(json.dumps(key_settings, indent=1) + "\n")
        (tmp / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)  # complete or absent
    return model, tok, rows, cached


# tuned rows: name -> (llm_unlearn method, masks searched), tuned by `llm_unlearn.tune` on the corpora,
# retain-free: the corpus HFQ (Min-K% scores, forget vs holdout documents) under a retain-NLL floor
TUNED: dict[str, tuple[str, str]] = {"tuned-npo": ("npo", "none"), "tuned-npo+wagle": ("npo", "wagle"),
                                     "tuned-simnpo": ("simnpo", "none"), "tuned-graddiff": ("grad_diff", "none"),
                                     "tuned-rmu": ("rmu", "none")}


def tuned_row(name: str, seed: int, model_dir: Path, domain_dir: Path, args, work: Path) -> dict:
    """`llm-unlearn tune` on the finetuned model (the MCQ scores reported here are never seen by the
    search), then the chosen run scored like every other row."""
    from llm_unlearn.tune import TuneConfig, resume_mismatch, tune
    from llm_unlearn.unlearn import load_target

    method, masks = TUNED[name]
    cfg = TuneConfig(model=str(model_dir), output=str(work / f"{name}_{seed}"), method=method,
                     forget_corpus=str(domain_dir / "forget_corpus.jsonl"),
                     retain_corpus=str(domain_dir / "retain_corpus.jsonl"),
                     holdout_corpus=str(domain_dir / "holdout_corpus.jsonl"), trials=args.tune_trials,
                     max_steps=args.steps, eval_every=args.tune_every, masks=masks,
                     # RMU trains the MLP down-projections of three layers directly (WMDP), not an adapter
                     modes="full" if method == "rmu" else args.tune_modes,
                     **({"lr_rmu": tuple(args.tune_lr_rmu)} if args.tune_lr_rmu else {}),
                     **({"patience": args.tune_patience} if args.tune_patience is not None else {}),
                     **({"patience_warmup": args.tune_patience_warmup} if args.tune_patience_warmup is not None else {}),
                     **({"score_items": args.tune_score_items} if args.tune_score_items is not None else {}),
                     **({"hfq_level": args.tune_hfq_level} if args.tune_hfq_level is not None else {}),
                     batch_size=args.batch_size, max_length=args.max_length, seed=seed, progress=True)
    t0 = time.time()
    # with --work, a search stopped part-way (a session's end) with the same settings resumes
    summary = tune(cfg, overwrite=True, resume=resume_mismatch(cfg) == [])
    chosen, tok = load_target(summary["chosen_dir"])
    params = summary["chosen"]["params"]
    row = {"seed": seed, "model": name, "train_s": round(time.time() - t0, 1), "steps": summary["chosen"]["best_step"],
           "tuned": {"params": params, "hfq": summary["chosen"].get("hfq"),
                     "utility_ratio": summary["chosen"].get("utility_ratio"), "trials": summary["trials"]},
           **score(chosen, tok, domain_dir, args)}
    print(fmt_table(["seed", "model", "domain", "general", "verbmem", "chosen"],
                    [[seed, name, row["domain_acc"], row["general_acc"], row["verbmem"],
                      f"{params.get('mode')} lr {params.get('learning_rate', 0):.2g} step {row['steps']}"]]), flush=True)
    del chosen
    return row


def run_seed(seed: int, args, work: Path) -> list[dict]:
    domain_dir = write_domain(generate_domain(args.devices, seed=seed, documents=args.documents,
                                              mentions=args.mentions), work / f"domain_{seed}")
    model, tok, rows, model_dir = finetuned(seed, args, domain_dir)
    if args.finetune_only:
        return rows
    target_state = copy.deepcopy(model.state_dict())
    for name in [m for m in args.methods if m in TUNED]:
        if model_dir is None:  # the tuner loads the finetuned model from disk
            model_dir = save(model, tok, work / f"finetuned_{seed}")
        rows.append(tuned_row(name, seed, model_dir, domain_dir, args, work))
    for name, spec in method_runs(args).items():
        if name not in args.methods:
            continue
        model.load_state_dict(target_state)
        t0 = time.time()
        _, manifest = run_unlearning(
            model, None, work / f"{name}_{seed}", spec["method"], tokenizer=tok,
            forget_corpus=domain_dir / "forget_corpus.jsonl", retain_corpus=domain_dir / "retain_corpus.jsonl",
            overrides={**spec["overrides"], "seed": seed}, mask_method=spec.get("mask_method"),
            mask_ratio=spec.get("mask_ratio"), overwrite=True)
        rows.append({"seed": seed, "model": name, "train_s": round(time.time() - t0, 1),
                     "steps": manifest["steps"], **score(model, tok, domain_dir, args)})
        print(fmt_table(["seed", "model", "domain", "general", "verbmem"],
                        [[seed, name, rows[-1]["domain_acc"], rows[-1]["general_acc"], rows[-1]["verbmem"]]]),
              flush=True)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Mean over seeds: the finetuned model >= 10 points above chance on the domain (precondition);
    per method, domain acc - chance <= 0.05 and general drop vs the same seed's finetuned model < 0.02
    (the best method's). Only a method run on every seed that has a finetuned model can be the best:
    a mean over fewer seeds is not compared with one over more."""
    import statistics

    by_seed = {(r["seed"], r["model"]): r for r in rows}

    def gap_by_seed(model):  # domain accuracy above chance
        return {s: round(r["domain_acc"] - r["domain_chance"], 4) for (s, m), r in sorted(by_seed.items()) if m == model}

    def drop_by_seed(model):  # general accuracy lost against the seed's finetuned model
        return {s: round(by_seed[(s, "finetuned")]["general_acc"] - r["general_acc"], 4)
                for (s, m), r in sorted(by_seed.items()) if m == model and (s, "finetuned") in by_seed}

    ft_seeds = {s for (s, m) in by_seed if m == "finetuned"}
    out = []
    # a precondition: unlearning targets mean nothing if the finetuned model never learnt the domain
    if ft_seeds:
        known = statistics.fmean(gap_by_seed("finetuned").values())
        out.append({"target": "finetuned model knows the domain: domain MCQ accuracy at least 10 points above chance "
                              "(else the unlearning targets below are vacuous)",
                    "limit": 0.10, "measured": round(known, 4), "pass": known >= 0.10,
                    "per_seed": gap_by_seed("finetuned")})
    methods = [m for m in dict.fromkeys(r["model"] for r in rows) if m not in ("base", "finetuned")]
    best = None
    for m in methods:
        drops = drop_by_seed(m)
        if not ft_seeds or set(drops) != ft_seeds:
            continue  # not run on every seed
        gap, drop = statistics.fmean(gap_by_seed(m).values()), statistics.fmean(drops.values())
        ok = gap <= 0.05 and drop < 0.02
        if best is None or (ok, -gap) > (best[1], -best[2]):
            best = (m, ok, gap, drop)
    if best is not None:
        m, ok, gap, drop = best
        out.append({"target": f"best method ({m}): domain MCQ accuracy within 5 points of chance",
                    "limit": 0.05, "measured": round(gap, 4), "pass": gap <= 0.05,
                    "per_seed": gap_by_seed(m)})
        out.append({"target": f"best method ({m}): general MCQ accuracy drop vs finetuned < 2 points",
                    "limit": 0.02, "measured": round(drop, 4), "pass": drop < 0.02,
                    "per_seed": drop_by_seed(m)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model spec (smollm2, a directory) or tiny")
    p.add_argument("--devices", type=int, default=24, help="devices of the synthetic domain (6 facts each)")
    p.add_argument("--documents", type=int, default=4,
                   help="documents per device, each in its own sentence order (4 with --mentions 1: the augmentation "
                        "under which a finetuned model answers questions on the facts; see README)")
    p.add_argument("--mentions", type=int, default=1, help="times each document states each fact")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", default="rmu,npo,npo+wagle",
                   help="comma list of rmu, npo, npo+wagle (fixed settings below) and tuned-npo, tuned-npo+wagle, "
                        "tuned-simnpo, tuned-graddiff, tuned-rmu (llm-unlearn tune on the corpora, retain-free; RMU with the "
                        "adaptive steering coefficient, full weights)")
    p.add_argument("--ft-epochs", type=float, default=10)
    p.add_argument("--ft-lr", type=float, default=2e-4,
                   help="finetuning lr (2e-4 with 4 documents per device: the finetuned model answers 92 %% on an "
                        "8-device probe; the session-11 run at 5e-5 with one document per device stayed +10 points "
                        "above chance)")
    p.add_argument("--steps", type=int, default=50, help="unlearning steps per method")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--npo-lr", type=float, default=1e-5, help="NPO lr (WAGLE's WMDP setting)")
    p.add_argument("--mask-ratio", type=float, default=0.6, help="WAGLE mask ratio (WAGLE's NPO setting)")
    p.add_argument("--tune-trials", type=int, default=4, help="trials per tuned row (tuned-npo, ...)")
    p.add_argument("--tune-every", type=int, default=10, help="tuned rows: score every k steps (--steps is the budget)")
    p.add_argument("--tune-patience", type=int, default=None,
                   help="tuned rows: stop a trial after this many scorings without a better step (default: "
                        "llm-unlearn tune's 2; with --tune-every 5 that is 10 steps, less than RMU needs to move)")
    p.add_argument("--tune-patience-warmup", type=float, default=None,
                   help="tuned rows: patience never stops a trial before this fraction of its steps (default: "
                        "llm-unlearn tune's 0.5; the smollm2v4 runs predate it and ran with 0)")
    p.add_argument("--tune-score-items", type=int, default=None,
                   help="tuned rows: forget and holdout documents the search scores its HFQ on (default: llm-unlearn "
                        "tune's 40; the chosen run is scored on all of them afterwards)")
    p.add_argument("--tune-lr-rmu", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="tuned-rmu: the learning-rate range searched (default: llm-unlearn tune's --lr-rmu); "
                        "WMDP's 5e-5 is clipped into it for the default trial")
    p.add_argument("--tune-modes", default="lora,full", help="tuned rows: the modes searched")
    p.add_argument("--tune-hfq-level", type=float, default=None,
                   help="tuned rows: llm-unlearn tune --hfq-level (default 1: the step with the highest HFQ; below "
                        "1: the step that forgets most among those whose HFQ reaches the level)")
    p.add_argument("--work", default=None,
                   help="keep the domain data and runs here (default: a temporary directory); a tuned row stopped "
                        "part-way resumes from it")
    p.add_argument("--rmu-lr", type=float, default=5e-5)
    p.add_argument("--rmu-c", type=float, default=6.5, help="RMU steering coefficient")
    p.add_argument("--rmu-alpha", type=float, default=1200.0)
    p.add_argument("--mem-prefix", type=int, default=32)
    p.add_argument("--mem-continuation", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default=None, help="suffix of the results file")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "llm_unlearn" / "corpus"),
                   help="finetuned models, keyed by every setting that shapes them, reused by later runs "
                        "('' to cache nothing)")
    p.add_argument("--finetune-only", action="store_true",
                   help="finetune (or reuse) and score the base and finetuned models, then stop")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="run nothing: pool the rows of these results files (e.g. one per seed, run in parallel) "
                        "and recompute the targets over all their seeds")
    args = p.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in args.methods if m not in (*method_runs(args), *TUNED)]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join([*method_runs(args), *TUNED])}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows: list[dict] = []
    sources = None
    settings = {k: v for k, v in vars(args).items() if k != "merge"}
    if args.merge:
        sources, methods = [], []
        shared: dict[str, dict] = {}  # "run": what shapes every row; "tune": what shapes the tuned rows
        for f in args.merge:
            try:
                d = json.loads(f.read_text())
                rows += d["rows"]
                own = {k: v for k, v in d["settings"].items() if k not in RUN_ONLY_SETTINGS}
                parts = {"run": {k: v for k, v in own.items() if not k.startswith("tune_")}}
                if any(m in TUNED for m in d["settings"].get("methods", [])):  # else the tuner shaped nothing
                    parts["tune"] = {k: v for k, v in own.items() if k.startswith("tune_")}
            except (OSError, ValueError, KeyError) as e:
                print(f"error: {f}: not a corpus_unlearning results file ({e})", file=sys.stderr)
                return 2
            for part, values in parts.items():
                ref = shared.setdefault(part, values)
                if values != ref:
                    diff = sorted(k for k in set(ref) | set(values) if ref.get(k) != values.get(k))
                    print(f"error: {f}: settings differ from an earlier file's ({', '.join(diff)}); "
                          "only runs of one configuration pool", file=sys.stderr)
                    return 2
            methods += [m for m in d["settings"].get("methods", []) if m not in methods]
            sources.append({"file": str(f), "command": d.get("command"), "wall_s": d.get("wall_s")})
        seen: dict = {}
        for r in rows:
            key = (r["seed"], r["model"])
            if key in seen and not (r["model"] in ("base", "finetuned") and r == seen[key]):
                print(f"error: --merge: seed {r['seed']} {r['model']} appears in more than one file", file=sys.stderr)
                return 2
            seen.setdefault(key, r)
        rows = list(seen.values())  # a seed's base and finetuned rows once (runs on one cached model repeat them)
        settings = {**shared["run"], **shared.get("tune", {}), "seeds": sorted({r["seed"] for r in rows}), "methods": methods, "tag": args.tag}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work) if args.work else Path(tmp)
            for seed in args.seeds:
                rows += run_seed(seed, args, work)
    header = ["seed", "model", "domain acc", "chance", "general acc", "verbmem ROUGE-L"]
    table = [[r["seed"], r["model"], r["domain_acc"], r["domain_chance"], r["general_acc"], r["verbmem"]] for r in rows]
    print(fmt_table(header, table))
    tg = targets(rows)
    for t in tg:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: measured {t['measured']} (limit {t['limit']}; "
              f"per seed {t.get('per_seed')})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"corpus_unlearning{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "benchmark": "corpus_unlearning", "machine": machine_info(), "command": " ".join(sys.argv),
        "settings": settings,
        "merged_from": sources, "rows": rows, "targets": tg, "markdown": md_table(header, table),
        "wall_s": round(time.time() - t0, 1)}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
