"""Sharing an unlearned model on the Hugging Face Hub: the upload folder, its model card, the push.

A run directory (written by ``run_unlearning``) holds the adapter (or full weights) as safetensors,
the tokenizer, ``run.json`` (method, hyperparameters, forget split, item count, data hash) and,
after evaluation, an eval summary and a report. `stage_upload` copies exactly what gets published
into one folder and writes a model card (``README.md``) whose YAML metadata follows the Hub's
model-card spec (``base_model``, ``library_name``, ``tags``, ``datasets``, ``model-index`` with
forget quality and model utility). The card describes *what* was forgotten (split name, item
count, sha256 of the content), never the forget data itself; every staged text file is checked
for forget-set text before anything leaves the machine. `push_run` uploads that folder.

An S3T run directory (``run.json`` kind ``s3t``, Chowdhury et al., 2024) is published as its
served ensemble: one PEFT adapter folder per serving shard (``adapters/shard<s>/``, the ledger's
served prefix, checked exact with `verify_run` first), ``plan.json``, ``s3t_serving.json`` (which
prefix each shard serves, checkpoint hashes, deletion counts and content hashes) and a card. The
deletion ledger holds sample text and is never uploaded; `load_published_s3t` loads the folder.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.attacks import attack_card_section
from llm_unlearn.runinfo import read_manifest

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_MASK_FILE = "weight_mask.safetensors"  # = llm_unlearn.models.ADAPTER_MASK_FILE
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


def _method_name(manifest: dict[str, Any]) -> str:
    return str(_first(manifest, "method", "kind", default="unknown"))


def build_model_card(contents: RunContents, repo_id: str, base_model: str | None = None):
    """A `huggingface_hub.ModelCard` for the run: metadata + what was forgotten, how, how to load."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    manifest = contents.manifest
    method = _method_name(manifest)
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
# Forget-set leak check


def forget_strings(manifest: dict[str, Any]) -> list[str] | None:
    """Question/answer strings of the run's forget split, or None when it cannot be loaded."""
    from llm_unlearn.data.tofu import load_tofu

    info = forget_info(manifest)
    if not info["split"] or not info["data"]:
        return None
    try:
        rows = load_tofu(str(info["split"]), str(info["data"]))
    except Exception as exc:  # the data may be on a machine we cannot see; we only lose the check
        logger.warning("cannot load forget split %s from %s to check for leaks: %s", info["split"], info["data"], exc)
        return None
    texts = []
    for row in rows:
        for key in ("question", "answer", "paraphrased_answer", "paraphrased_question"):
            if isinstance(row.get(key), str) and len(row[key].strip()) >= MIN_LEAK_CHARS:
                texts.append(row[key].strip())
    return texts


def find_leaks(path: Path, strings: list[str]) -> list[str]:
    """Forget strings that appear in the text file `path` (also JSON-escaped)."""
    if path.suffix not in TEXT_SUFFIXES:
        return []
    text = path.read_text(encoding="utf-8", errors="ignore")
    return [s for s in strings if s in text or json.dumps(s)[1:-1] in text]


# ----------------------------------------------------------------------------------------------
# Staging and pushing


def stage_upload(run_dir: str | Path, folder: str | Path, repo_id: str, base_model: str | None = None,
                 forget_texts: list[str] | None = None) -> Path:
    """Write into `folder` (empty or new) exactly what `push_run` uploads; return it.

    Optional files (eval summary, report) that quote forget-set text are left out with a warning;
    a leak in a required file is an error. `forget_texts` overrides loading the forget split.
    """
    validate_repo_id(repo_id)
    if Path(run_dir).is_dir() and read_manifest(Path(run_dir)).get("kind") == "s3t":
        return stage_s3t_upload(run_dir, folder, repo_id, base_model=base_model)
    contents = collect_run(run_dir)
    for message in contents.warnings:
        logger.warning(message)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise UnlearnError(f"staging folder {out} is not empty")
    base = resolve_base_model(contents, base_model)
    for src in contents.weight_files + contents.tokenizer_files:
        shutil.copy2(src, out / src.name)
    if contents.is_adapter and base:
        # The run recorded a local path for the base model; the published adapter must name the Hub id.
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    elif contents.is_adapter:
        logger.warning("base model of %s is not a Hub id; pass --base-model ORG/NAME so users can load the adapter",
                       contents.run_dir)
    strings = forget_texts if forget_texts is not None else forget_strings(contents.manifest)
    if strings is None:
        logger.warning("forget split not available here: the upload folder was not checked for forget-set text")
        strings = []
    optional = [(contents.eval_summary, EVAL_SUMMARY_NAME)]
    if contents.report is not None:
        optional.append((contents.report, contents.report.name))
    for src, name in optional:
        if src is None:
            continue
        leaks = find_leaks(src, strings)
        if leaks:
            logger.warning("%s quotes %d forget-set string(s); it is not uploaded", src, len(leaks))
            if src == contents.eval_summary:
                contents.eval_summary = None
            else:
                contents.report = None
            continue
        shutil.copy2(src, out / name)
    card = build_model_card(contents, repo_id, base)
    (out / "README.md").write_text(str(card), encoding="utf-8")
    for path in sorted(out.iterdir()):
        leaks = find_leaks(path, strings)
        if leaks:
            raise UnlearnError(f"{path.name} would publish forget-set text ({leaks[0][:40]!r}…); not pushing")
    return out


def validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    try:
        hub_validate(repo_id)
    except HFValidationError as exc:
        raise UnlearnError(f"--repo-id '{repo_id}' is not a valid Hub repo id (ORG/NAME): {str(exc).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise UnlearnError(f"--repo-id '{repo_id}' must be ORG/NAME")


def resolve_token(token: str | None = None) -> str:
    """`token`, else HF_TOKEN, else the token saved by `hf auth login`; error when there is none."""
    import huggingface_hub

    token = token or huggingface_hub.get_token()
    if not token:
        raise UnlearnError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)")
    return token


def make_api(token: str):
    """The Hub client (tests replace this function with a recording fake)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise UnlearnError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    return HfApi(token=token)


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
             dry_run: str | Path | None = None, base_model: str | None = None,
             commit_message: str | None = None) -> str:
    """Publish `run_dir` to `repo_id`; with `dry_run`, only write the upload folder there.

    Returns the repo URL, or the dry-run folder path.
    """
    validate_repo_id(repo_id)
    if dry_run is not None:
        return str(stage_upload(run_dir, dry_run, repo_id, base_model=base_model))
    token = resolve_token(token)  # before any work, so a missing login fails fast
    api = make_api(token)
    with tempfile.TemporaryDirectory(prefix="llm-unlearn-push-") as tmp:
        folder = stage_upload(run_dir, Path(tmp) / "upload", repo_id, base_model=base_model)
        method = _method_name(read_manifest(run_dir))
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or f"Upload {method} unlearned model (llm-unlearn)")
    return str(url)


# ----------------------------------------------------------------------------------------------
# S3T runs: the served ensemble


S3T_SERVING_NAME = "s3t_serving.json"
S3T_SERVING_FORMAT = "llm-unlearn-s3t-serving"
S3T_ADAPTERS_DIR = "adapters"
S3T_BUNDLED_BASE = "base"  # the tiny model's random base travels with its adapters
S3T_HIDDEN_CONFIG = {"model", "data", "output"}


def _hash_of_hashes(hashes: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def s3t_serving_manifest(run_dir: str | Path, base: str) -> tuple[dict[str, Any], list[str]]:
    """The serving manifest of an S3T run (no sample text: counts, ids of shards, sha256 only) and
    the deleted samples' text (for the leak check; never written)."""
    from llm_unlearn.s3t.ledger import content_hash
    from llm_unlearn.s3t.train import S3T_FORMAT, load_run

    ledger, plan, cfg, manifest = load_run(run_dir)
    status = {s.shard: s for s in ledger.status()}
    shards = []
    for rec in ledger.active_stages():
        st = status[rec.shard]
        shards.append({"shard": rec.shard, "adapter": f"{S3T_ADAPTERS_DIR}/shard{rec.shard}", "sequence": rec.sequence,
                       "prefix": rec.stage, "num_slices": st.num_slices, "generation": rec.generation,
                       "slices": rec.slices, "trained_samples": rec.num_samples, "sha256": rec.sha256,
                       "weights_sha256": rec.weights_sha256})
    deleted_rows = ledger.samples(sorted(ledger.deleted_ids()))
    hash_of = {r["sample_id"]: content_hash(r["question"], r["answer"]) for r in deleted_rows}
    requests = [{"request_id": d["request_id"], "requested_at": d["requested_at"], "samples": len(d["sample_ids"]),
                 "content_sha256": _hash_of_hashes([hash_of[i] for i in d["sample_ids"] if i in hash_of]),
                 "affected_shards": d["affected_shards"], "retrain_shards": d["retrain_shards"], "status": d["status"]}
                for d in ledger.deletions()]  # the request's text query is left out: it quotes the data
    serving = {
        "format": S3T_SERVING_FORMAT, "s3t_format": S3T_FORMAT, "base_model": base,
        "combine": "mean over serving shards of log_softmax(logits), renormalised (llm_unlearn.s3t.serve)",
        "plan": {"shards": plan.num_shards, "slices": plan.num_slices, "sequences": plan.num_sequences,
                 "method": plan.method, "blocks": plan.blocks},
        "trained": {"split": manifest.get("split"), "items": manifest.get("items"),
                    "data_sha256": manifest.get("data_hash")},
        "config": {k: v for k, v in asdict(cfg).items() if k not in S3T_HIDDEN_CONFIG},
        "shards": shards,
        "not_serving": [{"shard": s.shard, "status": s.status} for s in status.values() if s.status != "serving"],
        "deleted": {"samples": len(deleted_rows), "content_sha256": _hash_of_hashes(list(hash_of.values())),
                    "requests": requests},
    }
    texts = [t.strip() for r in deleted_rows for t in (r["question"], r["answer"]) if len(t.strip()) >= MIN_LEAK_CHARS]
    return serving, texts


def stage_s3t_upload(run_dir: str | Path, folder: str | Path, repo_id: str, base_model: str | None = None) -> Path:
    """Write the publishable form of an S3T run into `folder` (see module docstring); return it."""
    from llm_unlearn.s3t.service import verify_run
    from llm_unlearn.s3t.train import PLAN_FILE, base_model_path, load_run, tokenizer_path

    root = Path(run_dir)
    verify_run(root)  # refuses a run whose served checkpoints saw a deleted sample or were altered
    manifest = load_run(root)[3]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise UnlearnError(f"staging folder {out} is not empty")
    bundled = manifest["base_model"] == "base"
    if base_model:
        base = base_model
    elif bundled:
        base = S3T_BUNDLED_BASE
        shutil.copytree(base_model_path(root, manifest), out / S3T_BUNDLED_BASE)
    elif HUB_ID.match(str(manifest["base_model"])) and not Path(str(manifest["base_model"])).exists():
        base = str(manifest["base_model"])
    else:
        raise UnlearnError(f"the S3T base model is the local path {manifest['base_model']}: pass --base-model ORG/NAME "
                           "(its Hub id) so users can load the adapters")
    serving, deleted_texts = s3t_serving_manifest(root, base)
    if not serving["shards"]:
        raise UnlearnError(f"{root}: no shard is serving (run `llm-unlearn s3t retrain {root}` first)")
    ledger, *_ = load_run(root)
    for rec in ledger.active_stages():
        dest = out / S3T_ADAPTERS_DIR / f"shard{rec.shard}"
        dest.mkdir(parents=True)
        for name in ADAPTER_FILES:
            shutil.copy2(root / rec.checkpoint / name, dest / name)
        cfg_path = dest / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["base_model_name_or_path"] = base
        cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
    tok_dir = Path(tokenizer_path(root, manifest))
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, out / name)
    shutil.copy2(root / PLAN_FILE, out / PLAN_FILE)
    (out / S3T_SERVING_NAME).write_text(json.dumps(serving, indent=1) + "\n")
    summary = next((root / c for c in EVAL_SUMMARY_CANDIDATES if (root / c).is_file()), None)
    if summary is not None and find_leaks(summary, deleted_texts):
        logger.warning("%s quotes deleted samples; it is not uploaded", summary)
        summary = None
    if summary is None:
        logger.warning("no (clean) eval summary in %s: the card will say n/a for the metrics", root)
    else:
        shutil.copy2(summary, out / EVAL_SUMMARY_NAME)
    card = build_s3t_model_card(serving, repo_id, read_metrics(summary), summary is not None,
                                manifest.get("versions") or {})
    (out / "README.md").write_text(str(card), encoding="utf-8")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        leaks = find_leaks(path, deleted_texts)
        if leaks:
            raise UnlearnError(f"{path.relative_to(out)} would publish deleted-sample text ({leaks[0][:40]!r}…); "
                               "not pushing")
    return out


def build_s3t_model_card(serving: dict[str, Any], repo_id: str, metrics: dict[str, float | None], has_eval: bool,
                         versions: dict[str, str]):
    """Card of a published S3T ensemble: what it is, what was deleted (counts, hashes), how to load."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

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
             "longest prefix of slice-wise stages that never saw a deleted sample. The next-token distribution "
             "is the renormalised mean of the shards' log-probabilities (a normalised geometric mean).", "",
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


def load_published_s3t(folder: str | Path, dtype: str = "float32", base_model: str | None = None):
    """The S3T ensemble of a published folder (`stage_s3t_upload`'s layout): base + one adapter per
    shard in ``s3t_serving.json``, combined as `llm_unlearn.s3t.S3TEnsemble` does. Checks each
    adapter file against its recorded sha256. `base_model` overrides the recorded base."""
    from llm_unlearn.s3t.serve import S3TEnsemble

    class PublishedS3TEnsemble(S3TEnsemble):
        """`S3TEnsemble` read from a published folder instead of a run directory and its ledger."""

        def __init__(self, root: Path):
            import torch
            from peft import PeftModel

            from llm_unlearn.models import load_model, load_tokenizer
            from llm_unlearn.s3t.train import file_sha256

            torch.nn.Module.__init__(self)
            serving = json.loads((root / S3T_SERVING_NAME).read_text())
            if serving.get("format") != S3T_SERVING_FORMAT:
                raise UnlearnError(f"{root / S3T_SERVING_NAME}: not an llm-unlearn S3T serving manifest")
            base = base_model or serving["base_model"]
            self.run_dir, self.verify, self.manifest = root, True, serving
            self._base = load_model(str(root / base) if base == S3T_BUNDLED_BASE else base, dtype=dtype)
            self.tokenizer = load_tokenizer(str(root))
            self.peft, self.served = None, {}
            for info in serving["shards"]:
                path = root / info["adapter"]
                if file_sha256(path / "adapter_model.safetensors") != info["sha256"]:
                    raise UnlearnError(f"{path}: adapter differs from the sha256 in {S3T_SERVING_NAME}")
                name = f"shard{info['shard']}"
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
                else:
                    self.peft.load_adapter(str(path), adapter_name=name)
                self.served[info["shard"]] = info
            self.eval()

        def reload(self):
            return self.served

    return PublishedS3TEnsemble(Path(folder))
