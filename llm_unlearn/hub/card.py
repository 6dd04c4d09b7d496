"""Model cards of published runs: what the upload folder holds (`collect_run`), what the card says
about the method, the forget set (split, item count, content hash, never its text) and the scores,
for an unlearned run (`build_model_card`) and an S3T ensemble (`build_s3t_model_card`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.attacks import attack_card_section
from llm_unlearn.models import ADAPTER_MASK_FILE
from llm_unlearn.runinfo import read_manifest

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FULL_MODEL_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
)
# Where the evaluator may have written its outputs, relative to the run directory (first match wins).
EVAL_SUMMARY_CANDIDATES = ("eval/summary.json", "eval_summary.json", "eval/eval_summary.json", "summary.json")
REPORT_CANDIDATES = ("eval/report.md", "report.md", "eval/report.html", "report.html")
EVAL_SUMMARY_NAME = "eval_summary.json"
# Text files are scanned for forget-set strings before upload.
TEXT_SUFFIXES = {".json", ".md", ".txt", ".html", ".jinja", ".yaml", ".yml", ".csv"}
# Forget strings shorter than this are too generic to count as a leak ("Yes.", "London").
MIN_LEAK_CHARS = 24
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# Hyperparameters that describe the machine rather than the method; not shown in the card.
HIDDEN_HYPERPARAMETERS = {"output", "output_dir", "logging_dir", "hub_token", "push_to_hub_token", "report_to"}


@dataclass
class RunContents:
    """What a run directory offers for publishing."""

    run_dir: Path
    manifest: dict[str, Any]
    weight_files: list[Path]
    tokenizer_files: list[Path]
    is_adapter: bool
    eval_summary: Path | None = None
    report: Path | None = None
    warnings: list[str] = field(default_factory=list)


def collect_run(run_dir: str | Path) -> RunContents:
    """Find the publishable files of `run_dir`; raise `UnlearnError` when the weights are missing."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UnlearnError(f"run directory not found: {root}")
    manifest = read_manifest(root)
    warnings: list[str] = []
    if not manifest:
        warnings.append(f"{root}/run.json not found: the card will lack method, hyperparameters and forget set")
    is_adapter = (root / "adapter_config.json").is_file()
    if is_adapter:
        if not (root / "adapter_model.safetensors").is_file():
            raise UnlearnError(f"{root}/adapter_model.safetensors not found (only safetensors adapters are pushed)")
        weights = [root / name for name in ADAPTER_FILES]
        # an element-masked LoRA adapter only reproduces the unlearned model with its mask
        # (llm_unlearn.models.load_model applies it; plain PEFT would not)
        if (root / ADAPTER_MASK_FILE).is_file():
            weights.append(root / ADAPTER_MASK_FILE)
    else:
        shards = sorted(root.glob("model*.safetensors"))
        if not (root / "config.json").is_file() or not shards:
            raise UnlearnError(
                f"{root} holds neither a PEFT adapter (adapter_config.json + adapter_model.safetensors) "
                "nor a safetensors model (config.json + model*.safetensors)"
            )
        weights = [root / n for n in FULL_MODEL_FILES if (root / n).is_file()] + shards
        if (root / "model.safetensors.index.json").is_file():
            weights.append(root / "model.safetensors.index.json")
    tokenizer = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    if not tokenizer:
        warnings.append(f"no tokenizer files in {root}: users will need the base model's tokenizer")
    summary = next((root / c for c in EVAL_SUMMARY_CANDIDATES if (root / c).is_file()), None)
    if summary is None:
        warnings.append(f"no eval summary in {root} (looked for {', '.join(EVAL_SUMMARY_CANDIDATES)}): "
                        "the card will say n/a for forget quality and model utility")
    report = next((root / c for c in REPORT_CANDIDATES if (root / c).is_file()), None)
    return RunContents(root, manifest, weights, tokenizer, is_adapter, summary, report, warnings)


# ----------------------------------------------------------------------------------------------
# Reading the manifest and the eval summary (field names tolerated from several writers)


def _first(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if d.get(key) not in (None, ""):
            return d[key]
    return default


def forget_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """Split name, item count and content hash of the forget set, as recorded in run.json."""
    forget = manifest.get("forget") if isinstance(manifest.get("forget"), dict) else {}
    return {
        "split": _first(forget, "split", "name") or _first(manifest, "forget_split", "split"),
        "items": _first(forget, "items", "n_items", "count") or _first(manifest, "forget_items", "n_forget", "items"),
        "hash": _first(forget, "data_hash", "hash", "sha256") or _first(manifest, "forget_data_hash", "forget_hash", "data_hash"),
        "data": _first(forget, "data", "source") or _first(manifest, "data", "data_source", "dataset"),
        "retain_split": _first(manifest, "retain_split"),
    }


def read_metrics(summary_path: Path | None) -> dict[str, float | None]:
    """Forget quality and model utility from an eval summary (top level or under a nested key)."""
    out: dict[str, float | None] = {"forget_quality": None, "model_utility": None}
    if summary_path is None:
        return out
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnlearnError(f"cannot read eval summary {summary_path}: {exc}") from None
    scopes = [summary] + [summary[k] for k in ("aggregate", "aggregates", "metrics", "summary") if isinstance(summary.get(k), dict)]
    for name in out:
        for scope in scopes:
            value = scope.get(name)
            if isinstance(value, dict):
                value = _first(value, "value", "aggregate", "mean")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = float(value)
                break
    return out


def resolve_base_model(contents: RunContents, override: str | None = None) -> str | None:
    """The Hub id of the base model, following local finetuned directories back through run.json."""
    if override:
        return override
    candidates: list[str] = []
    if contents.is_adapter:
        cfg = json.loads((contents.run_dir / "adapter_config.json").read_text())
        candidates.append(cfg.get("base_model_name_or_path") or "")
    candidates += [str(_first(contents.manifest, "base_model", "model_name_or_path", "model") or "")]
    seen: set[str] = set()
    while candidates:
        spec = candidates.pop(0)
        if not spec or spec in seen:
            continue
        seen.add(spec)
        path = Path(spec)
        if path.is_dir():
            if (path / "adapter_config.json").is_file():
                candidates.append(json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")
            inner = read_manifest(path)
            candidates.append(str(_first(inner, "base_model", "model_name_or_path", "model") or ""))
            continue
        if HUB_ID.match(spec):
            return spec
    return None


# ----------------------------------------------------------------------------------------------
# Model card


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def method_name(manifest: dict[str, Any]) -> str:
    return str(_first(manifest, "method", "kind", default="unknown"))


def build_model_card(contents: RunContents, repo_id: str, base_model: str | None = None):
    """A `huggingface_hub.ModelCard` for the run: metadata + what was forgotten, how, how to load."""
    manifest = contents.manifest
    method = method_name(manifest)
    forget = forget_info(manifest)
    metrics = read_metrics(contents.eval_summary)
    base = resolve_base_model(contents, base_model)
    data = str(forget["data"]) if forget["data"] else None
    hub_dataset = data if data and HUB_ID.match(data) and not Path(data).exists() else None
    mask = _first(manifest, "mask", "mask_method")
    tags = ["unlearning", "machine-unlearning", method.lower(), "llm-unlearn"]
    if isinstance(mask, str):
        tags.append(mask.lower())
    elif isinstance(mask, dict) and mask.get("method"):
        tags.append(str(mask["method"]).lower())
    if forget["split"]:
        tags.append("tofu")
    if contents.is_adapter:
        tags += ["lora", "peft"]
    model_name = repo_id.split("/")[-1]
    eval_results = []
    dataset_type = hub_dataset or "tofu"
    dataset_name = f"TOFU ({forget['split']})" if forget["split"] else "forget set"
    for key, pretty in (("forget_quality", "Forget quality"), ("model_utility", "Model utility")):
        if metrics[key] is not None:
            eval_results.append(EvalResult(
                task_type="text-generation", task_name="Machine unlearning", dataset_type=dataset_type,
                dataset_name=dataset_name, dataset_config=forget["split"], dataset_split=forget["split"],
                metric_type=key, metric_name=pretty, metric_value=round(metrics[key], 6),
            ))
    card_data = ModelCardData(
        base_model=base, library_name="peft" if contents.is_adapter else "transformers", tags=tags,
        datasets=[hub_dataset] if hub_dataset else None, pipeline_tag="text-generation",
        model_name=model_name if eval_results else None, eval_results=eval_results or None,
    )
    body = _card_body(contents, repo_id, base, method, forget, metrics)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _card_body(contents: RunContents, repo_id: str, base: str | None, method: str,
               forget: dict[str, Any], metrics: dict[str, float | None]) -> str:
    manifest = contents.manifest
    kind = "LoRA adapter" if contents.is_adapter else "model"
    lines = [f"# {repo_id.split('/')[-1]}", ""]
    lines.append(f"A {kind} produced by machine unlearning with **{method}** using "
                 f"`llm-unlearn` on top of `{base or 'a local base model'}`.")
    lines += ["", "## What was forgotten", ""]
    lines.append("The model was trained to forget a set of question-answer items. The items themselves "
                 "are not published here; they are identified by:")
    lines += ["", "| field | value |", "|---|---|"]
    lines.append(f"| forget split | `{forget['split'] or 'n/a'}` |")
    lines.append(f"| items | {forget['items'] if forget['items'] is not None else 'n/a'} |")
    lines.append(f"| content sha256 (question/answer text) | `{forget['hash'] or 'n/a'}` |")
    if forget["data"] and not Path(str(forget["data"])).exists():
        lines.append(f"| data source | `{forget['data']}` |")
    if forget["retain_split"]:
        lines.append(f"| retain split | `{forget['retain_split']}` |")
    lines += ["", "## Method and hyperparameters", "", f"Method: `{method}`."]
    hyper = manifest.get("hyperparameters") or {}
    shown = {k: v for k, v in hyper.items() if k not in HIDDEN_HYPERPARAMETERS and not _is_local_path(v)}
    if shown:
        lines += ["", "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {k} | `{_short(v)}` |" for k, v in sorted(shown.items())]
    lines += ["", "## Evaluation", ""]
    if contents.eval_summary is None:
        lines.append("No evaluation was run before pushing: forget quality and model utility are n/a.")
    lines += ["| metric | value |", "|---|---|",
              f"| forget quality (KS-test p-value vs. the retain model, higher is better) | {_fmt(metrics['forget_quality'])} |",
              f"| model utility (harmonic mean of retain/real-author/world-fact scores) | {_fmt(metrics['model_utility'])} |"]
    if contents.eval_summary is not None:
        lines += ["", f"Full numbers: `{EVAL_SUMMARY_NAME}`" + (f"; report: `{contents.report.name}`." if contents.report else ".")]
    lines += ["", "Approximate unlearning lowers what the model reveals about the forget set; it does not "
              "prove the information is gone. The scores above measure how close it is to a model never "
              "trained on that set."]
    lines += attack_card_section(contents.run_dir)
    lines += ["", "## How to load", "", "```python"]
    if contents.is_adapter and any(w.name == ADAPTER_MASK_FILE for w in contents.weight_files):
        lines += ["# element-masked LoRA: the update is M ⊙ (B·A), so load it with llm-unlearn (plain PEFT",
                  f"# would ignore {ADAPTER_MASK_FILE})",
                  "from huggingface_hub import snapshot_download",
                  "from llm_unlearn.models import load_model, load_tokenizer", "",
                  f'model = load_model(snapshot_download("{repo_id}"))',
                  f'tokenizer = load_tokenizer(snapshot_download("{repo_id}"))']
    elif contents.is_adapter:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["## Framework versions", ""] + [f"- {k} {v}" for k, v in versions.items()] + [""]
    return "\n".join(lines)


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or "\\" in value) and Path(value).exists()


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# S3T runs: the served ensemble (layout of the published folder)


S3T_SERVING_NAME = "s3t_serving.json"
S3T_SERVING_FORMAT = "llm-unlearn-s3t-serving"
S3T_ADAPTERS_DIR = "adapters"
S3T_BUNDLED_BASE = "base"  # the tiny model's random base travels with its adapters
S3T_HIDDEN_CONFIG = {"model", "data", "output"}

def build_s3t_model_card(serving: dict[str, Any], repo_id: str, metrics: dict[str, float | None], has_eval: bool,
                         versions: dict[str, str]):
    """Card of a published S3T ensemble: what it is, what was deleted (counts, hashes), how to load."""
    base = serving["base_model"]
    hub_base = base if base != S3T_BUNDLED_BASE else None
    trained = serving["trained"]
    deleted = serving["deleted"]
    eval_results = [EvalResult(task_type="text-generation", task_name="Machine unlearning", dataset_type="tofu",
                               dataset_name=f"TOFU ({trained['split']})", metric_type=key, metric_name=pretty,
                               metric_value=round(metrics[key], 6))
                    for key, pretty in (("forget_quality", "Forget quality"), ("model_utility", "Model utility"))
                    if metrics[key] is not None]
    name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        base_model=hub_base, library_name="peft", pipeline_tag="text-generation",
        tags=["unlearning", "machine-unlearning", "exact-unlearning", "s3t", "lora", "peft", "llm-unlearn"],
        model_name=name if eval_results else None, eval_results=eval_results or None)
    plan = serving["plan"]
    lines = [f"# {name}", "",
             f"An **S3T ensemble** (Chowdhury et al., 2024, exact unlearning with sequence-aware sharded LoRA "
             f"training) over `{base}`: {len(serving['shards'])} LoRA adapters, one per serving shard, each the "
             "longest prefix of slice-wise stages that never saw a deleted sample. The shards' next-token "
             f"distributions are combined by `{serving.get('aggregate', 'mean-logprob')}` "
             "(`llm_unlearn.s3t.serve`: mean-logprob, mixture, posterior or route).", "",
             "## Shards served", "", "| shard | sequence | prefix (stages) | samples trained | adapter | sha256 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['shard']} | {s['sequence']} | {s['prefix']}/{s['num_slices']} | {s['trained_samples']} | "
              f"`{s['adapter']}` | `{s['sha256'][:16]}…` |" for s in serving["shards"]]
    if serving["not_serving"]:
        lines += ["", "Not serving (waiting for retraining): "
                  + ", ".join(f"shard {s['shard']}" for s in serving["not_serving"]) + "."]
    lines += ["", f"Plan: {plan['shards']} shards × {plan['slices']} slices × {plan['sequences']} slice orders "
              f"({plan['method']}); `plan.json` maps sample ids to shards and slices, `{S3T_SERVING_NAME}` "
              "records the served prefixes and checkpoint hashes.", "",
              "## What was deleted", "",
              "Deleted samples are exactly absent: no served adapter was trained on them (checked against the "
              "deletion ledger before upload). The samples themselves, and the ledger, are not published; they "
              "are identified by sha256 only.", "", "| field | value |", "|---|---|",
              f"| trained split | `{trained['split'] or 'n/a'}` ({trained['items']} items, content sha256 "
              f"`{trained['data_sha256'] or 'n/a'}`) |",
              f"| deleted samples | {deleted['samples']} |",
              f"| deletion requests | {len(deleted['requests'])} |",
              f"| sha256 of the deleted samples' content hashes | `{deleted['content_sha256']}` |"]
    lines += ["", "## Training", "", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {k} | `{_short(v)}` |" for k, v in sorted(serving["config"].items()) if not _is_local_path(v)]
    lines += ["", "## Evaluation (the served ensemble)", "",
              "| metric | value |", "|---|---|",
              f"| forget quality (KS-test p-value vs. the retain model, higher is better) | {_fmt(metrics['forget_quality'])} |",
              f"| model utility (harmonic mean of retain/real-author/world-fact scores) | {_fmt(metrics['model_utility'])} |"]
    if has_eval:
        lines += ["", f"Full numbers: `{EVAL_SUMMARY_NAME}`."]
    lines += ["", "## How to load", "", "```python", "from huggingface_hub import snapshot_download",
              "from llm_unlearn.hub import load_published_s3t", "",
              f'model = load_published_s3t(snapshot_download("{repo_id}"))  # an llm_unlearn.s3t.S3TEnsemble',
              "tokenizer = model.tokenizer",
              "ids = model.generate(**tokenizer(\"...\", return_tensors=\"pt\"), max_new_tokens=32)", "```", "",
              "On the machine that holds the run directory (with its deletion ledger, where further deletions are "
              "served), the same ensemble is `llm_unlearn.s3t.load_s3t_model(run_dir)`.", ""]
    if versions:
        lines += ["## Framework versions", ""] + [f"- {k} {v}" for k, v in versions.items()] + [""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))

