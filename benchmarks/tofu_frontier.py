"""The forget-quality / model-utility frontier on real TOFU with SmolLM2-135M-Instruct: not a test;
writes ``benchmarks/results/tofu_frontier.{json,md,png}``.

1. Data: the first ``--authors`` fictitious authors of a local TOFU copy (default 20 → 400 QA),
   forget10 = the last 10 % of them (2 authors, 40 QA), written as a TOFU source of its own with
   forget10_perturbed / retain_perturbed / utility sets (`common.write_tofu_subset`).
2. Target (finetuned on ``full``) and retain (on ``retain90``) models, finetuned the same way
   (`llm_unlearn.finetune`), cached under ``--cache`` keyed by every setting and reused.
3. Grid: methods {GradDiff, NPO+RT, SimNPO} × masks {none, random, WAGLE} × {LoRA, full weights},
   every run with the same budget (``--epochs`` over the forget set, batch 4 forget + 4 retain,
   one learning rate per mode: ``--lr-full`` / ``--lr-lora``, no per-method tuning), through
   `llm_unlearn.unlearn.run_unlearning`. Each mask (ratio ``--mask-ratio``) is computed once on
   the target model and shared by all methods and both modes.
4. Every model is evaluated (`evaluate_model`, retain logs from the retain model: forget quality,
   model utility, ROUGE-L, probability, truth ratio); the table, the JSON (updated after every
   run, so an interrupted run leaves its partial results) and the FQ-vs-MU plot are written.
   Finished runs are reused when the script is run again with the same settings.

    python benchmarks/tofu_frontier.py --quick          # smoke configuration, a few minutes
    python benchmarks/tofu_frontier.py                  # the full grid (see README for the time)
    python benchmarks/tofu_frontier.py --methods npo --masks none,wagle --modes lora --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOLDOUT_ALL, RESULTS, default_data, forget_items, machine_info, md_table, write_tofu_subset  # noqa: E402

FORGET_SPLIT = "forget10"  # the default (--forget-split); inbwd_seeds.py runs on it
RETAIN_SPLIT = "retain90"
# name -> (llm_unlearn method, method hyperparameters); the same retain weight for all
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "graddiff": ("grad_diff", {"alpha": 1.0}),
    "npo_rt": ("npo", {"alpha": 1.0, "beta": 0.1}),
    "simnpo": ("simnpo", {"alpha": 1.0, "beta": 2.5, "delta": 0.0}),
}
PRE_ISSUE_17: dict[str, dict[str, Any]] = {"simnpo": {"gamma": 1.0}}
MASKS = ("none", "random", "wagle")
MODES = ("lora", "full")
# tuned rows: name -> (llm_unlearn method, masks searched); tuned by `llm_unlearn.tune` (retain-free)
TUNED: dict[str, tuple[str, str]] = {
    "npo_rt": ("npo", "none"),
    "npo_rt_wagle": ("npo", "wagle"),
    "simnpo": ("simnpo", "none"),
    "graddiff": ("grad_diff", "none"),
}
METRICS = ("forget_quality", "holdout_forget_quality", "model_utility", "forget_rougeL_recall", "forget_probability", "forget_truth_ratio",
           "retain_rougeL_recall", "retain_probability")


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _comparable(settings: dict) -> dict:
    """Settings as stored, without what does not change results (progress bars)."""
    out = json.loads(json.dumps(settings, default=str))
    if isinstance(out.get("overrides"), dict):
        out["overrides"].pop("disable_tqdm", None)
    return out


def _stamp_ok(run_dir: Path, settings: dict) -> bool:
    stamp = run_dir / "frontier_settings.json"
    return (stamp.is_file() and _comparable(json.loads(stamp.read_text())) == _comparable(settings)
            and (run_dir / "eval" / "summary.json").is_file())


def _write_stamp(run_dir: Path, settings: dict) -> None:
    (run_dir / "frontier_settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")


def _tag(run_dir: Path, **fields: Any) -> None:
    path = run_dir / "run.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def finetuned(role: str, data: Path, args, cache: Path, train: bool = True) -> tuple[Path, float]:
    """The target (``full``) or retain (``retain90``) model, finetuned or reused from `cache`.
    `train` False (a worker whose task is not ``ft:ROLE``): a model missing from the cache is an
    error, never finetuned here, since the ``ft:ROLE`` worker may be training into the same place."""
    from llm_unlearn.finetune import FinetuneConfig, finetune

    split = "full" if role == "target" else args.retain_split
    cfg = FinetuneConfig(model=args.model, data=str(data), split=split, output="", epochs=args.ft_epochs,
                         lr=args.ft_lr, batch_size=args.ft_batch_size, seed=args.seed, with_utility=False)
    settings = {k: v for k, v in vars(cfg).items() if k not in ("output", "data")}
    settings["data"] = json.loads((data / "SUBSET").read_text())
    settings["data"].pop(HOLDOUT_ALL, None)  # a holdout split never changes what a model is finetuned on
    if role == "target":  # `full` is the same items whatever the forget split: one target for all of them
        settings["data"]["forget_split"] = FORGET_SPLIT
    out = cache / f"{role}_{_key(settings)}"
    if (out / "run.json").is_file() and (out / "model.safetensors").is_file():
        print(f"reusing {role} model {out}", flush=True)
        return out, float(json.loads((out / "run.json").read_text()).get("finetune_s", 0.0))
    if not train:
        print(f"error: the {role} model is not in the cache ({out}): run its finetuning (ft:{role}) first",
              file=sys.stderr)
        raise SystemExit(2)
    if out.exists():
        shutil.rmtree(out)
    cfg.output = str(out)
    t0 = time.time()
    finetune(cfg)
    elapsed = time.time() - t0
    _tag(out, finetune_s=round(elapsed, 1), frontier_settings=settings)
    return out, elapsed


def mask_file(mask: str, target_dir: Path, data: Path, args, runs_dir: Path) -> tuple[Path, float]:
    """One mask per kind, computed once on the target model and shared by every method and mode
    (mask keys are base-model parameter names): WAGLE scores from the forget gradient and the
    retain gradient over as many retain items as forget items (the first ones)."""
    path = runs_dir / "masks" / f"{mask}_r{args.mask_ratio}.safetensors"
    timing = path.with_suffix(".json")
    if path.is_file() and timing.is_file():
        return path, json.loads(timing.read_text())["mask_s"]
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator, tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.masks import compute_mask
    from llm_unlearn.unlearn import load_target

    print(f"[{time.strftime('%H:%M:%S')}] computing the {mask} mask", flush=True)
    model, tok = load_target(str(target_dir))
    forget, _ = tokenize_qa_dataset(load_tofu(args.forget_split, data), tok, max_length=256)
    retain, _ = tokenize_qa_dataset(load_tofu(args.retain_split, data), tok, max_length=256)
    retain = retain.select(range(min(len(retain), len(forget))))
    cols = ["input_ids", "attention_mask", "labels"]

    def loader(ds):
        return DataLoader(ds.select_columns(cols), batch_size=args.batch_size, collate_fn=QACollator(tok))

    t0 = time.time()
    weight_mask = compute_mask(model, loader(forget), loader(retain), method=mask, ratio=args.mask_ratio,
                               seed=args.seed, progress=not args.no_progress)
    elapsed = time.time() - t0
    weight_mask.save(path)
    timing.write_text(json.dumps({"mask_s": round(elapsed, 1), "retain_items": len(retain)}) + "\n")
    return path, elapsed


def estimate_minutes(args, methods: list[str], masks: list[str], modes: list[str]) -> dict[str, Any] | None:
    """Time of this grid from the step times measured by `cost.py` (``results/cost.json``): each
    optimizer step, mask, evaluation and NLL scoring as measured there (same model, same items),
    scaled by the number of steps / items here. ``None`` without a cost.json."""
    path = RESULTS / "cost.json"
    if not path.is_file():
        return None
    cost = json.loads(path.read_text())
    rows = cost["rows"]

    def step_s(key: str) -> float | None:
        r = rows.get(key, {})
        return r["train_s"] / r["steps"] if r.get("steps") else None

    full_step = step_s("grad_diff/full/-")
    per_step = {("graddiff", "full"): full_step, ("graddiff", "lora"): step_s("grad_diff/lora/-"),
                ("npo_rt", "full"): step_s("npo/full/cached"), ("npo_rt", "lora"): step_s("npo/lora/adapter-disabled")}
    per_step[("simnpo", "full")], per_step[("simnpo", "lora")] = per_step[("graddiff", "full")], per_step[("graddiff", "lora")]
    if full_step is None or any(v is None for v in per_step.values()) or "eval_s" not in rows.get("eval", {}):
        return None
    n = args.authors * 20
    k = max(1, round(args.authors * 0.1)) * 20
    score_seq = rows.get("profile", {}).get("eval_score_s_per_sequence", 0.0)
    mask_s = rows.get("mask/wagle", {}).get("mask_s", 0.0) if "wagle" in masks else 0.0
    items_ratio = min(args.eval_items, 40) / max(cost["settings"]["items"], 1)

    def total(per_step: dict, full_step: float, eval_one: float) -> dict[str, float]:
        ft_steps = (math.ceil(n / args.ft_batch_size) + math.ceil((n - k) / args.ft_batch_size)) * args.ft_epochs
        # a finetuning step is batch 8 of one split; an unlearning step 4 forget + 4 retain: about the same
        finetune = ft_steps * full_step * args.ft_batch_size / (2 * args.batch_size)
        steps = math.ceil(k / args.batch_size) * args.epochs
        unlearn = sum(per_step[(m, mode)] * steps for m in methods for mode in modes for _ in masks)
        overhead = len(methods) * len(modes) * len(masks) * ((k + min(args.eval_items, n - k)) * 2 * score_seq + 15)
        evals = (2 + len(methods) * len(masks) * len(modes)) * eval_one * items_ratio
        parts = {"finetune_min": finetune, "unlearn_min": unlearn, "nll_scoring_and_io_min": overhead,
                 "masks_min": mask_s, "evaluations_min": evals}
        return {**{key: round(v / 60, 1) for key, v in parts.items()}, "total_min": round(sum(parts.values()) / 60, 1)}

    measured = total(per_step, full_step, rows["eval"]["eval_s"])
    # the same grid if the cost targets held (NPO 2.9 s / GradDiff 2.5 s per step, eval 110 s)
    # (LoRA steps keep their measured ratio to the full-weight step of the same method)
    at_target = {key: (2.9 if key[0] == "npo_rt" else 2.5) * (v / per_step[(key[0], "full")] if key[1] == "lora" else 1.0)
                 for key, v in per_step.items()}
    at_targets = total(at_target, 2.5, 110.0)
    return {"basis": f"results/cost.json (threads {cost['settings'].get('threads')}, load average "
                     f"{cost['machine'].get('load_average_at_start')})", "measured_speed": measured,
            "at_cost_target_speed": at_targets}


def evaluate(model_dir: Path, run_dir: Path, data: Path, args, retain_logs: Path | None) -> tuple[dict, float]:
    from llm_unlearn.eval.evaluator import evaluate_model, write_eval
    from llm_unlearn.unlearn import load_target

    model, tokenizer = load_target(str(model_dir))
    t0 = time.time()
    result = evaluate_model(model, tokenizer, data, forget_split=args.forget_split, retain_logs=retain_logs,
                            max_items=args.eval_items, batch_size=8, max_new_tokens=args.max_new_tokens,
                            progress=not args.no_progress, model_name=run_dir.name)
    write_eval(run_dir / "eval", result)
    return result["summary"], time.time() - t0


def tune_seeds(args) -> list[int]:
    """The seeds each tuned row is searched with (``--tune-seeds``; default ``--seed`` alone). A tune
    seed sets the tuner's sampler and training seeds; the target and retain models stay those of
    ``--seed``, so the seeds measure the search and the unlearning, not the finetuning."""
    return list(args.tune_seeds) if args.tune_seeds else [args.seed]


def tuned_dir(name: str, args, seed: int | None = None) -> str:
    """The cache directory (and row name) of a tuned row: ``tuned_NAME``, or ``tuned_NAME_TAG`` with
    ``--tune-tag`` (another budget or rule beside a finished row, never over it), plus ``_seedS`` for
    a tune seed other than ``--seed``."""
    seed = args.seed if seed is None else seed
    return (f"tuned_{name}" + (f"_{args.tune_tag}" if args.tune_tag else "")
            + (f"_seed{seed}" if seed != args.seed else ""))


def tune_tasks(names: list[str], args) -> list[str]:
    """Worker tasks of the tuned rows: ``tune:NAME@SEED`` per row and tune seed."""
    return [f"tune:{name}@{seed}" for name in names for seed in tune_seeds(args)]


def wants_tune(tasks: set[str], name: str, seed: int) -> bool:
    """A worker runs a tuned row's search for ``tune:NAME@SEED``, or for every seed with ``tune:NAME``."""
    return f"tune:{name}" in tasks or f"tune:{name}@{seed}" in tasks


def tuned_beta_range(method: str, args) -> tuple[float, float] | None:
    """The β range a tuned row searches: ``--tune-beta-range`` for the NPO rows (NPO+RT, NPO+RT+WAGLE),
    where β scales the log-likelihood ratio to the target; SimNPO's β divides a length-normalised
    log-likelihood (another scale) and GradDiff has none, so they keep the library's ranges."""
    return tuple(args.tune_beta_range) if args.tune_beta_range and method == "npo" else None


def tune_config(name: str, target_dir: Path, data: Path, args, out: Path, retain_logs: Path, seed: int):
    """The `llm_unlearn.tune` settings of one tuned row: the shared trial budget, the row's method
    and masks, and the ranges the frontier's flags narrow (``--tune-lr-range`` LOW = HIGH with fixed
    β / α ranges pins the default trial to a recorded point)."""
    from llm_unlearn.tune import TuneConfig

    method, masks = TUNED[name]
    return TuneConfig(model=str(target_dir), data=str(data), output=str(out), method=method,
                      forget_split=args.forget_split, retain_split=args.retain_split, trials=args.tune_trials, max_steps=args.tune_steps,
                      eval_every=args.tune_every, patience=args.tune_patience,
                      patience_warmup=args.tune_patience_warmup, modes=args.tune_modes, masks=masks,
                      batch_size=args.batch_size, lora_r=args.lora_r, optim=args.optim, seed=seed,
                      score_items=args.tune_score_items or args.eval_items, utility_items=args.tune_utility_items,
                      retain_logs=str(retain_logs), eval_max_items=args.eval_items,
                      eval_max_new_tokens=args.max_new_tokens, utility_rule=args.tune_utility_rule,
                      hfq_reference=args.tune_hfq_reference, progress=not args.no_progress,
                      beta_range=tuned_beta_range(method, args),
                      alpha_range=tuple(args.tune_alpha_range) if args.tune_alpha_range else None,
                      **({f"lr_{m}": tuple(args.tune_lr_range) for m in args.tune_modes.split(",")}
                         if args.tune_lr_range else {}),
                      guided=args.tune_guided,
                      **({"holdout_split": HOLDOUT_ALL, "holdout_items": args.tune_holdout_items}
                         if args.tune_holdout_items else {}))


def tuned_run(name: str, target_dir: Path, data: Path, args, runs_dir: Path, retain_logs: Path,
              seed: int | None = None) -> dict[str, Any]:
    """One `tuned` row: `llm_unlearn.tune` on the target with the shared trial budget; the tuner
    sees only the holdout forget quality and the utility proxy. The retain model's logs are passed
    for the final report only (the chosen run's true FQ), after the search. Reused when finished
    with the same settings."""
    from llm_unlearn.tune import TuneConfig, resume_mismatch, tune

    seed = args.seed if seed is None else seed
    out = runs_dir / tuned_dir(name, args, seed)
    cfg = tune_config(name, target_dir, data, args, out, retain_logs, seed)
    masks = TUNED[name][1]
    stamp = json.loads(json.dumps({k: v for k, v in vars(cfg).items() if k not in ("output", "progress")}, default=str))
    stamp_file = out / "frontier_settings.json"
    stored = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    if stored is not None:  # options added to TuneConfig later, at their defaults, keep a finished row valid
        stored.setdefault("hfq_reference", "current")  # except the HFQ reference: rows before it had only this one
        defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(TuneConfig)}, default=str))
        stamp_cmp = {k: v for k, v in stamp.items() if k in stored or v != defaults.get(k)}
    if (out / "tune.json").is_file() and stored is not None and stored == stamp_cmp:
        print(f"reusing {out.name}", flush=True)
        summary = json.loads((out / "tune.json").read_text())
    else:  # a search stopped part-way (a killed worker, a session's end) with these settings resumes
        resume = resume_mismatch(cfg) == []
        print(f"[{time.strftime('%H:%M:%S')}] {'resuming' if resume else 'tuning'} {name}: {args.tune_trials} trials "
              f"of <= {args.tune_steps} steps", flush=True)
        summary = tune(cfg, overwrite=True, resume=resume)
        stamp_file.write_text(json.dumps(stamp, indent=1, default=str) + "\n")
    ev = json.loads((out / "chosen" / "eval" / "summary.json").read_text())
    chosen = summary["chosen"]
    row = _row(out.name, ev, method=name, mask=masks, mode=chosen["params"]["mode"], tuned=True, tune_seed=seed,
               hfq_at_choice=chosen["hfq"], utility_proxy_ratio=chosen["utility_ratio"], best_step=chosen["best_step"],
               params=chosen["params"], default_point=chosen.get("default_point"), guided=chosen.get("guided"),
               trials=summary["trials"],
               tune_s=summary["total_s"],
               run_s=summary["search_s"], eval_s=ev.get("eval_time_s"))
    trials_json = json.loads((out / "trials.json").read_text())
    trials = trials_json["trials"]
    row["hfq_reference"] = cfg.hfq_reference
    row["direction_at_choice"] = chosen_direction(trials_json, chosen)
    row["scored_steps"] = [{"trial": t["number"], "step": h["step"], "hfq": h["hfq"], "hfq_reference": cfg.hfq_reference,
                            "forget_truth_ratios": h.get("forget_truth_ratios")} for t in trials for h in t["history"]]
    return row


def _target_holdout_ratios(runs_dir: Path) -> list[float] | None:
    """The holdout items' truth ratios under the target (its evaluation): the reference of the
    anchored HFQ (the tuner's ``hfq_reference="start"``)."""
    from llm_unlearn.eval.logs import read_logs, split_truth_ratios

    path = runs_dir / "target" / "eval" / "per_item.json"
    if not path.is_file():
        return None
    logs = read_logs(path)
    return [float(v) for v in split_truth_ratios(logs.splits["holdout"])] if "holdout" in logs.splits else None


def anchored_hfq(rows: list[dict], runs_dir: Path) -> None:
    """Each evaluated row's ``hfq_start``: KS p-value of its forget truth ratios against the holdout
    items' under the target (the HFQ the tuner optimises with ``hfq_reference="start"``), beside
    ``holdout_forget_quality`` (against the holdout items under the row's own model)."""
    from llm_unlearn.eval import metrics as M
    from llm_unlearn.eval.logs import read_logs, split_truth_ratios

    ref = _target_holdout_ratios(runs_dir)
    if ref is None:
        return
    for r in rows:
        d = runs_dir / r["run"] / ("chosen/eval" if r.get("tuned") else "eval") / "per_item.json"
        if not d.is_file():  # the retain row's: what a model that never saw the forget data gives
            continue
        forget = split_truth_ratios(read_logs(d).splits["forget"])
        r["hfq_start"] = M.holdout_forget_quality(forget, ref)["pvalue"]


def _agreement(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    from llm_unlearn.eval import metrics as M

    return {"n": len(pairs), "spearman": M.spearman(*zip(*pairs)) if len(pairs) >= 3 else None}


def run_agreement(rows: list[dict], key: str) -> dict[str, Any]:
    """Spearman(row[key], true FQ) over the evaluated runs (every row but the retain model's), and
    which runs they were."""
    runs = [r for r in rows if r["run"] != "retain" and r.get(key) is not None and r.get("forget_quality") is not None]
    return {**_agreement([(r[key], r["forget_quality"]) for r in runs]), "runs": sorted(r["run"] for r in runs)}


def rank_agreement(rows: list[dict], retain_logs: Path | None, runs_dir: Path | None = None) -> dict[str, Any]:
    """Spearman(HFQ, true FQ): over the evaluated runs (every row but the retain model), and over
    every step the tuner scored (true FQ computed here, after tuning, from the per-item forget truth
    ratios the callback kept and the retain model's). Each for both HFQ references: the holdout
    items under the scored model (``runs``, ``scored_steps``: the tuner's ``current``) and under the
    target (``runs_anchored``, ``scored_steps_anchored``: ``start``, recomputed here for every step
    whatever reference its search used)."""
    from llm_unlearn.eval import metrics as M

    out: dict[str, Any] = {"runs": run_agreement(rows, "holdout_forget_quality"),
                           "runs_anchored": run_agreement(rows, "hfq_start")}
    steps = [s for r in rows for s in r.get("scored_steps", []) if s.get("forget_truth_ratios")]
    if retain_logs is not None and retain_logs.is_file() and steps:
        from llm_unlearn.eval.logs import read_logs, split_truth_ratios

        ref = split_truth_ratios(read_logs(retain_logs).splits["forget"])
        steps = [s for s in steps if len(s["forget_truth_ratios"]) == len(ref)]
        fq = [M.forget_quality(s["forget_truth_ratios"], ref)["pvalue"] for s in steps]
        current = [(s["hfq"], f) for s, f in zip(steps, fq) if s.get("hfq_reference", "current") == "current"]
        out["scored_steps"] = {**_agreement(current), "pairs": [list(p) for p in current]}
        held = _target_holdout_ratios(runs_dir) if runs_dir is not None else None
        if held is not None:
            anchored = [(M.holdout_forget_quality(s["forget_truth_ratios"], held)["pvalue"], f) for s, f in zip(steps, fq)]
            out["scored_steps_anchored"] = {**_agreement(anchored), "pairs": [list(p) for p in anchored]}
    return out


def pooled_agreement(rows: list[dict], runs_dir: Path, paths: list[str]) -> dict[str, Any]:
    """Spearman(HFQ, true FQ) over every evaluated run on these models and items: this invocation's rows
    and those of earlier result files (`paths`) whose runs directory has the same name (the same target,
    retain model, subset and evaluation settings); a run in several files counts once, this
    invocation's copy first. Runs evaluated against another holdout set (a tuned row's final
    evaluation takes the search's holdout split) are compared on the anchored HFQ too, which reads
    every row's forget truth ratios against the target's own holdout items."""
    pool: dict[str, dict] = {}
    sources = []
    for path in paths:
        other = json.loads(Path(path).read_text())
        if Path(str(other.get("runs_dir", ""))).name != runs_dir.name:
            continue
        sources.append(Path(path).name)
        for r in other.get("rows", []):
            pool[r["run"]] = r
    pool.update({r["run"]: r for r in rows})
    rows = list(pool.values())
    anchored_hfq([r for r in rows if r.get("hfq_start") is None], runs_dir)  # older files: where the logs still are
    return {"files": sources, "runs": run_agreement(rows, "holdout_forget_quality"),
            "runs_anchored": run_agreement(rows, "hfq_start")}


def utility_intervals(rows: list[dict], runs_dir: Path, n_boot: int = 1000) -> None:
    """Each row's MU / target's MU with a 90 % paired-bootstrap interval over the evaluated utility
    items (`llm_unlearn.eval.logs.utility_bootstrap`): on 40 items per split a few generations
    decide MU, and the interval says how much of a difference is noise."""
    from llm_unlearn.eval.logs import read_logs, utility_bootstrap

    def logs_of(run: str):
        d = runs_dir / run / ("chosen/eval" if run.startswith("tuned_") else "eval") / "per_item.json"
        return read_logs(d) if d.is_file() else None

    target = logs_of("target")
    if target is None:
        return
    for r in rows:
        lg = logs_of(r["run"]) if r.get("model_utility") is not None else None
        if lg is None:
            continue
        b = utility_bootstrap(lg, target, n_boot=n_boot)
        r["mu_ratio"], r["mu_ratio_interval"] = b["ratio"], b["ratio_interval"]
        r["mu_interval"] = b["model_utility_interval"]


def _row(name: str, summary: dict, **extra: Any) -> dict[str, Any]:
    metrics = summary.get("metrics", {})
    return {"run": name, **extra, **{k: metrics.get(k) for k in METRICS}}


def plot(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"none": "tab:blue", "random": "tab:orange", "wagle": "tab:green"}
    markers = {"graddiff": "o", "npo_rt": "s", "simnpo": "^"}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in rows:
        fq, mu = r.get("forget_quality"), r.get("model_utility")
        if fq is None or mu is None:
            continue
        fq = max(fq, 1e-30)
        if r["run"] in ("target", "retain"):
            ax.scatter(mu, fq, marker="*", s=220, c="black" if r["run"] == "target" else "gold",
                       edgecolors="black", zorder=3, label=r["run"])
            continue
        full = r.get("mode") == "full"
        if r.get("tuned"):
            ax.scatter(mu, fq, marker="D", s=80, zorder=3, facecolors=colors.get(r.get("mask"), "grey"),
                       edgecolors="red", linewidths=2)
            ax.annotate(r["run"].removeprefix("tuned_"), (mu, fq), fontsize=7, xytext=(4, 4), textcoords="offset points")
            continue
        ax.scatter(mu, fq, marker=markers.get(r.get("method"), "x"), s=70, zorder=2,
                   facecolors=colors.get(r.get("mask"), "grey") if full else "none",
                   edgecolors=colors.get(r.get("mask"), "grey"), linewidths=1.8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, ls="", color="grey", label=k) for k, m in markers.items()]
    handles += [Line2D([], [], marker="o", ls="", color=c, label=f"mask {k}") for k, c in colors.items()]
    handles += [Line2D([], [], marker="o", ls="", markerfacecolor="grey", markeredgecolor="grey", label="full weights"),
                Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="grey", label="LoRA")]
    handles += [Line2D([], [], marker="D", ls="", color="grey", markeredgecolor="red", label="tuned (retain-free)")]
    handles += [Line2D([], [], marker="*", ls="", color=c, markeredgecolor="black", markersize=12, label=n)
                for n, c in (("target", "black"), ("retain", "gold"))]
    ax.set_yscale("log")
    ax.set_xlabel("model utility (harmonic mean, retain + real authors + world facts)")
    ax.set_ylabel("forget quality (KS-test p-value, log)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="best", ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_targets(rows: list[dict], agreement: dict) -> list[dict[str, Any]]:
    """The issue-15 targets, measured (None where the rows needed are missing)."""
    by = {r["run"]: r for r in rows}
    out = []
    fq_t = by.get("target", {}).get("forget_quality")
    out.append({"target": "the target memorises clearly: FQ(target) vs retain <= 1e-3", "limit": 1e-3,
                "measured": fq_t, "pass": None if fq_t is None else fq_t <= 1e-3})
    mu_t = by.get("target", {}).get("model_utility")
    tuned = [r for r in rows if r.get("tuned") and r.get("forget_quality") is not None]
    ok = [r for r in tuned if mu_t and r.get("model_utility") is not None and r["model_utility"] >= 0.95 * mu_t]
    best = max(ok, key=lambda r: r["forget_quality"], default=None)
    # none within the utility bar: show the tuned run that forgot most, and how far its MU is
    shown = best or max(tuned, key=lambda r: r["forget_quality"], default=None)
    out.append({"target": "best retain-free-tuned run: true FQ >= 0.5 with MU >= 0.95 x target's", "limit": 0.5,
                "measured": None if shown is None else {
                    "run": shown["run"], "forget_quality": shown["forget_quality"],
                    "model_utility": shown["model_utility"], "target_mu": mu_t,
                    "mu_ratio": shown["model_utility"] / mu_t if mu_t else None,
                    "mu_ratio_interval_90": shown.get("mu_ratio_interval"), "within_utility_bar": best is not None},
                "pass": None if not tuned else (best is not None and best["forget_quality"] >= 0.5)})
    # a row tuned with several seeds: the claim rests on all of them (mean and spread)
    by_method: dict[str, list[dict]] = {}
    for r in tuned:
        by_method.setdefault(r.get("method", r["run"]), []).append(r)
    seeded = {m: rs for m, rs in by_method.items() if len(rs) >= 2 and mu_t}
    if seeded:
        def summary(m: str, rs: list[dict]) -> dict[str, Any]:
            fq = [r["forget_quality"] for r in rs]
            ratio = [r["model_utility"] / mu_t for r in rs if r.get("model_utility") is not None]
            return {"method": m, "seeds": [r.get("tune_seed") for r in rs], "forget_quality": fq,
                    "mu_ratio": ratio, "mean_forget_quality": sum(fq) / len(fq), "min_forget_quality": min(fq),
                    "mean_mu_ratio": sum(ratio) / len(ratio) if ratio else None,
                    "min_mu_ratio": min(ratio) if ratio else None}
        sums = [summary(m, rs) for m, rs in seeded.items()]
        good = [x for x in sums if x["mean_mu_ratio"] is not None and x["mean_mu_ratio"] >= 0.95]
        pick = max(good or sums, key=lambda x: x["mean_forget_quality"])
        out.append({"target": "the same over the tune seeds of the best multi-seed tuned method: mean true FQ >= 0.5 "
                              "with mean MU >= 0.95 x target's (per-seed values and spread reported)",
                    "limit": 0.5, "measured": pick,
                    "pass": bool(good) and pick["mean_forget_quality"] >= 0.5})
    # over every run on these models when earlier result files were pooled (--rank-pool), else this invocation's
    runs = agreement.get("pooled", agreement).get("runs", {})
    rho = runs.get("spearman")
    out.append({"target": "HFQ ranks runs like true FQ: Spearman >= 0.8 over all frontier runs", "limit": 0.8,
                "measured": rho, "n": runs.get("n"),
                "pass": None if rho is None or (isinstance(rho, float) and math.isnan(rho)) else rho >= 0.8})
    return out


def chosen_direction(trials: dict, chosen: dict) -> str | None:
    """Which way the chosen step's forget items differ from unseen ones (`forgetting_direction`'s
    verdict), from `trials.json`: as the tuner recorded it, or, for rows tuned before it did,
    recomputed from the step's logged truth ratios against the same holdout reference."""
    from llm_unlearn.eval import forgetting_direction

    pick = next((h for t in trials["trials"] if t["number"] == chosen["number"] for h in t["history"]
                 if h["step"] == chosen["best_step"]), None)
    if pick is None:
        return None
    if pick.get("direction"):
        return pick["direction"]
    hold = pick.get("holdout_truth_ratios") or trials["start"].get("holdout_truth_ratios")
    if not pick.get("forget_truth_ratios") or not hold:
        return None
    return forgetting_direction(pick["forget_truth_ratios"], hold)["verdict"]


def write_outputs(result: dict, out_prefix: Path) -> None:
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_prefix.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    header = ["Run", "Method", "Mask", "Mode", "Forget quality", "HFQ (retain-free)", "HFQ vs target's holdout",
              "Model utility", "MU / target (90% CI)", "Forget ROUGE-L", "Forget prob.", "Forget truth ratio",
              "Retain ROUGE-L", "Train s", "Eval s"]
    rows = [[r["run"], r.get("method", "-"), r.get("mask", "-"), r.get("mode", "-"),
             *[r.get(k) for k in ("forget_quality", "holdout_forget_quality", "hfq_start", "model_utility")], _ratio_ci(r),
             *[r.get(k) for k in ("forget_rougeL_recall", "forget_probability", "forget_truth_ratio",
                                  "retain_rougeL_recall")],
             r.get("train_s") or r.get("run_s"), r.get("eval_s")] for r in result["rows"]]
    extra: list[str] = []
    tuned = [r for r in result["rows"] if r.get("tuned") and "params" in r]
    if tuned:
        t = result["settings"].get("tuned", {})
        extra += ["", f"Tuned rows: `llm-unlearn tune` (retain-free: objective max HFQ s.t. utility proxy >= 0.95 x "
                      f"target), {t.get('trials')} trials{' (guided)' if t.get('guided') else ''} of <= "
                      f"{t.get('max_steps')} steps each, scored every "
                      f"{t.get('eval_every')} steps, modes {t.get('modes')}; the retain model's logs were read only "
                      "after each search, for the FQ column.", "",
                  md_table(["Run", "Chosen hyperparameters", "Best step", "HFQ at choice", "Forget items at choice",
                            "Utility proxy / start", "Tune s"],
                           [[r["run"], ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in r["params"].items())
                             + (" (the default trial)" if r.get("default_point") else "")
                             + (f" (guided: {r['guided']})" if r.get("guided") else ""),
                             r.get("best_step"), r.get("hfq_at_choice"), r.get("direction_at_choice") or "-",
                             r.get("utility_proxy_ratio"), r.get("tune_s")]
                            for r in tuned]),
                  "", "Forget items at choice: `forgetting_direction` of the chosen step, the forget items' truth "
                      "ratios against the holdout's (the tuner's reference): alike (HFQ >= 0.05), short (still more "
                      "familiar than unseen items) or overshot (less familiar)."]
    ra = result.get("rank_agreement")
    if ra:
        steps, anchored = ra.get("scored_steps", {}), ra.get("scored_steps_anchored", {})
        runs_a = ra.get("runs_anchored", {})
        extra += ["", f"Spearman(HFQ, true FQ): {_fmt(ra['runs'].get('spearman'))} over {ra['runs'].get('n')} evaluated "
                      f"runs; {_fmt(steps.get('spearman'))} over {steps.get('n', 0)} steps the tuner scored against the "
                      "holdout under the scored model. Against the holdout under the target (the tuner's default "
                      f"reference): {_fmt(runs_a.get('spearman'))} over {runs_a.get('n', 0)} runs, "
                      f"{_fmt(anchored.get('spearman'))} over {anchored.get('n', 0)} scored steps."]
        if ra.get("pooled"):
            pr, pa = ra["pooled"]["runs"], ra["pooled"]["runs_anchored"]
            extra += ["", f"Over every evaluated run on these models (this table and {', '.join(ra['pooled']['files'])}): "
                          f"Spearman {_fmt(pr.get('spearman'))} over {pr.get('n')} runs; against the target's holdout "
                          f"{_fmt(pa.get('spearman'))} over the {pa.get('n')} runs whose per-item logs were at hand."]
    if result.get("targets"):
        extra += ["", md_table(["Target", "Measured", "Pass"],
                               [[t["target"], json.dumps(t["measured"], default=str) if isinstance(t["measured"], dict)
                                 else t["measured"], t["pass"]] for t in result["targets"]])]
    s = result["settings"]
    md = [f"# TOFU frontier: {s['model']}, first {s['authors']} authors, {s.get('forget_split', FORGET_SPLIT)}",
          "", f"Status: **{result['status']}**, {len(result['rows']) - 2} of {result['planned_runs']} unlearning runs "
          f"done; compute time of everything in the table {result['compute_s'] / 60:.1f} min (finetuning "
          f"{result['finetune_s'] / 60:.1f} min; reused models and runs count their original time), wall time of "
          f"this invocation {result['total_s'] / 60:.1f} min.", "",
          md_table(header, rows), "",
          f"Budget per run: {s['epochs']} epochs over the forget set, batch {s['batch_size']} forget + "
          f"{s['batch_size']} retain, lr {s['lr_full']} (full weights) / {s['lr_lora']} (LoRA r={s['lora_r']}), "
          f"mask ratio {s['mask_ratio']}, no per-method tuning. Eval: {s['eval_items']} items per split, "
          f"greedy generation of {s['max_new_tokens']} new tokens. Command: `{result['command']}`", "",
          f"![forget quality vs model utility]({out_prefix.with_suffix('.png').name})", *extra, ""]
    out_prefix.with_suffix(".md").write_text("\n".join(md))
    plot(result["rows"], out_prefix.with_suffix(".png"),
         f"{s['model']}, TOFU {s['authors']} authors, {s['epochs']} epochs ({result['status']})")


def _ratio_ci(r: dict) -> str:
    if r.get("mu_ratio") is None:
        return "-"
    lo, hi = r["mu_ratio_interval"]
    return f"{r['mu_ratio']:.2f} [{lo:.2f}, {hi:.2f}]"


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# set by `run_parallel` for its final, in-process report pass: the wall clock and command of the whole job
_PARALLEL: dict[str, Any] = {}
# relative cost of a run (training + its evaluation), for sharing the grid out: element-masked LoRA
# trains ~2x as long as plain LoRA, masked full weights ~1.3x (session-2 measurements)
_RUN_COST = {("lora", "none"): 1.9, ("lora", "masked"): 2.5, ("full", "none"): 2.0, ("full", "masked"): 2.3}


_PER_RUN_SETTINGS = ("threads", "epochs", "lr_full", "lr_lora", "optim", "optim_in_backward", "tuned")
DEFAULT_EPOCHS, DEFAULT_LR = 3.0, {"full": 4e-5, "lora": 6e-4}


def _run_name(method: str, mask: str, mode: str, args) -> str:
    """``{method}_{mask}_{mode}``, plus ``_lr{lr}`` / ``_ep{epochs}`` / ``_{optim}`` off the default budget."""
    name = f"{method}_{mask}_{mode}"
    lr = args.lr_full if mode == "full" else args.lr_lora
    if lr != DEFAULT_LR[mode]:
        name += f"_lr{lr:g}"
    if args.epochs != DEFAULT_EPOCHS:
        name += f"_ep{args.epochs:g}"
    if args.optim:
        name += f"_{args.optim}"
    if args.optim_in_backward:
        name += "_inbwd"
    return name


def _without(argv: list[str], *flags: str) -> list[str]:
    """`argv` without the given valued flags (``--f V`` and ``--f=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def run_parallel(args, argv: list[str], methods: list[str], masks: list[str], modes: list[str]) -> int:
    """``--jobs N``: the same work in N single-thread worker processes of this script, in three
    phases (each waits for the previous one): (1) target and retain finetuning side by side;
    (2) the retain model's evaluation (every forget quality needs its logs) beside the masks;
    (3) the target's evaluation, the tuned rows' searches and the grid runs, shared out longest
    first to the least-loaded worker. Everything lands in the cache; the outputs are then written from it in this process,
    with the wall time of the whole job."""
    import subprocess

    t0 = time.time()
    base = [sys.executable, str(Path(__file__).resolve()), *_without(argv, "--jobs", "--threads"), "--threads", "1"]
    if "--no-progress" not in base:
        base.append("--no-progress")  # N interleaved progress bars are unreadable
    n = args.jobs
    grid_runs = sorted(((_RUN_COST[(mode, "none" if mask == "none" else "masked")], f"run:{_run_name(method, mask, mode, args)}")
                        for mode in modes for mask in masks for method in methods), reverse=True)
    # tuned rows are worker tasks too (a search costs about `trials` runs), longest first
    grid_runs = [(args.tune_trials * 2.0, task) for task in tune_tasks([x for x in args.tuned.split(",") if x], args)] + grid_runs
    lanes: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for cost, task in [(1.0, "eval:target"), *grid_runs]:
        i = load.index(min(load))
        lanes[i].append(task)
        load[i] += cost
    mask_tasks = [f"mask:{m}" for m in masks if m != "none"]
    phases = [("finetune", [["ft:retain"], ["ft:target"]]),
              ("retain_eval_and_masks", [["eval:retain"], mask_tasks] if mask_tasks else [["eval:retain"]]),
              ("grid", [lane for lane in lanes if lane])]
    phases_s: dict[str, float] = {}
    for phase, groups in phases:
        groups = [g for g in groups if g]
        # more groups than workers: merge the tail into the first lanes
        while len(groups) > n:
            groups[len(groups) - 2] += groups.pop()
        print(f"[{time.strftime('%H:%M:%S')}] phase {phase}: {len(groups)} worker(s)", flush=True)
        start = time.time()
        procs = [subprocess.Popen([*base, "--worker", ",".join(g)]) for g in groups]
        codes = [proc.wait() for proc in procs]
        phases_s[phase] = round(time.time() - start, 1)
        if any(codes):
            print(f"phase {phase}: a worker failed (exit codes {codes}); finished work stays in the cache", flush=True)
            return 1
    _PARALLEL.update(t_start=t0, jobs=n, phases_s=phases_s, assignment=[lane for lane in lanes if lane],
                     command=" ".join(["python", "benchmarks/tofu_frontier.py", *argv]))
    try:
        return main([*_without(argv, "--jobs"), "--report-only"])
    finally:
        _PARALLEL.clear()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=default_data(), help="TOFU-layout directory (default ../shared/data/tofu)")
    p.add_argument("--model", default="smollm2", help="base model spec (default SmolLM2-135M-Instruct from the cache)")
    p.add_argument("--authors", type=int, default=20, help="first N authors (forget10 = the last 10%% of them)")
    p.add_argument("--forget-split", default=FORGET_SPLIT,
                   help="forgetXX: the last XX %% of the authors (default forget10: 2 of 20 authors, 40 items; "
                        "forget20: 4 authors, 80 items, a sharper KS test with the same target model). "
                        "--eval-items must cover it")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--masks", default=",".join(MASKS), help=f"comma list of {', '.join(MASKS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="unlearning epochs over the forget set (every run)")
    p.add_argument("--lr-full", type=float, default=DEFAULT_LR["full"], help="learning rate with full weights")
    p.add_argument("--lr-lora", type=float, default=DEFAULT_LR["lora"], help="learning rate with LoRA")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--optim", default=None,
                   help="optimizer of the unlearning runs (TrainingArguments.optim, e.g. adafactor: no AdamW moments; "
                        "default: the Trainer's AdamW)")
    p.add_argument("--optim-in-backward", action="store_true",
                   help="unlearning runs update each weight inside backward (optim_in_backward; per-parameter clipping)")
    p.add_argument("--mask-ratio", type=float, default=0.5, help="fraction of weights a mask lets change")
    p.add_argument("--tuned", default="", help=f"comma list of tuned rows ({', '.join(TUNED)}): each tuned by "
                                               "llm-unlearn tune (retain-free) with the same trial budget")
    p.add_argument("--tune-trials", type=int, default=4, help="trials per tuned row")
    p.add_argument("--tune-steps", type=int, default=40, help="training-step budget per trial")
    p.add_argument("--tune-every", type=int, default=10, help="score HFQ and the utility proxy every k steps")
    p.add_argument("--tune-patience", type=int, default=2, help="scorings without a better step before a trial stops")
    p.add_argument("--tune-patience-warmup", type=float, default=0.5,
                   help="patience never stops a trial before this fraction of its steps (NPO+RT's utility dips "
                        "before the retain term pulls it back)")
    p.add_argument("--tune-modes", default="lora,full", help="modes the tuner searches")
    p.add_argument("--tune-utility-rule", default="mean", choices=["mean", "each"],
                   help="the tuner's feasibility rule (llm-unlearn tune --utility-rule)")
    p.add_argument("--tune-tag", default="", help="suffix of the tuned rows' cache directories and names "
                                                 "(tuned_NAME_TAG), so another budget or rule never replaces a finished row")
    p.add_argument("--tune-seeds", type=int, nargs="+", default=None,
                   help="tune each tuned row once per seed (sampler and training seed; rows tuned_NAME_seedS beside "
                        "--seed's tuned_NAME); the target and retain models stay --seed's. Default: --seed alone")
    p.add_argument("--tune-hfq-reference", default="start", choices=["start", "current"],
                   help="the tuner's HFQ reference: the holdout items under the target (start) or under the scored model")
    p.add_argument("--tune-beta-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="beta range the tuner searches for the NPO rows (npo_rt, npo_rt_wagle); SimNPO and "
                        "GradDiff keep the library's ranges (default: the library's for every row)")
    p.add_argument("--tune-alpha-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="alpha range (the retain term's weight) the tuner searches, every row (default the library's)")
    p.add_argument("--tune-lr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="learning-rate range the tuner searches in every tuned mode, every row (default the "
                        "library's per mode); LOW = HIGH with one trial reruns a recorded trial's point")
    p.add_argument("--tune-guided", action="store_true",
                   help="llm-unlearn tune --guided: after a trial that stopped short or overshot, the next moves "
                        "NPO's beta (others: the lr) the other way instead of a TPE draw; with a larger "
                        "--tune-trials it resumes a finished row's search")
    p.add_argument("--tune-holdout-items", type=int, default=None,
                   help="holdout items the tuner scores HFQ against, from every item about authors outside the subset "
                        "(400 on TOFU; default: as many as --tune-score-items, from the holdoutXX split)")
    p.add_argument("--tune-utility-items", type=int, default=20, help="items per utility split in the tuner's scoring")
    p.add_argument("--tune-score-items", type=int, default=None,
                   help="forget and holdout items the tuner scores HFQ on (default --eval-items)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--ft-epochs", type=float, default=2.0,
                   help="finetuning epochs (target and retain; 2 at lr 4e-4 so that the target memorises clearly: "
                        "3 at 1e-4 left FQ(target) at 0.029)")
    p.add_argument("--ft-lr", type=float, default=4e-4)
    p.add_argument("--ft-batch-size", type=int, default=8)
    p.add_argument("--eval-items", type=int, default=40, help="items per evaluation split")
    p.add_argument("--max-new-tokens", type=int, default=48, help="greedy generation length in the evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "llm_unlearn" / "frontier"),
                   help="finetuned target/retain models and finished runs (reused between runs)")
    p.add_argument("--keep-models", action="store_true", help="keep full-weight unlearned models (540 MB each)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: write the outputs from the finished runs of this grid "
                        "(e.g. after running parts of the grid in parallel processes, --masks none / --masks wagle)")
    p.add_argument("--rank-pool", nargs="*", default=[], metavar="JSON",
                   help="earlier result files of this frontier: their rows on the same models (same runs directory) "
                        "join this invocation's in the Spearman(HFQ, true FQ) over all frontier runs")
    p.add_argument("--quick", action="store_true",
                   help="smoke configuration: 10 authors, a few finetuning/unlearning steps, 2 methods x 2 masks x "
                        "2 modes, 4 eval items, 8 new tokens")
    p.add_argument("--out", default=None, help="output prefix (default results/tofu_frontier, quick: results/tofu_frontier_quick)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (one torch thread each): target and retain finetune side by side, then "
                        "the grid is shared out; the parent writes the outputs. Default 1: everything in this process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # comma list of ft:ROLE, eval:ROLE, mask:M, run:NAME, tune:NAME
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.quick:
        args.authors, args.ft_epochs, args.epochs = 10, 0.1, 0.4
        args.eval_items, args.max_new_tokens = 4, 8
    from llm_unlearn.data.source import matching_retain_split
    from llm_unlearn.errors import UnlearnError

    try:
        args.retain_split = matching_retain_split(args.forget_split)
    except UnlearnError as e:
        p.error(f"--forget-split: {e}")
    n_forget = forget_items(args.authors, args.forget_split)
    if not args.quick and args.eval_items < n_forget:
        p.error(f"--eval-items {args.eval_items} would evaluate only part of {args.forget_split} ({n_forget} items "
                f"of {args.authors} authors): give --eval-items {n_forget}")
        if args.methods == ",".join(METHODS):
            args.methods = "npo_rt,graddiff"
        if args.masks == ",".join(MASKS):
            args.masks = "none,wagle"
    if args.data is None:
        p.error("--data DIR is required (no ../shared/data/tofu beside the repository)")
    methods = [m for m in args.methods.split(",") if m]
    masks = [m for m in args.masks.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    tuned = [m for m in args.tuned.split(",") if m]
    for given, valid, what in ((methods, METHODS, "method"), (masks, MASKS, "mask"), (modes, MODES, "mode"),
                               (tuned, TUNED, "tuned row")):
        bad = [x for x in given if x not in valid]
        if bad:
            p.error(f"unknown {what}(s) {', '.join(bad)}; valid: {', '.join(valid)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and args.worker is None and not args.report_only:
        return run_parallel(args, list(argv if argv is not None else sys.argv[1:]), methods, masks, modes)
    tasks = set(args.worker.split(",")) if args.worker else None
    if tasks and any(t.startswith("ft:") for t in tasks) and not all(t.startswith("ft:") for t in tasks):
        # the other tasks need both models (the target's evaluation, the retain model's logs): never skip them silently
        print(f"error: --worker {args.worker}: ft:ROLE tasks run in a worker of their own; run "
              f"{','.join(sorted(t for t in tasks if not t.startswith('ft:')))} in the next worker", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    out_prefix = Path(args.out) if args.out else RESULTS / ("tofu_frontier_quick" if args.quick else "tofu_frontier")
    cache = Path(args.cache)
    t_start = _PARALLEL.get("t_start", time.time())
    data_dir = f"data_{args.authors}authors" + ("" if args.forget_split == FORGET_SPLIT else f"_{args.forget_split}")
    data = write_tofu_subset(args.data, cache / data_dir, args.authors, args.forget_split)

    settings = {
        "model": args.model, "data_source": str(Path(args.data).resolve()), "authors": args.authors, "forget_split": args.forget_split,
        "retain_split": args.retain_split, "epochs": args.epochs, "batch_size": args.batch_size, "lr_full": args.lr_full,
        "lr_lora": args.lr_lora, "optim": args.optim, "optim_in_backward": args.optim_in_backward, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r,
        "mask_ratio": args.mask_ratio,
        "method_hyperparameters": {m: METHODS[m][1] for m in METHODS}, "warmup_steps": 0, "seed": args.seed,
        "finetune": {"epochs": args.ft_epochs, "lr": args.ft_lr, "batch_size": args.ft_batch_size,
                     "splits": {"target": "full", "retain": args.retain_split}, "with_utility": False},
        "eval_items": args.eval_items, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "lr_grid": "none: one lr per mode for every method", "quick": args.quick,
    }
    if tuned:
        settings["tuned"] = {"rows": tuned, "trials": args.tune_trials, "max_steps": args.tune_steps,
                             "eval_every": args.tune_every, "patience": args.tune_patience, "patience_warmup": args.tune_patience_warmup, "modes": args.tune_modes,
                             "seeds": tune_seeds(args), "utility_items": args.tune_utility_items, "score_items": args.tune_score_items or args.eval_items,
                             "hfq_reference": args.tune_hfq_reference, "holdout_items": args.tune_holdout_items,
                             "beta_range": args.tune_beta_range, "alpha_range": args.tune_alpha_range,
                             "lr_range": args.tune_lr_range,
                             "guided": args.tune_guided,
                             "objective": "max HFQ s.t. utility proxy >= 0.95 x target (retain-free)"}
    # one directory for every budget: a run's own stamp holds its epochs and learning rate, and a run
    # off the default budget has them in its name, so sweeps share the target / retain evaluations
    runs_dir = cache / f"runs_{_key({k: v for k, v in settings.items() if k not in _PER_RUN_SETTINGS})}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    grid = [(mode, mask, method) for mode in modes for mask in masks for method in methods]
    result: dict[str, Any] = {
        "benchmark": "tofu_frontier", "machine": machine_info(), "settings": settings, "data": str(data),
        "runs_dir": str(runs_dir), "command": _PARALLEL.get("command") or " ".join(
            ["python", "benchmarks/tofu_frontier.py", *(argv if argv is not None else sys.argv[1:])]),
        "planned_runs": len(grid), "rows": [], "timings_s": {}, "status": "running", "total_s": 0.0,
        "finetune_s": 0.0, "estimate": estimate_minutes(args, methods, masks, modes),
    }
    if "phases_s" in _PARALLEL:
        result["parallel"] = {"jobs": _PARALLEL["jobs"], "phases_s": _PARALLEL["phases_s"],
                              "assignment": _PARALLEL["assignment"]}
    if result["estimate"] and tasks is None:
        est = result["estimate"]
        print(f"estimated time of this grid: {est['measured_speed']['total_min']} min at the speed measured in "
              f"{est['basis']}; {est['at_cost_target_speed']['total_min']} min at the cost targets' speed", flush=True)

    def save(status: str = "running") -> None:
        if tasks is not None:  # a worker: the parent writes the outputs
            return
        result["status"] = status
        result["total_s"] = round(time.time() - t_start, 1)
        # time of everything in the table, also of runs reused from earlier invocations
        result["compute_s"] = round(result["finetune_s"] + sum(v for k, v in result["timings_s"].items()
                                                                if k.startswith("mask_"))
                                    + sum((r.get("run_s") or 0) + (r.get("eval_s") or 0) for r in result["rows"]), 1)
        write_outputs(result, out_prefix)

    # target and retain
    model_dirs: dict[str, Path] = {}
    if tasks is not None and any(t.startswith("ft:") for t in tasks):
        for role in ("retain", "target"):
            if f"ft:{role}" in tasks:
                finetuned(role, data, args, cache)
        return 0
    for role in ("retain", "target"):
        model_dirs[role], ft_s = finetuned(role, data, args, cache, train=tasks is None)
        result["timings_s"][f"finetune_{role}"] = round(ft_s, 1)
        result["finetune_s"] += ft_s
    eval_settings = {"eval_items": args.eval_items, "max_new_tokens": args.max_new_tokens}
    retain_logs = runs_dir / "retain" / "eval" / "per_item.json"
    for role in ("retain", "target"):
        if tasks is not None and f"eval:{role}" not in tasks:
            continue
        run_dir = runs_dir / role
        stamp = {"model": str(model_dirs[role]), **eval_settings}
        if _stamp_ok(run_dir, stamp):
            summary = json.loads((run_dir / "eval" / "summary.json").read_text())
            eval_s = summary.get("eval_time_s")
        else:
            run_dir.mkdir(exist_ok=True)
            print(f"[{time.strftime('%H:%M:%S')}] evaluating {role}", flush=True)
            summary, eval_s = evaluate(model_dirs[role], run_dir, data, args,
                                       retain_logs if role == "target" else None)
            if role == "retain":  # its own forget quality: against itself (no extra forward pass)
                from llm_unlearn.eval.logs import compute_summary, read_logs

                logs = read_logs(retain_logs)
                rescored = compute_summary(logs, logs)
                rescored.pop("logs", None)
                summary.update(rescored)
                (run_dir / "eval" / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
            _tag(run_dir, name=role, role=role, model_dir=str(model_dirs[role]),
                 run_time_s=result["timings_s"][f"finetune_{role}"])
            _write_stamp(run_dir, stamp)
        result["rows"].append(_row(role, summary, eval_s=eval_s))
    save()

    # the grid
    from llm_unlearn.unlearn import run_unlearning

    masks_files: dict[str, Path] = {}
    for mask in masks:
        if mask != "none" and (args.report_only or (tasks is not None and f"mask:{mask}" not in tasks)):
            masks_files[mask] = runs_dir / "masks" / f"{mask}_r{args.mask_ratio}.safetensors"
            timing = masks_files[mask].with_suffix(".json")
            if timing.is_file():
                result["timings_s"][f"mask_{mask}"] = json.loads(timing.read_text())["mask_s"]
        elif mask != "none":
            masks_files[mask], mask_s = mask_file(mask, model_dirs["target"], data, args, runs_dir)
            result["timings_s"][f"mask_{mask}"] = round(mask_s, 1)
    if tasks is not None:
        grid = [(mode, mask, method) for mode, mask, method in grid if f"run:{_run_name(method, mask, mode, args)}" in tasks]
    done_s: list[float] = []
    for i, (mode, mask, method) in enumerate(grid):
        name = _run_name(method, mask, mode, args)
        run_dir = runs_dir / name
        unlearn_method, hyper = METHODS[method]
        overrides = {"num_train_epochs": args.epochs, "learning_rate": args.lr_full if mode == "full" else args.lr_lora,
                     "per_device_train_batch_size": args.batch_size, "warmup_steps": 0.0, "seed": args.seed,
                     "logging_steps": 5, "disable_tqdm": args.no_progress, **hyper}
        if args.optim:  # default-optimizer runs keep their stamps (and cached results) as before
            overrides["optim"] = args.optim
        if args.optim_in_backward:
            overrides["optim_in_backward"] = True
        stamp = {"target": str(model_dirs["target"]), "overrides": overrides, "mask": str(masks_files.get(mask)),
                 "mode": mode,
                 "mask_ratio": args.mask_ratio, "lora_r": args.lora_r, **eval_settings}
        # the recorded results predate issue 17's reference-faithful defaults (SimNPO forget weight
        # 0.1375, retain partners drawn per epoch): pinned to what they used, outside the stamp, so
        # cached runs stay valid and a rerun reproduces them
        overrides = {**PRE_ISSUE_17.get(unlearn_method, {}), "resample_pairs": False, **overrides}
        if args.report_only and not _stamp_ok(run_dir, stamp):
            print(f"not finished: {name}", flush=True)
            continue
        if _stamp_ok(run_dir, stamp):
            summary = json.loads((run_dir / "eval" / "summary.json").read_text())
            manifest = json.loads((run_dir / "run.json").read_text())
            nll = manifest.get("nll", {})
            result["rows"].append(_row(name, summary, method=method, mask=mask, mode=mode,
                                       train_s=manifest.get("train_runtime_s"), run_s=manifest.get("run_time_s"),
                                       eval_s=summary.get("eval_time_s"), steps=manifest.get("steps"),
                                       forget_nll_before=nll.get("forget_before"), forget_nll_after=nll.get("forget_after"),
                                       retain_nll_before=nll.get("retain_before"), retain_nll_after=nll.get("retain_after"),
                                       reused=True))
            print(f"reusing {name}", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] run {i + 1}/{len(grid)}: {name}", flush=True)
        t0 = time.time()
        try:
            _, manifest = run_unlearning(
                str(model_dirs["target"]), data, run_dir, unlearn_method, forget_split=args.forget_split,
                retain_split=args.retain_split, overrides=overrides, lora=mode == "lora", lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r, mask=masks_files.get(mask), overwrite=True,
                nll_max_retain=args.eval_items, score_hfq=False,  # the evaluation below reports HFQ
            )
        except Exception as exc:  # a diverged run is a result too
            print(f"  {name} failed: {exc}", flush=True)
            result["rows"].append({"run": name, "method": method, "mask": mask, "mode": mode,
                                   "error": str(exc).splitlines()[0]})
            save()
            continue
        unlearn_s = time.time() - t0
        summary, eval_s = evaluate(run_dir, run_dir, data, args, retain_logs)
        _tag(run_dir, name=name, role="unlearned", run_time_s=round(unlearn_s, 1))
        _write_stamp(run_dir, stamp)
        if mode == "full" and not args.keep_models:
            for f in run_dir.glob("*.safetensors"):
                f.unlink()  # 540 MB each; the eval and run.json stay
        nll = manifest.get("nll", {})
        result["rows"].append(_row(name, summary, method=method, mask=mask, mode=mode,
                                   train_s=manifest.get("train_runtime_s"), run_s=round(unlearn_s, 1),
                                   eval_s=round(eval_s, 1), steps=manifest.get("steps"),
                                   forget_nll_before=nll.get("forget_before"), forget_nll_after=nll.get("forget_after"),
                                   retain_nll_before=nll.get("retain_before"), retain_nll_after=nll.get("retain_after")))
        done_s.append(time.time() - t0)
        left = len(grid) - i - 1
        eta = left * sum(done_s) / len(done_s)
        print(f"  {name}: FQ {summary['metrics'].get('forget_quality')}, MU {summary['metrics'].get('model_utility')}"
              f" ({done_s[-1]:.0f} s; {left} left, about {eta / 60:.0f} min)", flush=True)
        save()
    if tasks is not None:  # a worker: its tuned rows (tune:NAME), whose results land in the cache
        for name in tuned:
            for seed in tune_seeds(args):
                if wants_tune(tasks, name, seed):
                    tuned_run(name, model_dirs["target"], data, args, runs_dir, retain_logs, seed)
        return 0
    for name in tuned:
        for seed in tune_seeds(args):
            row_name = tuned_dir(name, args, seed)
            if args.report_only and not (runs_dir / row_name / "tune.json").is_file():
                print(f"not finished: {row_name}", flush=True)
                continue
            try:
                result["rows"].append(tuned_run(name, model_dirs["target"], data, args, runs_dir, retain_logs, seed))
            except Exception as exc:  # a failed search is a result too
                print(f"  {row_name} failed: {exc}", flush=True)
                result["rows"].append({"run": row_name, "method": name, "tuned": True, "tune_seed": seed,
                                       "error": str(exc).splitlines()[0]})
            save()
    result["planned_runs"] = len(grid) + len(tuned) * len(tune_seeds(args))
    utility_intervals(result["rows"], runs_dir)
    anchored_hfq(result["rows"], runs_dir)
    result["rank_agreement"] = rank_agreement(result["rows"], retain_logs, runs_dir)
    if args.rank_pool:
        result["rank_agreement"]["pooled"] = pooled_agreement(result["rows"], runs_dir, args.rank_pool)
    result["targets"] = frontier_targets(result["rows"], result["rank_agreement"])
    finished = len(result["rows"]) - 2
    planned = len(grid) + len(tuned) * len(tune_seeds(args))
    save("complete" if finished == planned else f"partial ({finished} of {planned} runs finished)")
    print(out_prefix.with_suffix(".md").read_text())
    print(f"total {result['total_s'] / 60:.1f} min; wrote {out_prefix}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
