"""The main job, end to end on the embedded default (synthetic fictitious authors, `tiny` model):

data → target (finetuned on `full`) and retain (on `retain90`) models → GradDiff, NPO and
NPO + WAGLE over LoRA → S3T exact deletion of one author → TOFU evaluation of every model →
report (Markdown, HTML, PNG) + ``summary.json`` + a printed table.

`model="smollm2"` runs the same on SmolLM2-135M-Instruct (after ``llm-unlearn models fetch``),
`data=DIR` on a local TOFU copy (the first `authors` authors)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_unlearn.console import TRAINER_LOG_FILE, extra_trainer_log
from llm_unlearn.data.source import source_meta
from llm_unlearn.data.synthetic import generate, write_splits
from llm_unlearn.data.tofu import (
    available_splits,
    forget_percent,
    is_local_source,
    load_tofu,
    matching_retain_split,
    outside_authors_rows,
)
from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.evaluator import evaluate_model, write_eval
from llm_unlearn.eval.logs import compute_summary, read_logs
from llm_unlearn.eval.report import build_report
from llm_unlearn.finetune import FinetuneConfig, finetune
from llm_unlearn.models import resolve_model_path
from llm_unlearn.outputs import staged_dir
from llm_unlearn.runinfo import read_manifest
from llm_unlearn.s3t.serve import load_s3t_model
from llm_unlearn.s3t.service import compare_with_reference, delete_samples, purge, retrain
from llm_unlearn.s3t.train import S3TConfig, default_head, load_run, train_s3t
from llm_unlearn.unlearn import load_target, run_unlearning

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    output: str = "demo_out"
    model: str = "tiny"
    data: str | None = None  # None: synthesise
    authors: int = 20
    qa_per_author: int = 10
    forget_split: str = "forget10"
    seed: int = 0
    small: bool = False  # CI size: fewer authors, fewer steps
    eval_max_new_tokens: int = 48
    eval_max_items: int | None = None
    # finetuning (target and retain alike)
    ft_epochs: float = 15.0
    ft_lr: float = 3e-3
    ft_batch_size: int = 16
    # unlearning over LoRA (same budget per method)
    unlearn_epochs: float = 10.0
    unlearn_lr: float = 2e-3
    unlearn_batch_size: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    npo_beta: float = 0.5
    wagle_ratio: float = 0.5
    # GradDiff's forget term (gradient ascent) is unbounded: at NPO's learning rate it drove the
    # forget NLL from 0.14 to 19 nats and model utility from 0.86 to 0.56 on the default demo; at a
    # quarter of it, utility stays at 0.99x the target's and the forget quality still rises 8x
    graddiff_lr_scale: float = 0.25
    # S3T
    s3t_shards: int = 2
    s3t_slices: int = 2
    s3t_sequences: int = 2
    s3t_epochs_per_stage: float = 10.0
    s3t_lr: float = 3e-3
    s3t_prompt_loss: bool = False
    s3t_lora_r: int | None = None  # None: lora_r (alpha = 2r)
    s3t_layout: str = "blocks"  # llm_unlearn.s3t.train.LAYOUTS
    s3t_lr_schedule: str = "constant"  # llm_unlearn.s3t.train.LR_SCHEDULES
    # llm_unlearn.s3t.train.HEADS; None: lora for tiny (with its head frozen the served ensemble kept 0.67-0.71x
    # the single model's utility, with a head LoRA 0.92-0.95x: benchmarks/s3t_deletion.py, 3 seeds), none
    # for a pretrained model
    s3t_head: str | None = None
    # tiny: the S3T base's disjoint corpus states each fact in two wordings (its answer and its
    # paraphrase), as a pretrained LLM has seen facts stated many ways
    s3t_base_paraphrases: bool = False
    # tiny: fictitious authors in the S3T base's disjoint corpus (None: as many as the demo data has)
    s3t_base_authors: int | None = None
    # train and serve the exact-retrain reference (the same plan without the forget authors) and
    # compare: the proof that the deletion was exact. Off only to save its S3T training in a
    # benchmark whose exactness another run already showed.
    s3t_reference: bool = True
    methods: list[str] = field(default_factory=lambda: ["graddiff", "npo", "npo_wagle"])

    def __post_init__(self):
        if self.small:
            self.authors = min(self.authors, 10)
            self.ft_epochs = min(self.ft_epochs, 12.0)
            self.unlearn_epochs = min(self.unlearn_epochs, 8.0)
            self.s3t_epochs_per_stage = min(self.s3t_epochs_per_stage, 8.0)
        if self.model != "tiny":
            # a pretrained model: gentler finetuning / unlearning
            self.ft_epochs, self.ft_lr, self.ft_batch_size = 3.0, 1e-4, 8
            self.unlearn_lr, self.unlearn_epochs = 2e-4, 5.0
            self.eval_max_new_tokens = 64


# name -> (method, overrides, mask method)
def _method_runs(cfg: DemoConfig) -> dict[str, tuple[str, dict[str, Any], str | None]]:
    npo = {"beta": cfg.npo_beta, "alpha": 1.0}
    return {
        "graddiff": ("grad_diff", {"alpha": 1.0, "learning_rate": cfg.unlearn_lr * cfg.graddiff_lr_scale}, None),
        "npo": ("npo", npo, None),
        "npo_wagle": ("npo", npo, "wagle"),
    }


def _print_table(rows: list[dict[str, Any]]) -> str:
    cols = [("run", "Run"), ("forget_quality", "Forget quality"), ("model_utility", "Model utility"),
            ("forget_rougeL_recall", "Forget ROUGE-L"), ("forget_probability", "Forget prob"),
            ("forget_truth_ratio", "Forget TR"), ("time_s", "Time (s)")]

    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
        return str(v)

    table = [[h for _, h in cols]] + [[fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the demo into `cfg.output`; returns the summary written to ``summary.json``."""
    t_start = time.time()
    if cfg.model != "tiny":
        resolve_model_path(cfg.model)  # fail early: "run llm-unlearn models fetch"

    if cfg.data is not None and not is_local_source(cfg.data):
        raise UnlearnError(f"--data {cfg.data} is not a directory")
    inputs = [cfg.data, None if cfg.model in ("tiny", "smollm2") else cfg.model]
    with staged_dir(cfg.output, overwrite, inputs) as stage:
        # every Trainer log dict of every stage also lands in OUTPUT/trainer_log.jsonl (not on the console)
        with extra_trainer_log(stage.path / TRAINER_LOG_FILE):
            summary = _run_demo_into(cfg, stage.path, t_start)
    out = stage.final
    summary = json.loads((out / "summary.json").read_text())  # with the paths of the final place
    print(f"\nreport: {out / 'report' / 'report.html'}  summary: {out / 'summary.json'}"
          f"  total {summary['total_time_s']:.0f} s")
    return summary


def _run_demo_into(cfg: DemoConfig, out: Path, t_start: float) -> dict[str, Any]:
    """The demo's work, written into `out` (the staging directory of `cfg.output`)."""
    retain_split = matching_retain_split(cfg.forget_split)
    timings: dict[str, float] = {}

    # 1. data
    if cfg.data is None:
        data = write_splits(generate(cfg.authors, cfg.qa_per_author, seed=cfg.seed), out / "data")
        max_authors = None
    else:
        data = Path(cfg.data)
        load_tofu(cfg.forget_split, data)
        max_authors = cfg.authors
    # With --data DIR and a subset of authors, write the subset as a source of its own so every
    # stage (finetune, unlearn, eval, S3T) sees the same items.
    if max_authors is not None:
        data = _subset_source(data, out / "data", cfg)
    n_forget = len(load_tofu(cfg.forget_split, data))
    shown = Path(cfg.output) / Path(data).relative_to(out) if Path(data).is_relative_to(out) else data
    print(f"data: {cfg.authors} {'synthetic' if cfg.data is None else 'TOFU'} authors in {shown}; "
          f"{cfg.forget_split} = {n_forget} QA to forget; model: {cfg.model}")

    def evaluate(run_dir: Path, model, tokenizer, name: str, retain_logs=None) -> dict[str, Any]:
        t0 = time.time()
        result = evaluate_model(model, tokenizer, data, forget_split=cfg.forget_split, retain_logs=retain_logs,
                                max_items=cfg.eval_max_items, max_new_tokens=cfg.eval_max_new_tokens,
                                model_name=name)
        write_eval(run_dir / "eval", result)
        timings[f"eval_{name}"] = time.time() - t0
        return result["summary"]

    # 2. target and retain models
    summaries: dict[str, dict[str, Any]] = {}
    for role, split in (("retain", retain_split), ("target", "full")):
        t0 = time.time()
        run_dir = out / role
        run_dir.mkdir()
        finetune(FinetuneConfig(model=cfg.model, data=str(data), split=split, output=str(run_dir),
                                epochs=cfg.ft_epochs, lr=cfg.ft_lr, batch_size=cfg.ft_batch_size, seed=cfg.seed,
                                stage=f"finetune {role} ({split})"))
        timings[f"finetune_{role}"] = time.time() - t0
        _tag(run_dir, role=role, run_time_s=timings[f"finetune_{role}"])
        model, tokenizer = load_target(str(run_dir))
        retain_logs = out / "retain" / "eval" / "per_item.json" if role == "target" else None
        summaries[role] = evaluate(run_dir, model, tokenizer, role, retain_logs)
    retain_logs = out / "retain" / "eval" / "per_item.json"
    # the retain model's own forget quality needs its logs as the reference: re-score, no new forward pass
    summaries["retain"] = _rescore(out / "retain", retain_logs)

    # 3. approximate unlearning over LoRA
    runs = _method_runs(cfg)
    for name in cfg.methods:
        method, hyper, mask_method = runs[name]
        t0 = time.time()
        overrides = {"num_train_epochs": cfg.unlearn_epochs, "learning_rate": cfg.unlearn_lr,
                     "per_device_train_batch_size": cfg.unlearn_batch_size, "seed": cfg.seed,
                     "logging_steps": 5, "warmup_steps": 0.0, **hyper}
        run_dir, _ = run_unlearning(
            str(out / "target"), data, out / name, method, forget_split=cfg.forget_split,
            retain_split=retain_split, overrides=overrides, lora=True, lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha, mask_method=mask_method,
            mask_ratio=cfg.wagle_ratio if mask_method else None, overwrite=True,
        )
        timings[f"unlearn_{name}"] = time.time() - t0
        _tag(run_dir, role="unlearned", name=name, run_time_s=timings[f"unlearn_{name}"])
        model, tokenizer = load_target(str(run_dir))
        summaries[name] = evaluate(run_dir, model, tokenizer, name, retain_logs)

    # 4. S3T: train on full, delete the forget authors exactly, evaluate the served ensemble
    summaries["s3t_deleted"] = _s3t(cfg, data, out, retain_logs, evaluate, timings)

    # 5. report
    order = ["target", "retain", *cfg.methods, "s3t_deleted"]
    report = build_report([out / n for n in order], out / "report", title="llm-unlearn demo")
    rows = []
    for n in order:
        m = summaries[n].get("metrics", {})
        rows.append({"run": n, **{k: m.get(k) for k in ("forget_quality", "model_utility", "forget_rougeL_recall",
                                                       "forget_probability", "forget_truth_ratio")},
                     "time_s": round(read_manifest(out / n).get("run_time_s", 0.0), 1)})
    table = _print_table(rows)
    notes = row_notes(rows, cfg)
    summary = {
        "config": asdict(cfg), "data": str(data), "rows": rows,
        "forget_quality": {r["run"]: r["forget_quality"] for r in rows},
        "model_utility": {r["run"]: r["model_utility"] for r in rows},
        "ks_floor_pvalue": summaries["target"].get("forget_quality_floor"),
        "s3t_exactness": summaries["s3t_deleted"].get("s3t_exactness"),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "total_time_s": round(time.time() - t_start, 1),
        "report": {k: str(v) for k, v in report.items()},
        "row_notes": notes,
    }
    notes_text = "\n".join(f"  {name:<{max(map(len, notes))}}  {note}" for name, note in notes.items())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "table.txt").write_text(table + "\n\nWhat each row is:\n" + notes_text + "\n")
    print()
    print(table)
    print("\nWhat each row is:")
    print(notes_text)
    exact = summary["s3t_exactness"] or {}
    if exact and exact["forget_quality_vs_reference"] is None:
        print(f"\nS3T ({exact['aggregate']}): forget quality {_fmt_or_na(exact['forget_quality_vs_retain_model'])} vs "
              f"the single retain model; {exact['meaning']}.")
    elif exact:
        print(f"\nS3T ({exact['aggregate']}): forget quality {exact['forget_quality_vs_reference']:.3g} vs the "
              f"exact-retrain reference (served weights bit-identical: {exact['served_weights_identical_to_reference']}),"
              f" {_fmt_or_na(exact['forget_quality_vs_retain_model'])} vs the single retain model. {S3T_FQ_MEANING}")
    return summary


def _fmt_or_na(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


# A utility below this fraction of the target's is a collapse: the forget set is "forgotten" because
# the model no longer answers anything.
COLLAPSE_MU_RATIO = 0.5


def row_notes(rows: list[dict[str, Any]], cfg: DemoConfig) -> dict[str, str]:
    """One short line per row of the demo's table: what the row is and how to read its numbers."""
    mu = {r["run"]: r.get("model_utility") for r in rows}
    target_mu = mu.get("target")
    known = {
        "target": "finetuned on every author: the model to unlearn; its FQ is the floor to beat",
        "retain": f"finetuned without the {cfg.forget_split} authors: every row's FQ is measured against it",
        "graddiff": "approximate: GradDiff over LoRA (forget ascent, retain descent)",
        "npo": f"approximate: NPO + retain term over LoRA (beta {cfg.npo_beta:g})",
        "npo_wagle": f"approximate: NPO + retain term; only the {cfg.wagle_ratio:.0%} of weights WAGLE picks change",
    }
    notes: dict[str, str] = {}
    for row in rows:
        name = row["run"]
        approximate = name not in ("target", "retain")
        if name == "s3t_deleted":
            approximate = False
            note = (f"exact: no served stage saw {cfg.forget_split} (s3t verify); FQ compares a LoRA ensemble "
                    "with the retain model, not exactness")
        elif "reference" in name or "retrain" in name:
            approximate = False
            note = "exact-retrain reference: the same pipeline trained without the forget authors"
        else:
            note = known.get(name, "")
        value = mu.get(name)
        if approximate and value is not None and target_mu and value < COLLAPSE_MU_RATIO * target_mu:
            note += f"; COLLAPSED: MU {value:.3f} vs target {target_mu:.3f}: FQ means nothing"
        notes[name] = note
    return notes


def _tag(run_dir: Path, **fields: Any) -> None:
    path = Path(run_dir) / "run.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def _rescore(run_dir: Path, retain_logs: Path) -> dict[str, Any]:
    summary_path = run_dir / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text())
    logs = read_logs(retain_logs)
    rescored = compute_summary(logs, logs)
    rescored.pop("logs", None)
    summary.update({k: v for k, v in rescored.items()})
    summary_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _subset_source(source: Path, out: Path, cfg: DemoConfig) -> Path:
    """The first `cfg.authors` authors of a TOFU-layout source (forget = the last 10 % of them)."""
    full = load_tofu("full", source).to_list()
    per_author = 20
    n = cfg.authors * per_author
    if n > len(full):
        raise UnlearnError(f"--authors {cfg.authors} needs {n} items, {source}/full has {len(full)}")
    rows = full[:n]
    k = max(1, round(cfg.authors * forget_percent(cfg.forget_split) / 100)) * per_author
    perturbed = {r["question"]: r for name in available_splits(source) if name.endswith("_perturbed")
                 and name.startswith(("forget", "retain")) for r in load_tofu(name, source).to_list()}
    forget = rows[-k:]
    missing = [r["question"] for r in forget if r["question"] not in perturbed]
    if missing:
        raise UnlearnError(f"{source}: no perturbed answers for forget item '{missing[0][:60]}'")
    tag = cfg.forget_split.removeprefix("forget")
    splits = {
        "full": rows, cfg.forget_split: forget, f"retain{100 - int(tag):02d}": rows[:-k],
        f"{cfg.forget_split}_perturbed": [perturbed[r["question"]] for r in forget],
        "retain_perturbed": [perturbed[r["question"]] for r in rows[:-k] if r["question"] in perturbed][:k],
    }
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        splits[name] = load_tofu(name, source).to_list()
    if len(splits["retain_perturbed"]) < k:
        raise UnlearnError(f"{source}: too few retain items with perturbed answers among the first {cfg.authors} authors")
    try:  # holdout: authors outside the subset (the reference of the retain-free scores)
        splits[f"holdout{tag}"] = outside_authors_rows(source, cfg.authors, n_items=k,
                                                       exclude_questions={r["question"] for r in forget})
    except UnlearnError:
        pass  # no such items: the retain-free scores show n/a with the reason
    return write_splits(splits, out)


S3T_FQ_MEANING = (
    "Against the exact-retrain reference (the same S3T plan and seeds, trained without the forget authors from "
    "the start) forget quality is 1.0 because the served weights are bit-identical: the deletion is exact. "
    "Against the single retain model (one model finetuned on the retain authors) it compares two different "
    "training procedures that both never saw the forget authors: a value below 1 there measures how the "
    "procedures differ, not a leak.")


def s3t_base_corpus(cfg: DemoConfig, data: Path):
    """The tiny S3T base's disjoint corpus: `cfg.s3t_base_authors` other fictitious authors (another
    seed), none named like an author or holdout author of `data` (its meta.json names them), each
    fact also in its paraphrase's wording with `cfg.s3t_base_paraphrases`."""
    meta = source_meta(data)
    splits = generate(cfg.s3t_base_authors or cfg.authors, cfg.qa_per_author, seed=cfg.seed + 1,
                      paraphrased_full=cfg.s3t_base_paraphrases,
                      exclude_names=[*meta.get("authors", []), *meta.get("holdout_authors", [])])
    if cfg.s3t_base_paraphrases:
        splits["full"] = splits["full"] + splits.pop("full_paraphrased")
    return splits


def _s3t(cfg: DemoConfig, data: Path, out: Path, retain_logs: Path, evaluate, timings) -> dict[str, Any]:
    base = cfg.model
    if cfg.model == "tiny":
        # LoRA alone cannot teach a random 1 M-parameter model (its embeddings stay frozen), so
        # S3T gets what a pretrained LLM brings: a base pretrained on a disjoint corpus (other
        # fictitious authors, same kinds of facts, another seed) and the utility sets. It never
        # sees the demo's authors; everything it learns about them sits in deletable LoRA slices.
        corpus = write_splits(s3t_base_corpus(cfg, data), out / "s3t_pretrain_data")
        base_dir = out / "s3t_base"
        base_dir.mkdir()
        finetune(FinetuneConfig(model="tiny", data=str(corpus), split="full", with_utility=True,
                                output=str(base_dir), epochs=cfg.ft_epochs, lr=cfg.ft_lr,
                                batch_size=cfg.ft_batch_size, seed=cfg.seed, stage="finetune s3t base"))
        base = str(base_dir)
    settings = dict(model=base, data=str(data), split="full", shards=cfg.s3t_shards, slices=cfg.s3t_slices,
                    sequences=cfg.s3t_sequences, epochs_per_stage=cfg.s3t_epochs_per_stage, lr=cfg.s3t_lr,
                    seed=cfg.seed, lora_r=cfg.s3t_lora_r or cfg.lora_r,
                    lora_alpha=2 * cfg.s3t_lora_r if cfg.s3t_lora_r else cfg.lora_alpha, prompt_loss=cfg.s3t_prompt_loss,
                    layout=cfg.s3t_layout, lr_schedule=cfg.s3t_lr_schedule, head=cfg.s3t_head or default_head(cfg.model),
                    with_utility=cfg.model == "tiny")  # as the demo's tiny single models are finetuned
    run_dir = out / "s3t_deleted"
    run_dir.mkdir()
    t0 = time.time()
    train_s3t(S3TConfig(output=str(run_dir), **settings))
    timings["s3t_train"] = time.time() - t0
    t1 = time.time()
    forget_questions = {r["question"] for r in load_tofu(cfg.forget_split, data)}
    ledger, *_ = load_run(run_dir)
    ids = [s["sample_id"] for s in ledger.samples(ledger.sample_ids()) if s["question"] in forget_questions]
    result = delete_samples(run_dir, ids=ids)
    timings["s3t_delete"] = time.time() - t1
    print(f"s3t delete: {len(ids)} samples of {cfg.forget_split} in {timings['s3t_delete'] * 1000:.0f} ms; shards "
          f"{result.affected_shards} affected" + (f", {result.retrain_shards} lost every sequence: retraining them"
                                                   if result.retrain_shards else ", every one still served"))
    # A whole author is many deletions: shards where no sequence survives are retrained without it;
    # either way every checkpoint that saw it, and its text in the ledger, is purged.
    t2 = time.time()
    retrained = retrain(run_dir) if result.retrain_shards else []
    if not result.retrain_shards:
        purge(run_dir)
    timings["s3t_retrain"] = time.time() - t2
    _tag(run_dir, role="unlearned", name="s3t_deleted", run_time_s=timings["s3t_delete"] + timings["s3t_retrain"],
         deletion={"samples": len(ids), "status": result.status, "affected_shards": result.affected_shards,
                   "retrained_shards": retrained, "delete_s": round(timings["s3t_delete"], 4),
                   "retrain_s": round(timings["s3t_retrain"], 2)})
    model = load_s3t_model(run_dir)
    summary = evaluate(run_dir, model, model.tokenizer, "s3t_deleted", retain_logs)
    exactness = summary["s3t_exactness"] = {
        "aggregate": model.aggregate, "served_weights_identical_to_reference": None, "forget_quality_vs_reference": None,
        "forget_quality_vs_retain_model": summary.get("metrics", {}).get("forget_quality"),
        "meaning": "no exact-retrain reference was trained (s3t_reference off)",
    }
    if not cfg.s3t_reference:
        return summary
    # The exact-retrain reference: the same plan and seeds with the forget authors left out from the
    # start, served at the same prefixes. Exact deletion means the two are the same model.
    ref_dir = out / "s3t_reference"
    ref_dir.mkdir()
    t3 = time.time()
    train_s3t(S3TConfig(output=str(ref_dir), exclude_split=cfg.forget_split, **settings))
    timings["s3t_reference_train"] = time.time() - t3
    reference = load_s3t_model(ref_dir, serve_like=run_dir)
    evaluate(ref_dir, reference, reference.tokenizer, "s3t_reference")
    exactness.update(
        served_weights_identical_to_reference=compare_with_reference(run_dir, ref_dir)["identical"],
        forget_quality_vs_reference=compute_summary(read_logs(run_dir / "eval" / "per_item.json"),
                                                    read_logs(ref_dir / "eval" / "per_item.json"))["metrics"]["forget_quality"],
        meaning=S3T_FQ_MEANING)
    return summary
