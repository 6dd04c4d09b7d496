"""`run_unlearning`: the one library entry point the CLI, recipes and demo call. It loads the model,
tokenizer and forget/retain splits, builds the method's trainer (`llm_unlearn.trainers.METHODS`),
trains, saves the unlearned model (or LoRA adapter) with its tokenizer, and writes ``run.json``
with the mean answer NLL of the forget and retain sets before and after."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llm_unlearn import masks
from llm_unlearn.checks import check_file, check_fraction
from llm_unlearn.console import format_loss, is_verbose, stage_bar
from llm_unlearn.data.corpus import (
    check_corpus_overlap,
    check_input_kinds,
    chunk_corpus,
    corpus_hash,
    load_corpus,
)
from llm_unlearn.data.pairing import ForgetRetainDataset
from llm_unlearn.data.qa import QACollator, check_tokenizer, template_settings, tokenize_qa_dataset
from llm_unlearn.data.tofu import load_tofu, matching_retain_split, read_refusals
from llm_unlearn.errors import DivergenceError, TrainingInterrupted, UnlearnError
from llm_unlearn.eval.evaluator import holdout_rows, score_splits
from llm_unlearn.eval.metrics import forgetting_direction
from llm_unlearn.interrupt import SaveOnInterrupt, last_checkpoint
from llm_unlearn.models import (
    ADAPTER_MASK_FILE,
    attach_lora,
    is_adapter_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
)
from llm_unlearn.outputs import check_output, staged_dir, staging_path
from llm_unlearn.runinfo import data_hash, write_manifest
from llm_unlearn.scoring import per_item_nll
from llm_unlearn.threads import apply_thread_policy
from llm_unlearn.trainers import METHODS, UnlearnConfig, get_method
from llm_unlearn.trainers.idk_dpo import read_refusal_file

logger = logging.getLogger(__name__)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Fields of a method config from a YAML (or JSON) file."""
    p = Path(path)
    if not p.is_file():
        raise UnlearnError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UnlearnError(f"{p}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UnlearnError(f"{p}: expected a mapping of config fields, got {type(data).__name__}")
    return data


# Per-mode defaults of the fields that decide whether a run forgets at all, set from the
# measurements of benchmarks/defaults.py (results/defaults.json: NPO+RT on the tiny model, 3 seeds)
# and the SmolLM2 frontier (results/tofu_frontier*.json). A LoRA adapter starts at zero and needs a
# far larger step than full weights (at the config classes' 1e-5 a LoRA NPO run on the tiny model
# moved its forget NLL by 0.0006 nats). LoRA: the lowest tested lr whose every seed raised the
# forget NLL >= 0.5 nats with the retain NLL < 0.3 (2e-3: +0.43 on one seed; 2.5e-3: retain +0.33
# on one seed). Full weights: 1e-4 forgets on the tiny model (+0.18 nats, retain +0.01) and sits
# between the SmolLM2 frontier's 4e-5 and 8e-5 runs, which forgot with utility unchanged
# (0.365 -> 0.35-0.365). `llm-unlearn tune` searches around them without a retain model.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"learning_rate": 2.25e-3, "num_train_epochs": 5.0},
    "full": {"learning_rate": 1e-4, "num_train_epochs": 5.0},
}


def mode_defaults(method: str, lora: bool) -> dict[str, Any]:
    """The `MODE_DEFAULTS` that apply to `method` (those fields where its config keeps the
    `UnlearnConfig` default; RMU, e.g., has its own learning rate)."""
    _, config_cls = get_method(method)
    own = {f.name: f.default for f in dataclasses.fields(config_cls)}
    base = {f.name: f.default for f in dataclasses.fields(UnlearnConfig)}
    return {k: v for k, v in MODE_DEFAULTS["lora" if lora else "full"].items() if own.get(k) == base.get(k)}


def build_config(method: str, config: UnlearnConfig | dict | str | Path | None = None,
                 overrides: dict[str, Any] | None = None, output_dir: str | Path | None = None,
                 lora: bool | None = None) -> UnlearnConfig:
    """The method's config: defaults < mode defaults (`MODE_DEFAULTS`, LoRA or full weights; with
    `lora` given) < `config` (object, dict or YAML path) < `overrides` (CLI flags).

    A ``method`` key in the file must match `method`. Unknown fields raise `UnlearnError` naming them."""
    _, config_cls = get_method(method)
    if isinstance(config, UnlearnConfig):
        if not isinstance(config, config_cls):
            raise UnlearnError(f"config is a {type(config).__name__}, method '{method}' needs a {config_cls.__name__}")
        fields: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        fields["report_to"] = config.report_to or "none"
    elif isinstance(config, (str, Path)):
        fields = load_config_file(config)
    else:
        fields = dict(config or {})
    file_method = fields.pop("method", None)
    if file_method is not None and file_method != method:
        raise UnlearnError(f"config is for method '{file_method}', but method '{method}' was asked for")
    if lora is not None and not isinstance(config, UnlearnConfig):
        for key, value in mode_defaults(method, lora).items():
            fields.setdefault(key, value)
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if output_dir is not None:
        fields["output_dir"] = str(output_dir)
    if "use_cpu" not in fields and not torch.cuda.is_available():
        fields["use_cpu"] = True
    # TrainingArguments would derive it from the transformers log level, which the quiet console
    # lowers: progress is shown unless asked otherwise
    fields.setdefault("disable_tqdm", False)
    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UnlearnError(f"unknown config field(s) for {method}: {', '.join(unknown)}")
    try:
        return config_cls(**fields)
    except (TypeError, ValueError) as exc:
        raise UnlearnError(f"invalid {config_cls.__name__}: {str(exc).splitlines()[0]}") from None


def load_target(model: str, dtype: str = "float32", load_in_4bit: bool = False):
    """The model to unlearn and its tokenizer; a LoRA-finetuned target is merged into its base."""
    path = resolve_model_path(model)
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UnlearnError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json); save it beside the model")
    tokenizer = load_tokenizer(path)
    if Path(path).is_dir() and is_adapter_dir(path):
        if load_in_4bit:
            raise UnlearnError(f"{path} is a LoRA adapter: merge it into its base before loading in 4 bit")
        loaded = load_model(path, dtype=dtype).merge_and_unload()
    else:
        loaded = load_model(path, dtype=dtype, load_in_4bit=load_in_4bit)
    return loaded, tokenizer


def _phase(bar, text: str) -> None:
    if bar is not None:
        bar.set_postfix_str(text)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


MIN_FORGET_NLL_RISE = 0.1  # nats: below this, the run did not forget


def _budget_flag(hyperparameters: dict[str, Any]) -> str:
    """``--max-steps N`` or ``--epochs E``: the flag that sets a run's training budget, at its value."""
    steps, epochs = hyperparameters.get("max_steps"), hyperparameters.get("num_train_epochs")
    return f"--max-steps {steps}" if steps and steps > 0 else f"--epochs {epochs:g}" if epochs else "the budget"


def forgetting_warning(nll: dict[str, Any], hyperparameters: dict[str, Any], lora: bool) -> str | None:
    """The warning for a run whose mean forget NLL rose by less than `MIN_FORGET_NLL_RISE` nats
    (None when it forgot), naming the flags to change and `llm-unlearn tune`."""
    before, after = nll.get("forget_before"), nll.get("forget_after")
    if before is None or after is None:
        return None
    rise = after - before
    if rise >= MIN_FORGET_NLL_RISE:
        return None
    return (f"forgetting did not happen: the forget NLL rose by {rise:+.3f} nats (< {MIN_FORGET_NLL_RISE} nats). "
            f"Raise --lr (now {hyperparameters.get('learning_rate'):g}) or the budget ({_budget_flag(hyperparameters)})"
            + ("" if lora else " or train a LoRA adapter (--lora)")
            + ", or search them without a retain model: llm-unlearn tune")


BETA_METHODS = ("npo", "npo_sam")  # NPO's push on a sequence fades as exp(beta x its log-likelihood drop)


def direction_advice(verdict: str, method: str, hyperparameters: dict[str, Any]) -> str:
    """What to change after a run whose forget items still differ from unseen ones
    (`forgetting_direction`'s verdict ``short`` or ``overshot``; "" for ``alike``)."""
    if verdict not in ("short", "overshot"):
        return ""
    lr, beta, budget = hyperparameters.get("learning_rate"), hyperparameters.get("beta"), _budget_flag(hyperparameters)
    lr_now = f" (now {lr:g})" if lr else ""
    beta_now = f" (now {beta:g})" if beta is not None else ""
    if verdict == "short":
        return (f"raise --lr{lr_now} or {budget}" + (f", or lower --beta{beta_now}" if method in BETA_METHODS else "")
                + "; llm-unlearn tune searches them without a retain model")
    return (f"lower --lr{lr_now} or {budget}" + (f", or raise --beta{beta_now}" if method in BETA_METHODS else "")
            + "; llm-unlearn tune picks the stopping step without a retain model")


def hfq_rows(data, forget_split: str, max_items: int | None, holdout_split: str | None = None,
             max_authors: int | None = None, holdout_items: int | None = None
             ) -> tuple[dict[str, list[dict]] | None, str | None]:
    """The forget items with perturbed answers (at most `max_items`) and the holdout items the
    holdout forget quality compares them with (at most `holdout_items`, default `max_items`), or
    (None, why not)."""
    try:
        forget = load_tofu(f"{forget_split}_perturbed", data, max_items=max_items).to_list()
    except UnlearnError as exc:
        return None, f"no {forget_split}_perturbed split ({exc})"
    explicit = holdout_split is not None
    try:
        hold, reason = holdout_rows(data, holdout_split or forget_split.replace("forget", "holdout", 1),
                                    holdout_items or max_items, explicit=explicit, max_authors=max_authors,
                                    forget_rows=forget, n_outside=holdout_items)
    except UnlearnError as exc:
        return None, str(exc)
    if hold is None:
        return None, reason
    if not all(r.get("perturbed_answer") for r in hold):
        return None, "the holdout items have no perturbed answers"
    return {"forget": forget, "holdout": hold}, None


def _hfq(model, tokenizer, rows, batch_size: int) -> tuple[float | None, dict[str, list[float]]]:
    """The holdout forget quality of `model` and the per-item truth ratios it compared."""
    summary = score_splits(model, tokenizer, rows, batch_size=batch_size)
    return summary["metrics"].get("holdout_forget_quality"), summary.get("truth_ratios") or {}


def _build_mask(mask, mask_method, mask_ratio, model, forget_tok, retain_tok, tokenizer, batch_size,
                granularity=None, scope=None, gamma=None):
    """The weight mask of a run (loaded or computed) and what run.json records about it."""
    if mask is None and mask_method is None:
        return None, None
    if mask is not None:
        loaded = masks.load_mask(mask)
        return loaded, {"path": str(mask), **_mask_record(loaded)}
    if mask_ratio is None:
        raise UnlearnError("--mask-method needs --mask-ratio (fraction of weights that may change)")

    def loader(ds):
        if ds is None:
            return None
        cols = ["input_ids", "attention_mask", "labels"]
        return DataLoader(ds.select_columns(cols), batch_size=batch_size, collate_fn=QACollator(tokenizer))

    options = {k: v for k, v in (("granularity", granularity), ("scope", scope), ("gamma", gamma)) if v is not None}
    weight_mask = masks.compute_mask(model, loader(forget_tok), loader(retain_tok), method=mask_method,
                                     ratio=mask_ratio, **options)
    return weight_mask, {"method": mask_method, "ratio": mask_ratio, **_mask_record(weight_mask)}


def _check_mask_options(mask, mask_method, granularity, scope, gamma, ratio=None) -> None:
    """Fail before any loading on mask options that cannot apply (then on a missing --mask file)."""
    if mask is not None and mask_method is not None:
        raise UnlearnError("pass either a saved mask (--mask) or a mask method (--mask-method), not both")
    if ratio is not None and mask_method is None:
        raise UnlearnError("--mask-ratio applies when computing a mask: it needs --mask-method")
    if mask_method is not None and ratio is None:
        raise UnlearnError("--mask-method needs --mask-ratio (fraction of weights that may change)")
    check_fraction("--mask-ratio", ratio)
    if mask_method is not None:
        if mask_method not in masks.METHODS:
            raise UnlearnError(f"--mask-method must be one of {', '.join(masks.METHODS)}, got '{mask_method}'")
    if granularity is not None or scope is not None or gamma is not None:
        if mask_method is None:
            raise UnlearnError("mask granularity / scope / gamma apply when computing a mask: they need "
                               "--mask-method" + (" (a saved --mask already has them)" if mask is not None else ""))
        if granularity is not None and granularity not in masks.GRANULARITIES:
            raise UnlearnError(f"mask granularity must be one of {', '.join(masks.GRANULARITIES)}, got '{granularity}'")
        if scope is not None and scope not in masks.SCOPES:
            raise UnlearnError(f"mask scope must be one of {', '.join(masks.SCOPES)}, got '{scope}'")
        if gamma is not None and not gamma > 0:
            raise UnlearnError(f"mask gamma must be > 0, got {gamma}")
    check_file("--mask", mask)


def _mask_record(weight_mask) -> dict[str, Any]:
    """How a mask was made (its metadata) and what it is: granularity from the stored shapes, density."""
    meta = getattr(weight_mask, "meta", None)
    if meta is None:  # not a WeightMask (a test double): nothing to describe
        return {}
    record = {k: meta[k] for k in ("method", "ratio", "scope", "gamma", "seed") if meta.get(k) is not None}
    record.update(granularity=weight_mask.granularity, density=round(weight_mask.density(), 6))
    return record


def run_unlearning(
    model: Any,
    data: str | Path | None,
    output: str | Path,
    method: str,
    forget_split: str | None = None,
    retain_split: str | None = None,
    config: UnlearnConfig | dict | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    tokenizer: Any = None,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    load_in_4bit: bool = False,
    dtype: str = "float32",
    mask: str | Path | None = None,
    mask_method: str | None = None,
    mask_ratio: float | None = None,
    mask_granularity: str | None = None,
    mask_scope: str | None = None,
    mask_gamma: float | None = None,
    resume_from_checkpoint: str | bool | None = None,
    overwrite: bool = False,
    nll_max_retain: int | None = 200,
    forget_corpus: str | Path | None = None,
    retain_corpus: str | Path | None = None,
    max_windows_per_doc: int | None = None,
    holdout_split: str | None = None,
    max_authors: int | None = None,
    score_hfq: bool = True,
    callbacks: list | None = None,
    retain_exclude: set[str] | None = None,
    quiet: bool = False,
    threads: str | int | None = "auto",
    nll_before_cache: dict | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Unlearn `forget_split` of `data` from `model` with `method`; returns ``(output dir, run.json dict)``.

    - `model`: a spec for `llm_unlearn.models.load_model` (directory, alias, Hub id; a LoRA
      adapter directory is merged into its base), or an already loaded model with `tokenizer`.
    - `forget_split`: default forget10; `retain_split`: default the matching one (forget10 -> retain90).
    - `forget_corpus` / `retain_corpus` (instead of `data` and the splits; mixing is an error):
      raw-text corpora (`llm_unlearn.data.corpus.load_corpus`: .txt, .jsonl with ``text``, or
      ``NAME[:CONFIG[:SPLIT]]`` on the Hub), cut into ``max_length``-token windows whose loss
      covers every token; `max_windows_per_doc` keeps only the first N windows of a document
      (WMDP keeps 1), counted in run.json. A method that needs retain data needs `retain_corpus`.
    - `config` / `overrides`: see `build_config`; ``output_dir`` is always `output` (checkpoints
      go to ``output/checkpoint-N``).
    - `lora`: train a LoRA adapter (r, alpha) and save only the adapter; the reference is the same
      model with adapters disabled.
    - `mask` (a saved weight mask) or `mask_method` + `mask_ratio` (computed here on the forget /
      retain sets, with `mask_granularity` element|row, `mask_scope` global|per_layer and the
      WAGLE `mask_gamma`; None = the `compute_mask` defaults): restrict which weights may change
      (`llm_unlearn.masks`). A LoRA run with an element mask saves it beside the adapter
      (``weight_mask.safetensors``); `llm_unlearn.models.load_model` re-applies it, so the
      reloaded adapter (and its merge) is ΔW = M ⊙ (B·A), the update that was trained.
    - `nll_max_retain`: retain items scored for the before/after NLL (the first N; None = all),
      and forget / holdout items scored for the holdout forget quality before and after
      (`score_hfq`; holdout items from `holdout_split`, the authors outside `max_authors`, or the
      source's ``holdoutXX``, see `llm_unlearn.eval.evaluator.load_eval_rows`).
    - `callbacks`: extra `transformers.TrainerCallback`s (e.g. `llm_unlearn.tune.BestStepCallback`).
    - `retain_exclude`: retain questions (corpus: retain document texts) left out of training (held
      out for a utility measure).
    - `quiet`: no progress bar and no printed log lines (the history still goes to run.json).
    - `nll_before_cache`: a dict shared by runs that start from the same model on the same data
      (`llm_unlearn.tune`'s trials): the before-NLL is scored once per mode (LoRA / full) and
      reused; run.json's ``nll.before_reused`` says so.
    - run.json gets ``nll``, ``hfq`` (before / after) and ``warning`` when forgetting did not
      happen (`forgetting_warning`).
    - `resume_from_checkpoint`: a checkpoint directory, or True for the last one of an interrupted
      run (Ctrl-C saves one and raises `TrainingInterrupted`) or, failing that, in `output`.
    - `threads`: torch threads, `llm_unlearn.threads.apply_thread_policy` (auto: one for models
      under 10 M parameters unless OMP_NUM_THREADS is set); recorded in run.json.

    The output is written to a hidden sibling (``.NAME.partial``) and moved into place at the end
    (`llm_unlearn.outputs.staged_dir`): a failed run leaves a previous output intact, and an
    output that is or contains an input is refused before anything loads.
    """
    # every check before a model loads: method, mask options, config, model path, output, resume
    trainer_cls, _ = get_method(method)
    kind = check_input_kinds(data, forget_split, retain_split, forget_corpus, retain_corpus)
    _check_mask_options(mask, mask_method, mask_granularity, mask_scope, mask_gamma, mask_ratio)
    if load_in_4bit and not lora:
        raise UnlearnError("--load-in-4bit (QLoRA) needs --lora: a 4-bit base cannot be trained directly")
    if lora and (lora_r < 1 or not lora_alpha > 0):
        raise UnlearnError(f"--lora-r must be >= 1 and --lora-alpha > 0, got r={lora_r}, alpha={lora_alpha}")
    if dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise UnlearnError(f"--dtype must be float32, bfloat16, float16 or auto, got '{dtype}'")
    out = Path(output)
    staging = staging_path(out)
    cfg = build_config(method, config, overrides, output_dir=staging, lora=lora)
    check_file("refusals_file", getattr(cfg, "refusals_file", None))
    if isinstance(model, (str, Path)):
        resolve_model_path(str(model))
    inputs = [model if isinstance(model, (str, Path)) else None, data, forget_corpus, retain_corpus,
              config if isinstance(config, (str, Path)) else None, mask, getattr(cfg, "refusals_file", None)]
    check_output(out, overwrite, inputs)
    resume_from_checkpoint = resume_point(resume_from_checkpoint, out)
    if kind == "corpus":
        if method == "idk_dpo":
            raise UnlearnError("idk_dpo needs QA pairs (it prefers a refusal answer); corpora work with "
                               "grad_ascent, grad_diff, npo, simnpo and rmu")
        forget_rows = load_corpus(forget_corpus)
        retain_rows = load_corpus(retain_corpus) if retain_corpus is not None else None
        if retain_rows is not None and retain_exclude:
            retain_rows = Dataset.from_list([r for r in retain_rows.to_list() if r["text"] not in retain_exclude])
            if len(retain_rows) == 0:
                raise UnlearnError(f"{retain_corpus}: every retain document is held out of training")
        if retain_rows is None and trainer_cls.needs_retain(cfg):
            raise UnlearnError(f"{method} uses retain data (alpha > 0): pass --retain-corpus, or set alpha 0")
        if retain_rows is not None:
            check_corpus_overlap(forget_rows, retain_rows)
    else:
        forget_split = forget_split or "forget10"
        if retain_split is None:
            retain_split = matching_retain_split(forget_split)
        forget_rows = load_tofu(forget_split, data)
        retain_rows = load_tofu(retain_split, data)
        if retain_exclude:
            retain_rows = Dataset.from_list([r for r in retain_rows.to_list() if r["question"] not in retain_exclude])
        if len(forget_rows) == 0:
            raise UnlearnError(f"forget split '{forget_split}' of {data} is empty")
    with staged_dir(out, overwrite, inputs, resume=resume_from_checkpoint is not None) as stage:
        try:
            manifest = _unlearn_into(stage, trainer_cls, model, tokenizer, data, method, forget_split, retain_split,
                                     forget_rows, retain_rows, cfg, lora, lora_r, lora_alpha, load_in_4bit, dtype,
                                     mask, mask_method, mask_ratio, mask_granularity, mask_scope, mask_gamma,
                                     resume_from_checkpoint, nll_max_retain, threads, holdout_split=holdout_split,
                                     max_authors=max_authors, score_hfq=score_hfq, callbacks=callbacks, quiet=quiet,
                                     kind=kind, forget_corpus=forget_corpus, retain_corpus=retain_corpus,
                                     max_windows_per_doc=max_windows_per_doc, nll_before_cache=nll_before_cache)
        except DivergenceError:
            # the diverged run's record (run.json, status diverged) takes an empty place; it never
            # replaces a previous output (it stays in the staging directory, named in the error)
            if not out.exists() or (out.is_dir() and not any(out.iterdir())):
                stage.commit()
            raise
    return stage.final, manifest


def resume_point(resume: str | bool | None, output: str | Path) -> str | None:
    """The checkpoint to resume from, checked before any work: True = the last one of an
    interrupted run (``.NAME.partial``), else the last one in `output`."""
    if resume is None or resume is False:
        return None
    if resume is True:
        found = last_checkpoint(staging_path(output), output)
        if found is None:
            raise UnlearnError(f"--resume: no checkpoint in {output} or {staging_path(output)} (checkpoints are "
                               "saved on Ctrl-C and by --save-steps); run without --resume")
        return found
    if not (Path(resume) / "trainer_state.json").is_file():
        raise UnlearnError(f"--resume {resume}: not a checkpoint directory (no trainer_state.json)")
    return str(resume)


def _unlearn_into(stage, trainer_cls, model, tokenizer, data, method, forget_split, retain_split, forget_rows,
                  retain_rows, cfg, lora, lora_r, lora_alpha, load_in_4bit, dtype, mask, mask_method, mask_ratio,
                  mask_granularity, mask_scope, mask_gamma, resume_from_checkpoint, nll_max_retain, threads, *,
                  holdout_split=None, max_authors=None, score_hfq=True, callbacks=None, quiet=False,
                  kind="qa", forget_corpus=None, retain_corpus=None, max_windows_per_doc=None,
                  nll_before_cache=None):
    """The work of `run_unlearning`, written into the staging directory ``stage.path``."""
    out = stage.path

    model_spec = model if isinstance(model, (str, Path)) else getattr(getattr(model, "config", None), "_name_or_path", "model")
    if isinstance(model, (str, Path)):
        model, loaded_tok = load_target(str(model), dtype=dtype, load_in_4bit=load_in_4bit)
        tokenizer = tokenizer or loaded_tok
    elif tokenizer is None:
        raise UnlearnError("pass the tokenizer along with a loaded model")
    check_tokenizer(tokenizer)
    thread_info = apply_thread_policy(model, policy=threads)
    if lora:
        model = attach_lora(model, r=lora_r, alpha=lora_alpha, quantized=load_in_4bit, seed=cfg.seed)

    if kind == "corpus":
        forget_tok, forget_report = chunk_corpus(forget_rows, tokenizer, cfg.max_length, max_windows_per_doc)
        retain_tok, retain_report = (chunk_corpus(retain_rows, tokenizer, cfg.max_length, max_windows_per_doc)
                                     if retain_rows is not None else (None, None))
        if retain_tok is None:
            retain_tok = forget_tok.select([])  # scored as empty; never paired (needs_retain is false)
    else:
        forget_tok, forget_report = tokenize_qa_dataset(forget_rows, tokenizer, max_length=cfg.max_length,
                                                        protocol=cfg.protocol)
        retain_tok, retain_report = tokenize_qa_dataset(retain_rows, tokenizer, max_length=cfg.max_length,
                                                        protocol=cfg.protocol)
    retain_eval = retain_tok.select(range(min(len(retain_tok), nll_max_retain or len(retain_tok))))

    if not load_in_4bit:
        model.to(cfg.device)
    batch = cfg.per_device_train_batch_size
    # quiet console: one bar for the whole stage, its postfix naming the phase (verbose: the
    # Trainer's own bar and log lines)
    label = f"unlearn {method}" + (f" + {mask_method} mask" if mask_method else " + mask" if mask else "")
    bar = None if is_verbose() or cfg.disable_tqdm else stage_bar(label, total=None)
    # keyed by everything that changes the starting model's numerics or the items scored (a LoRA
    # adapter starts as the identity, but its forward differs in the last bits from the base's)
    before_key = ("lora" if lora else "full", load_in_4bit, dtype, len(forget_tok), len(retain_eval))
    before_reused = nll_before_cache is not None and before_key in nll_before_cache
    if before_reused:
        forget_before, retain_before = nll_before_cache[before_key]
    else:
        _phase(bar, "scoring NLL before")
        logger.info("scoring forget/retain NLL before unlearning")
        forget_before = per_item_nll(model, forget_tok, tokenizer, batch_size=batch)
        retain_before = per_item_nll(model, retain_eval, tokenizer, batch_size=batch)
        if nll_before_cache is not None:
            nll_before_cache[before_key] = (forget_before, retain_before)
    hfq: dict[str, Any] = {"before": None, "after": None}
    rows_hfq = None
    if kind == "corpus":  # a TOFU-style metric: corpora have no perturbed answers or holdout items
        hfq["not_available"] = "corpus run (score with llm-unlearn eval --lm-eval-tasks / --forget-corpus)"
    elif score_hfq:
        rows_hfq, hfq["not_available"] = hfq_rows(data, forget_split, nll_max_retain, holdout_split, max_authors)
        if rows_hfq is not None:
            hfq["before"], ratios_before = _hfq(model, tokenizer, rows_hfq, batch)
            hfq["items"] = {k: len(v) for k, v in rows_hfq.items()}
    if mask is not None or mask_method is not None:
        _phase(bar, f"mask {mask_method or 'from file'}")

    mask_retain = retain_tok if kind == "qa" or retain_rows is not None else None
    weight_mask, mask_info = _build_mask(mask, mask_method, mask_ratio, model, forget_tok, mask_retain, tokenizer,
                                         batch, granularity=mask_granularity, scope=mask_scope, gamma=mask_gamma)
    kwargs: dict[str, Any] = {}
    if method == "idk_dpo":
        kwargs["refusals"] = read_refusal_file(cfg.refusals_file) if cfg.refusals_file else read_refusals(data)
    pairs = ForgetRetainDataset(forget_tok, retain_tok if trainer_cls.needs_retain(cfg) else None, seed=cfg.seed)
    _phase(bar, "preparing")
    interrupt = SaveOnInterrupt()
    trainer = trainer_cls(model=model, args=cfg, train_dataset=pairs, processing_class=tokenizer,
                          weight_mask=weight_mask, callbacks=[interrupt, *(callbacks or [])], **kwargs)
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.console.stage = trainer.console.log_file.stage = label  # e.g. "unlearn npo + wagle mask"
    if bar is not None and trainer.console.show_bar:
        trainer.console.bar = bar  # the stage's bar counts the training steps

    if kind == "corpus":
        inputs: dict[str, Any] = {
            "data": None, "forget_corpus": str(forget_corpus),
            "retain_corpus": str(retain_corpus) if retain_corpus is not None else None,
            "forget_split": None, "retain_split": None, "forget_items": len(forget_tok),
            "retain_items": len(retain_tok), "forget_documents": len(forget_rows),
            "retain_documents": len(retain_rows) if retain_rows is not None else 0,
            "forget_data_hash": corpus_hash(forget_rows),
            "chunking": {"max_length": cfg.max_length, "max_windows_per_doc": max_windows_per_doc,
                         "forget": forget_report.as_dict(),
                         "retain": retain_report.as_dict() if retain_report is not None else None},
            "truncated": {"forget": forget_report.truncated_documents,
                          "retain": retain_report.truncated_documents if retain_report is not None else 0},
        }
    else:
        inputs = {
            "data": str(data), "forget_split": forget_split, "retain_split": retain_split,
            "forget_items": len(forget_rows), "retain_items": len(retain_rows),
            "forget_data_hash": data_hash(forget_rows),
            "truncated": {"forget": forget_report.truncated, "retain": retain_report.truncated},
        }
    manifest: dict[str, Any] = {
        "kind": "unlearn", "method": method, "model": str(model_spec), **inputs,
        "lora": {"r": lora_r, "alpha": lora_alpha} if lora else None, "load_in_4bit": load_in_4bit, "dtype": dtype,
        "mask": mask_info, "seed": cfg.seed, "hyperparameters": method_hyperparameters(cfg), "threads": thread_info,
        "resumed_from": resume_from_checkpoint,
        "protocol": template_settings(tokenizer, cfg.protocol),
    }
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        interrupt.finish(trainer)
    except DivergenceError as exc:
        if bar is not None:
            bar.close()
        write_manifest(out, **manifest, status="diverged", error=str(exc), last_checkpoint=exc.checkpoint,
                       log_history=trainer.state.log_history)
        raise
    except TrainingInterrupted as exc:
        if bar is not None:
            bar.close()
        write_manifest(out, **manifest, status="interrupted", checkpoint=exc.checkpoint,
                       log_history=trainer.state.log_history)
        raise
    runtime = time.time() - start
    if getattr(cfg.save_strategy, "value", cfg.save_strategy) == "no":
        for ckpt in out.glob("checkpoint-*"):  # Ctrl-C checkpoints of this run: done with them
            shutil.rmtree(ckpt)
    trainer.save_model(str(out), _internal_call=True)
    if lora and weight_mask is not None and getattr(weight_mask, "granularity", "row") != "row":
        # A, B alone would reload as the unmasked B·A; row masks need nothing (B's frozen rows are zero)
        weight_mask.save(out / ADAPTER_MASK_FILE)
        mask_info["saved_as"] = ADAPTER_MASK_FILE
    _phase(bar, "scoring NLL after")
    forget_after = per_item_nll(trainer.model, forget_tok, tokenizer, batch_size=batch)
    retain_after = per_item_nll(trainer.model, retain_eval, tokenizer, batch_size=batch)
    if bar is not None:
        bar.set_postfix_str(f"steps {result.global_step}, loss {format_loss(result.training_loss)}, forget NLL "
                            f"{format_loss(_mean(forget_before))} -> {format_loss(_mean(forget_after))}")
        bar.close()
    if rows_hfq is not None:
        hfq["after"], ratios_after = _hfq(trainer.model, tokenizer, rows_hfq, batch)
        # against the holdout items under the starting model (`llm_unlearn.tune`'s default reference:
        # what unseen items look like, not moved by the run's own drift on every item of that kind),
        # HFQ and which way the forget items differ from unseen ones (the moving holdout without it)
        anchored = ratios_before.get("holdout")
        hfq["after_vs_start_holdout"] = None
        if ratios_after.get("forget") and (anchored or ratios_after.get("holdout")):
            d = forgetting_direction(ratios_after["forget"], anchored or ratios_after["holdout"])
            hfq["direction"] = {**d, "reference": "start" if anchored else "current"}
            if anchored:
                hfq["after_vs_start_holdout"] = d["pvalue"]
    nll_means = {"forget_before": _mean(forget_before), "forget_after": _mean(forget_after)}
    hyper = method_hyperparameters(cfg)
    warning = forgetting_warning(nll_means, hyper, lora)
    if hfq.get("direction"):
        hfq["direction"]["advice"] = direction_advice(hfq["direction"]["verdict"], method, hyper)
    if warning:
        logger.info(warning)
    manifest.update(
        status="ok", steps=result.global_step, hfq=hfq, warning=warning, train_loss=result.training_loss, train_runtime_s=round(runtime, 2),
        nll={
            "forget_before": _mean(forget_before), "forget_after": _mean(forget_after),
            "retain_before": _mean(retain_before), "retain_after": _mean(retain_after),
            "retain_items_scored": len(retain_eval), "before_reused": before_reused,
            "forget_per_item_before": forget_before, "forget_per_item_after": forget_after,
        },
        log_history=trainer.state.log_history,
    )
    write_manifest(out, **manifest)
    if cfg.push_to_hub:
        trainer.push_to_hub(commit_message=f"llm-unlearn {method} on {forget_split or forget_corpus}")
    return manifest


# the TrainingArguments fields that matter for reproducing an unlearning run, besides the method's own
_GENERAL_FIELDS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "optim",
                   "max_length", "seed", "activation_checkpointing", "bf16", "fp16", "protocol", "resample_pairs")


def method_hyperparameters(cfg: UnlearnConfig) -> dict[str, Any]:
    """The general training fields plus every field the method's config adds to `UnlearnConfig`."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = [f.name for f in dataclasses.fields(cfg) if f.name not in base]
    out = {name: getattr(cfg, name) for name in (*_GENERAL_FIELDS, *own) if hasattr(cfg, name)}
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v) for k, v in out.items()}


__all__ = ["METHODS", "MODE_DEFAULTS", "build_config", "direction_advice", "forgetting_warning", "load_config_file", "load_target",
           "method_hyperparameters", "mode_defaults", "run_unlearning"]
