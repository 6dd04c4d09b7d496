"""Is it really forgotten? The attacks of `llm_unlearn.eval.attacks` on the SmolLM2 TOFU frontier's
models: not a test; writes ``benchmarks/results/robustness.{json,md,png}``.

1. Data, target and retain models: the frontier's (`tofu_frontier.py`: first 20 TOFU authors,
   forget10 = the last 2 authors, 40 QA), reused from its ``--cache`` (finetuned there if missing,
   with the frontier's settings).
2. Unlearned runs: every finished frontier run whose weights are still in the cache (the frontier
   deletes full-weight models unless ``--keep-models``; LoRA adapters stay), the best of each method
   by forget quality (then model utility), plus the runs of ``--train`` (default NPO+RT and NPO-SAM,
   full weights and LoRA), trained here with the frontier's budget (3 epochs, batch 4 + 4, lr 4e-5
   full / 6e-4 LoRA r=8, seed 0) and evaluated like the frontier (40 items per split, 48 new tokens,
   forget quality against the retain model).
3. Every model (target and retain as baselines too) goes through relearn (A/B by author, k = 10 and
   30 steps), quantize (bitsandbytes int8, NF4, FP4; LoRA merged first), paraphrase, fewshot and
   CKA, on the 40 forget items. Per-model attack results are cached (keyed by model and settings).
4. Per run: recovery = (attacked - unlearned) / (target - unlearned) of forget probability and
   ROUGE-L; each run's ``attacks/attacks.json`` is written into its run directory (so
   ``llm-unlearn report`` shows it), and the table / JSON / plot here.

Targets (the issue's): the whole benchmark within 60 minutes on 2 cores; at least one unlearned
run with 4-bit (NF4 and FP4) and relearn-10 recovery <= 0.2 while its forget quality is above the
target's (judged on forget probability; ROUGE-L recovery is reported beside it, see the README).

    python benchmarks/robustness.py --cache /work/cache/frontier
    python benchmarks/robustness.py --quick   # smoke: one 2-step run, 8-item evals, 8 new tokens, relearn 2 steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, default_data, machine_info, md_table, write_tofu_subset  # noqa: E402

# the frontier's budget and method settings (tofu_frontier.py), and NPO-SAM with the same NPO+RT settings
LR = {"full": 4e-5, "lora": 6e-4}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "npo_rt": ("npo", {"alpha": 1.0, "beta": 0.1}),
    "npo_sam": ("npo_sam", {"alpha": 1.0, "beta": 0.1, "sam_rho": 0.01}),
    "graddiff": ("grad_diff", {"alpha": 1.0}),
    "simnpo": ("simnpo", {"alpha": 1.0, "beta": 2.5, "delta": 0.0}),
}
DEFAULT_TRAIN = "npo_rt:full,npo_sam:full,npo_rt:lora,npo_sam:lora"
FOUR_BIT = ("quantize_nf4", "quantize_fp4")
LIMIT_RECOVERY = 0.2
LIMIT_MINUTES = 60.0


def _key(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


@contextmanager
def claimed(lock_path: Path):
    """An exclusive file lock (waits for it), so parallel invocations of this benchmark share work:
    whoever holds it does the step, the other then finds the result."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def frontier_models(args, data: Path, work: Path, roles: tuple[str, ...] = ("target", "retain")) -> dict[str, Path]:
    """Target and retain model directories: the frontier's (from its cache, finetuned there with its
    settings if missing) for its configuration (20 authors, forget10, its finetuning budget: 2 epochs at
    lr 4e-4); otherwise (a reduced configuration) finetuned here the same way (``--ft-epochs`` at
    ``--ft-lr``, batch 8, full weights) and cached in `work`."""
    from llm_unlearn.data.tofu import matching_retain_split
    from llm_unlearn.finetune import FinetuneConfig, finetune

    if args.authors == 20 and args.forget_split == "forget10":
        import tofu_frontier

        ft_args = SimpleNamespace(model=args.model, ft_epochs=args.ft_epochs, ft_lr=args.ft_lr, ft_batch_size=8, seed=0)
        return {role: tofu_frontier.finetuned(role, data, ft_args, Path(args.cache))[0] for role in ("target", "retain")}
    out = {}
    for role, split in (("target", "full"), ("retain", matching_retain_split(args.forget_split))):
        if role not in roles:
            continue
        cfg = FinetuneConfig(model=args.model, data=str(data), split=split, output="", epochs=args.ft_epochs, lr=args.ft_lr,
                             batch_size=8, seed=0, with_utility=False)
        settings = {k: v for k, v in vars(cfg).items() if k != "output"}
        path = work / f"{role}_{_key(settings)}"
        with claimed(path.with_suffix(".lock")):  # another process of this benchmark may be finetuning it
            if (path / "model.safetensors").is_file():
                out[role] = path
                continue
            print(f"[{time.strftime('%H:%M:%S')}] finetuning {role} on {split}", flush=True)
            cfg.output = str(path)
            t0 = time.time()
            finetune(cfg)
            (path / "finetune_s.json").write_text(json.dumps({"finetune_s": round(time.time() - t0, 1)}) + "\n")
        out[role] = path
    return out


def evaluate_dir(model_dir: Path, out_dir: Path, data: Path, args, retain_logs: Path | None, name: str) -> dict:
    """The frontier's evaluation (40 items per split, 48 new tokens) of a model or adapter directory."""
    from llm_unlearn.eval.evaluator import evaluate_model, write_eval
    from llm_unlearn.unlearn import load_target

    model, tok = load_target(str(model_dir))
    result = evaluate_model(model, tok, data, forget_split=args.forget_split, retain_logs=retain_logs,
                            max_items=args.eval_items, batch_size=8, max_new_tokens=args.eval_new_tokens,
                            progress=not args.no_progress, model_name=name)
    write_eval(out_dir, result)
    return result["summary"]


def baseline_evals(models: dict[str, Path], data: Path, args, work: Path) -> dict[str, Path]:
    """Eval directories of target and retain: the frontier's if its settings match, else made here."""
    from llm_unlearn.eval.logs import compute_summary, read_logs

    out = {}
    for role in ("retain", "target"):
        frontier_eval = next((d / role / "eval" for d in sorted(Path(args.cache).glob("runs_*"))
                              if (d / role / "frontier_settings.json").is_file()
                              if (d / role / "eval" / "summary.json").is_file()
                              and json.loads((d / role / "frontier_settings.json").read_text()).get("model")
                              == str(models[role])), None) if not args.quick else None
        if frontier_eval is not None:
            out[role] = frontier_eval
            continue
        ev = work / role / "eval"
        stamp = work / role / "stamp.json"
        settings = {"model": str(models[role]), "items": args.eval_items, "new_tokens": args.eval_new_tokens}
        with claimed(work / f"eval_{role}.lock"):
            if stamp.is_file() and json.loads(stamp.read_text()) == settings and (ev / "summary.json").is_file():
                out[role] = ev
                continue
            print(f"[{time.strftime('%H:%M:%S')}] evaluating {role}", flush=True)
            summary = evaluate_dir(models[role], ev, data, args,
                                   out["retain"] / "per_item.json" if role == "target" else None, role)
            if role == "retain":
                logs = read_logs(ev / "per_item.json")
                summary.update({k: v for k, v in compute_summary(logs, logs).items() if k != "logs"})
                (ev / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
            stamp.write_text(json.dumps(settings))
        out[role] = ev
    return out


def train_runs(specs: list[str], models: dict[str, Path], data: Path, args, work: Path,
               retain_eval) -> list[dict[str, Any]]:
    """Unlearning runs ``method:mode`` with the frontier's budget, trained and evaluated here (reused
    when their settings match); `retain_eval()` gives the retain model's eval directory."""
    from llm_unlearn.unlearn import run_unlearning

    runs = []
    for spec in specs:
        method, mode = spec.split(":")
        unlearn_method, hyper = METHODS[method]
        overrides = {"num_train_epochs": args.epochs, "learning_rate": LR[mode], "per_device_train_batch_size": 4,
                     "warmup_steps": 0.0, "seed": 0, "logging_steps": 5, "disable_tqdm": args.no_progress, **hyper}
        if args.quick:
            overrides["max_steps"] = 2
        name = f"{method}_{mode}"
        run_dir = work / "runs" / name
        settings = {"target": str(models["target"]), "overrides": overrides, "mode": mode, "lora_r": 8,
                    "eval_items": args.eval_items, "new_tokens": args.eval_new_tokens}
        stamp = run_dir / "robustness_settings.json"
        runs.append({"name": name, "dir": run_dir, "method": method, "mode": mode, "source": "trained here"})
        with claimed(run_dir.with_suffix(".lock")):
            if (stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(settings, default=str))
                    and (run_dir / "eval" / "summary.json").is_file()):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] training {name}", flush=True)
            t0 = time.time()
            run_unlearning(str(models["target"]), data, run_dir, unlearn_method, forget_split=args.forget_split, overrides=overrides, lora=mode == "lora", lora_r=8, lora_alpha=16,
                           overwrite=True, nll_max_retain=args.eval_items)
            train_s = time.time() - t0
            evaluate_dir(run_dir, run_dir / "eval", data, args, retain_eval() / "per_item.json", name)
            manifest = json.loads((run_dir / "run.json").read_text())
            manifest.update(name=name, role="unlearned", run_time_s=round(train_s, 1))
            (run_dir / "run.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
            stamp.write_text(json.dumps(settings, default=str))
    return runs


def frontier_runs(args) -> list[dict[str, Any]]:
    """Finished frontier runs whose weights are still in the cache: the best of each method (FQ, then
    MU), and every tuned row's chosen run (``tuned_NAME/chosen``: `llm-unlearn tune`, retain-free)."""
    best: dict[str, dict[str, Any]] = {}
    for runs_dir in sorted(Path(args.cache).glob("runs_*")):
        for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            tuned = run_dir.name.startswith("tuned_")
            if tuned:
                run_dir = run_dir / "chosen"
            manifest_path, summary_path = run_dir / "run.json", run_dir / "eval" / "summary.json"
            has_weights = any(run_dir.glob("*.safetensors"))
            if not (manifest_path.is_file() and summary_path.is_file() and has_weights):
                continue
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("role") != "unlearned" and not tuned:
                continue
            metrics = json.loads(summary_path.read_text()).get("metrics", {})
            score = (metrics.get("forget_quality") or 0.0, metrics.get("model_utility") or 0.0)
            method = run_dir.parent.name if tuned else \
                run_dir.name.split("_none_")[0].split("_random_")[0].split("_wagle_")[0]
            if tuned:
                best[method] = {"name": f"frontier:{method}", "dir": run_dir, "method": method,
                                "mode": "lora" if (run_dir / "adapter_config.json").is_file() else "full",
                                "source": str(runs_dir), "score": score}
                continue
            if method not in best or score > best[method]["score"]:
                best[method] = {"name": f"frontier:{run_dir.name}", "dir": run_dir, "method": method,
                                "mode": "lora" if (run_dir / "adapter_config.json").is_file() else "full",
                                "source": str(runs_dir), "score": score}
    return list(best.values())


def attack_results(name: str, model_dir: Path, plan, args, work: Path,
                   models: dict[str, Path] | None = None) -> dict[str, Any]:
    """`attack_model` on one model directory, cached by model, weights' mtime and attack settings.
    For an unlearned run (`models` = target and retain dirs) it adds the layer-wise CKA against both
    (and target vs retain)."""
    from llm_unlearn.eval.attacks import attack_model, hidden_representations, layer_cka, merged_model
    from llm_unlearn.unlearn import load_target

    weights = sorted(model_dir.glob("*.safetensors"))
    key = _key({"model": str(model_dir), "mtime": [w.stat().st_mtime for w in weights],
                "config": plan.config.__dict__, "rows": len(plan.rows), "cka_with": {k: str(v) for k, v in (models or {}).items()}})
    path = work / "attacks" / f"{name.replace(':', '_')}_{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with claimed(path.with_suffix(".lock")):
        if path.is_file():
            return json.loads(path.read_text())
        print(f"[{time.strftime('%H:%M:%S')}] attacking {name}", flush=True)
        t0 = time.time()
        model, tok = load_target(str(model_dir))
        res = attack_model(model, tok, plan, progress=not args.no_progress, desc=f"attacks on {name}")
        cfg = plan.config
        if models and "cka" in cfg.attacks:
            t1 = time.time()

            def reps(m):
                return hidden_representations(merged_model(m), tok, plan.rows, cfg.cka_max_tokens, cfg.seed, cfg.batch_size,
                                              cfg.cka_positions)

            mine = reps(model)
            del model
            others = {role: reps(load_target(str(d))[0]) for role, d in models.items()}
            res["cka"] = {f"unlearned_vs_{role}": layer_cka(mine, r) for role, r in others.items()}
            res["cka"]["target_vs_retain"] = layer_cka(others["target"], others["retain"])
            res["time_s"]["cka"] = round(time.time() - t1, 2)
        res["total_s"] = round(time.time() - t0, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res) + "\n")
    print(f"  {name}: {res['total_s']:.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in res['time_s'].items())})",
          flush=True)
    return res


def attack_all(jobs: list[tuple[str, Path, dict | None]], plan, args, work: Path) -> dict[str, dict]:
    """Every job attacked (each waits for a model another invocation is attacking, then reads its
    result); ``--reverse`` takes the jobs from the end, so two invocations share the work."""
    order = list(reversed(jobs)) if args.reverse else jobs
    return {name: attack_results(name, model_dir, plan, args, work, with_models)
            for name, model_dir, with_models in order}


def plot(rows: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(rows))
    for ax, metric in zip(axes, ("probability", "rougeL_recall")):
        for k, r in enumerate(rows):
            vals = [r["recovery"].get(n, {}).get(metric) for n in names]
            ax.bar(x + (k - (len(rows) - 1) / 2) * width, [v if v is not None else 0 for v in vals], width,
                   label=f"{r['run']} (FQ {r['forget_quality']:.3g})")
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(1, color="#d62728", lw=0.8, ls="--")
        ax.axhline(LIMIT_RECOVERY, color="gray", lw=0.8, ls=":")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"recovery of forget {metric}")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("(attacked - unlearned) / (target - unlearned)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(v: Any, d: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=default_data(), help="TOFU-layout directory (default ../shared/data/tofu)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "llm_unlearn" / "frontier"),
                   help="the frontier's cache (target / retain models, finished runs)")
    p.add_argument("--authors", type=int, default=20, help="first N TOFU authors (the frontier's 20)")
    p.add_argument("--forget-split", default="forget10",
                   help="forgetXX: the last XX%% of the authors (the frontier's forget10 of 20 = 2 authors)")
    p.add_argument("--ft-epochs", type=float, default=2.0, help="finetuning epochs of target and retain (the frontier's: 2)")
    p.add_argument("--ft-lr", type=float, default=4e-4, help="finetuning learning rate (the frontier's: 4e-4)")
    p.add_argument("--train", default=DEFAULT_TRAIN, help=f"runs trained here, method:mode (methods {', '.join(METHODS)})")
    p.add_argument("--no-frontier-runs", action="store_true", help="ignore finished frontier runs in the cache")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--sam-rho", type=float, default=None, help="override NPO-SAM's ρ (default 0.01)")
    p.add_argument("--eval-items", type=int, default=40)
    p.add_argument("--eval-new-tokens", type=int, default=48)
    p.add_argument("--attacks", default="all")
    p.add_argument("--relearn-lr", type=float, default=1e-4,
                   help="relearning lr (default 1e-4)")
    p.add_argument("--relearn-steps", default="10,30")
    p.add_argument("--quant-modes", default="int8,nf4,fp4", help="bitsandbytes modes (int8, nf4, fp4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke: one 2-step NPO-SAM LoRA run, 8-item evaluations, 8 new tokens, "
                   "relearn 2 steps, no int8")
    p.add_argument("--out", default=None, help="output prefix (default results/robustness[_quick])")
    p.add_argument("--reverse", action="store_true",
                   help="train the runs before evaluating target and retain, and attack the models in reverse order: a "
                        "second invocation beside the first shares the work")
    p.add_argument("--phase", default=None,
                   help="finetune:target or finetune:retain: only that, then exit (to run the two side by side; "
                        "parallel invocations share every other step through lock files)")
    args = p.parse_args(argv)
    if args.data is None:
        p.error("--data DIR is required")
    if args.sam_rho is not None:
        METHODS["npo_sam"][1]["sam_rho"] = args.sam_rho
    if args.quick:
        args.eval_items, args.eval_new_tokens = 8, 8
        if args.train == DEFAULT_TRAIN:
            args.train = "npo_sam:lora"
    import torch

    from llm_unlearn.eval.attacks import AttackConfig, build_plan, summarise, write_attacks

    torch.set_num_threads(args.threads)
    t_start = time.time()
    cache = Path(args.cache)
    out_prefix = Path(args.out) if args.out else RESULTS / ("robustness_quick" if args.quick else "robustness")
    work = cache / ("robustness_quick" if args.quick else "robustness")
    work.mkdir(parents=True, exist_ok=True)
    subset = f"data_{args.authors}authors" + ("" if args.forget_split == "forget10" else f"_{args.forget_split}")
    data = write_tofu_subset(args.data, cache / subset, args.authors, args.forget_split)
    timings: dict[str, float] = {}

    if args.phase:
        role = args.phase.removeprefix("finetune:")
        if role not in ("target", "retain"):
            p.error(f"--phase must be finetune:target or finetune:retain, got {args.phase}")
        frontier_models(args, data, work, roles=(role,))
        return 0
    models = frontier_models(args, data, work)
    specs = [s for s in args.train.split(",") if s]

    def evals_now() -> dict[str, Path]:
        t0 = time.time()
        out = baseline_evals(models, data, args, work)
        timings["baselines_s"] = round(time.time() - t0, 1)
        return out

    # --reverse: train first (a second invocation trains while the first evaluates target and retain)
    evals = None if args.reverse else evals_now()
    t0 = time.time()
    runs = train_runs(specs, models, data, args, work, lambda: (evals or baseline_evals(models, data, args, work))["retain"])
    timings["train_runs_s"] = round(time.time() - t0, 1)
    evals = evals or evals_now()
    if not args.no_frontier_runs:
        runs += frontier_runs(args)

    if args.quick:
        args.relearn_steps = "2"
    cfg = AttackConfig(attacks=args.attacks, relearn_steps=tuple(int(s) for s in args.relearn_steps.split(",")),
                       relearn_lr=args.relearn_lr, max_new_tokens=args.eval_new_tokens,
                       quant_modes=("nf4", "fp4") if args.quick else tuple(args.quant_modes.split(",")))
    plan = build_plan(data, args.forget_split, cfg)
    t0 = time.time()
    jobs = [(role, models[role], None) for role in ("target", "retain")]
    jobs += [(run["name"], run["dir"], {"target": models["target"], "retain": models["retain"]}) for run in runs]
    attacked = attack_all(jobs, plan, args, work)
    base_res = {role: attacked[role] for role in ("target", "retain")}
    rows, summaries = [], {}
    for run in runs:
        res = attacked[run["name"]]
        cka = res.get("cka")
        summary = summarise(plan, {"unlearned": res, **base_res}, cka,
                            {"unlearned": str(run["dir"]), "target": str(models["target"]),
                             "retain": str(models["retain"])})
        write_attacks(run["dir"] / "attacks", {"summary": summary, "per_item": {"values": {"unlearned": res["values"]}}})
        summaries[run["name"]] = summary
        ev = json.loads((run["dir"] / "eval" / "summary.json").read_text())["metrics"]
        rows.append({"run": run["name"], "method": run["method"], "mode": run["mode"], "source": run["source"],
                     "forget_quality": ev.get("forget_quality"), "model_utility": ev.get("model_utility"),
                     "forget_probability": ev.get("forget_probability"),
                     "recovery": {n: e.get("recovery") or {} for n, e in summary["attacks"].items()},
                     "attacked": {n: e["unlearned"]["after"] for n, e in summary["attacks"].items()},
                     "before": {n: e["unlearned"]["before"] for n, e in summary["attacks"].items()},
                     "cka": {k: v["mean"] for k, v in summary.get("cka", {}).items()},
                     "cka_shift": summary.get("cka_shift"),
                     "attack_s": res.get("total_s")})
    timings["attacks_s"] = round(time.time() - t0, 1)
    total_min = (time.time() - t_start) / 60

    names = list(next(iter(summaries.values()))["attacks"]) if summaries else []
    any_summary = next(iter(summaries.values()), None)
    baseline_rows = []
    if any_summary:
        for role in ("target", "retain"):
            baseline_rows.append({"run": role, "recovery": {n: e.get(f"{role}_recovery") or {}
                                                              for n, e in any_summary["attacks"].items()},
                                  "attacked": {n: e[role]["after"] for n, e in any_summary["attacks"].items()},
                                  "before": {n: e[role]["before"] for n, e in any_summary["attacks"].items()}})
    target_fq = json.loads((evals["target"] / "summary.json").read_text())["metrics"]["forget_quality"]

    four_bit = [n for n in FOUR_BIT if n in names]  # the 4-bit modes that were run (NF4 and / or FP4)

    def robust(row: dict, metrics: tuple[str, ...]) -> tuple[bool, float | None]:
        worst = [row["recovery"].get(n, {}).get(m) for n in (*four_bit, f"relearn_{cfg.relearn_steps[0]}") for m in metrics]
        if not four_bit or any(v is None for v in worst):
            return False, None
        return max(worst) <= LIMIT_RECOVERY, max(worst)

    found = []
    for r in rows:
        ok_p, worst_p = robust(r, ("probability",))
        ok_both, worst_both = robust(r, ("probability", "rougeL_recall"))
        r["worst_recovery_probability"], r["worst_recovery_both"] = worst_p, worst_both
        r["fq_above_target"] = (r["forget_quality"] or 0) > target_fq
        if ok_p and r["fq_above_target"]:
            found.append({"run": r["run"], "fq": r["forget_quality"], "worst_probability": worst_p,
                          "worst_with_rougeL": worst_both, "holds_on_rougeL_too": ok_both})
    best = max(found, key=lambda f: f["fq"]) if found else None  # of the robust runs, the one that forgot most
    candidates = [r for r in rows if r["fq_above_target"] and r["worst_recovery_probability"] is not None]
    closest = min(candidates, key=lambda r: r["worst_recovery_probability"]) if candidates else None
    result = {
        "benchmark": "robustness", "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/robustness.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"data": str(data), "models": {k: str(v) for k, v in models.items()},
                     "attack_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
                     "split": plan.describe(), "authors": args.authors, "forget_split": args.forget_split,
                     "ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr, "train": specs, "methods": METHODS, "lr": LR, "epochs": args.epochs,
                     "eval_items": args.eval_items, "eval_new_tokens": args.eval_new_tokens, "threads": args.threads,
                     "target_forget_quality": target_fq, "quick": args.quick},
        "rows": rows, "baselines": baseline_rows, "timings_s": timings, "total_min": round(total_min, 2),
        "targets": [
            {"target": "whole robustness benchmark: this invocation's wall time (evaluations, training the runs of "
                       "--train unless cached, attacks on every model; target / retain finetuning not counted when "
                       "cached)", "limit": f"<= {LIMIT_MINUTES} min",
             "measured": f"{total_min:.1f} min", "pass": total_min <= LIMIT_MINUTES},
            {"target": f"an unlearned run with 4-bit ({' and '.join(n.removeprefix('quantize_') for n in four_bit) or 'none run'}) "
                       f"and relearn-{cfg.relearn_steps[0]} recovery <= 0.2 on forget probability "
                       "and forget quality above the target's",
             "limit": f"recovery <= {LIMIT_RECOVERY}, FQ > {target_fq:.3g}",
             "measured": (f"{best['run']}: FQ {best['fq']:.3g}, worst recovery {best['worst_probability']:.2f} "
                          f"(with ROUGE-L: {_f(best['worst_with_rougeL'])})") if best else
                         ("none; closest with FQ above the target's: " + (
                             f"{closest['run']} (worst recovery {closest['worst_recovery_probability']:.2f})"
                             if closest else "no run with FQ above the target's has every recovery measured")),
             "pass": best is not None},
        ],
        "found": found,
    }
    # the compute behind everything in the table, whichever invocation (or earlier run) did it
    compute = {"finetune_s": sum(json.loads((models[r] / "finetune_s.json").read_text())["finetune_s"]
                                 for r in ("target", "retain") if (models[r] / "finetune_s.json").is_file()),
               "baseline_evals_s": sum(json.loads((evals[r] / "summary.json").read_text()).get("eval_time_s") or 0
                                       for r in ("target", "retain")),
               "runs_train_s": sum(json.loads((r["dir"] / "run.json").read_text()).get("run_time_s") or 0 for r in runs),
               "runs_eval_s": sum(json.loads((r["dir"] / "eval" / "summary.json").read_text()).get("eval_time_s") or 0
                                  for r in runs),
               "attacks_s": sum(a.get("total_s") or 0 for a in attacked.values())}
    compute["total_min"] = round(sum(compute.values()) / 60, 1)
    # this benchmark's own work: the attacks, and the evaluations and runs it made itself; the models,
    # runs and evaluations it reuses from the frontier's cache are the frontier's work (its own benchmark)
    frontier_dirs = [d.resolve() for d in Path(args.cache).glob("runs_*")]

    def from_frontier(path: Path) -> bool:
        return any(path.resolve().is_relative_to(d) for d in frontier_dirs)

    own = {"attacks_s": compute["attacks_s"],
           "baseline_evals_s": sum(json.loads((evals[r] / "summary.json").read_text()).get("eval_time_s") or 0
                                   for r in ("target", "retain") if not from_frontier(evals[r])),
           "runs_s": sum((json.loads((r["dir"] / "run.json").read_text()).get("run_time_s") or 0)
                         + (json.loads((r["dir"] / "eval" / "summary.json").read_text()).get("eval_time_s") or 0)
                         for r in runs if not from_frontier(r["dir"])),
           "finetune_s": compute["finetune_s"]}
    compute["own_total_min"] = round(sum(own.values()) / 60, 1)
    compute["own"] = own
    result["compute_s"] = compute
    # the target is judged on the whole benchmark's work shared by two single-thread workers (2 cores), not
    # on this invocation alone, which may have found most of it cached
    result["targets"][0].update(
        target="whole robustness benchmark on 2 cores: the compute of this benchmark's own work (attacks; "
               "evaluations, unlearning runs and finetuning when it made them rather than reusing the frontier's), "
               "summed over single-thread workers, divided by 2 workers",
        measured=f"{compute['own_total_min'] / 2:.1f} min ({compute['own_total_min']} min of single-thread compute; "
                 f"with the reused frontier runs' training and evaluations charged too: {compute['total_min'] / 2:.1f} "
                 f"min; this invocation {total_min:.1f} min wall)",
        **{"pass": compute["own_total_min"] / 2 <= LIMIT_MINUTES})
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_prefix.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(rows, names, out_prefix.with_suffix(".png"))

    header = ["Run", "FQ", "MU", *[f"{n}" for n in names], "CKA vs target", "CKA vs retain", "CKA shift", "attack s"]
    table = []
    for r in rows:
        table.append([r["run"], _f(r["forget_quality"], 3), _f(r["model_utility"], 3),
                      *[f"{_f(r['recovery'].get(n, {}).get('probability'))} / {_f(r['recovery'].get(n, {}).get('rougeL_recall'))}"
                        for n in names],
                      _f(r["cka"].get("unlearned_vs_target"), 3), _f(r["cka"].get("unlearned_vs_retain"), 3),
                      _f(r.get("cka_shift"), 2), _f(r["attack_s"], 0)])
    for b in baseline_rows:
        table.append([f"({b['run']} attacked)", "", "",
                      *[f"{_f(b['recovery'].get(n, {}).get('probability'))} / {_f(b['recovery'].get(n, {}).get('rougeL_recall'))}"
                        for n in names], "", "", "", ""])
    values = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, src in [(r["run"], r) for r in rows] + [(b["run"], b) for b in baseline_rows]:
        cells = [f"{_f(src['before'][n].get('probability'), 3)}→{_f(src['attacked'][n].get('probability'), 3)}"
                 for n in names]
        values.append(f"| {label} | " + " | ".join(cells) + " |")
    md = [f"# Robustness of unlearning: SmolLM2, TOFU first {args.authors} authors, {args.forget_split}", "",
          f"Recovery = (attacked − unlearned) / (target − unlearned), forget probability / ROUGE-L, on the attack's "
          f"items (relearn_k: half B, {len(plan.b_idx)} items, after k steps on half A, lr {cfg.relearn_lr}, batch "
          f"{cfg.relearn_batch_size}; others: all {len(plan.rows)} forget items). 0 = nothing comes back, 1 = the "
          f"target's level. Target FQ {target_fq:.3g}. Rows in parentheses: the target and retain models attacked, on "
          "the scale of the first run (the target's row is the ceiling of each attack, the retain model's what the "
          "attack teaches a model that never saw the data).", "",
          md_table(header, table), "",
          "Forget probability before → after each attack (per model):", "", *values, "",
          f"![recovery per attack per run]({out_prefix.with_suffix('.png').name})", "",
          "Targets:", "", *[f"- {t['target']}: limit {t['limit']}, measured {t['measured']}: "
                            f"**{'pass' if t['pass'] else 'fail'}**" for t in result["targets"]], "",
          f"Time: {total_min:.1f} min ({', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())}), "
          f"{args.threads} threads. Command: `{result['command']}`", ""]
    out_prefix.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
