"""The upload folder: exactly what gets published, checked for forget-set text before anything
leaves the machine (`stage_upload`); an S3T run is staged as its served ensemble (`stage_s3t_upload`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError
from huggingface_hub.utils import validate_repo_id as hub_validate

from llm_unlearn.data.tofu import load_tofu
from llm_unlearn.errors import UnlearnError
from llm_unlearn.hub.card import (
    ADAPTER_FILES,
    EVAL_SUMMARY_CANDIDATES,
    EVAL_SUMMARY_NAME,
    HUB_ID,
    MIN_LEAK_CHARS,
    S3T_ADAPTERS_DIR,
    S3T_BUNDLED_BASE,
    S3T_HIDDEN_CONFIG,
    S3T_SERVING_FORMAT,
    S3T_SERVING_NAME,
    TEXT_SUFFIXES,
    TOKENIZER_FILES,
    build_model_card,
    build_s3t_model_card,
    collect_run,
    forget_info,
    read_metrics,
    resolve_base_model,
)
from llm_unlearn.runinfo import read_manifest
from llm_unlearn.s3t.service import verify_run
from llm_unlearn.s3t.train import PLAN_FILE, S3T_FORMAT, base_model_path, load_run, tokenizer_path

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Forget-set leak check


def forget_strings(manifest: dict[str, Any]) -> list[str] | None:
    """Question/answer strings of the run's forget split, or None when it cannot be loaded."""
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
    try:
        hub_validate(repo_id)
    except HFValidationError as exc:
        raise UnlearnError(f"--repo-id '{repo_id}' is not a valid Hub repo id (ORG/NAME): {str(exc).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise UnlearnError(f"--repo-id '{repo_id}' must be ORG/NAME")


# ----------------------------------------------------------------------------------------------
# S3T runs: the served ensemble


def _hash_of_hashes(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def s3t_serving_manifest(run_dir: str | Path, base: str) -> tuple[dict[str, Any], list[str]]:
    """The serving manifest of an S3T run (no sample text: counts, ids of shards, sha256 only) and
    the deleted samples' text (for the leak check; never written)."""
    ledger, plan, cfg, manifest = load_run(run_dir)
    status = {s.shard: s for s in ledger.status()}
    shards = []
    for rec in ledger.active_stages():
        st = status[rec.shard]
        shards.append({"shard": rec.shard, "adapter": f"{S3T_ADAPTERS_DIR}/shard{rec.shard}", "sequence": rec.sequence,
                       "prefix": rec.stage, "num_slices": st.num_slices, "generation": rec.generation,
                       "slices": rec.slices, "trained_samples": rec.num_samples, "sha256": rec.sha256,
                       "weights_sha256": rec.weights_sha256})
    deleted_rows = ledger.deleted_content_hashes()  # the text itself may already be purged
    hash_of = dict(deleted_rows)
    requests = [{"request_id": d["request_id"], "requested_at": d["requested_at"], "samples": len(d["sample_ids"]),
                 "content_sha256": _hash_of_hashes([hash_of[i] for i in d["sample_ids"] if i in hash_of]),
                 "affected_shards": d["affected_shards"], "retrain_shards": d["retrain_shards"], "status": d["status"]}
                for d in ledger.deletions()]  # the request's text query is left out: it quotes the data
    serving = {
        "format": S3T_SERVING_FORMAT, "s3t_format": S3T_FORMAT, "base_model": base,
        "aggregate": cfg.aggregate,
        "combine": f"{cfg.aggregate} over the serving shards (llm_unlearn.s3t.serve)",
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
    texts = [t.strip() for t in ledger.deleted_texts() if len(t.strip()) >= MIN_LEAK_CHARS]
    return serving, texts


def stage_s3t_upload(run_dir: str | Path, folder: str | Path, repo_id: str, base_model: str | None = None) -> Path:
    """Write the publishable form of an S3T run into `folder` (see module docstring); return it."""
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
    elif (HUB_ID.match(str(manifest["base_model"])) and not str(manifest["base_model"]).startswith("..")
          and not Path(str(manifest["base_model"])).exists()):
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

