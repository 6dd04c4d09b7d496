"""The S3T deletion service a compliance team runs on a run directory: delete (by id or text),
status, retrain the shards that lost every sequence, purge what a deletion left behind, verify
that what is served is exact and nothing trained on a deleted sample is left, and compare a run
with its exact-retrain reference. Every function opens the run through `load_run`, which refuses
directories written by another format or ledger schema version."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.ledger import LEDGER_FILE, DeletionHook, DeletionResult, ShardStatus
from llm_unlearn.s3t.train import (
    AGGREGATES,
    CHECKPOINTS_DIR,
    LOCK_FILE,
    TOKENIZER_SPLITS,
    file_sha256,
    load_run,
    reproduce_stage,
    retrain_shards,
    run_lock,
    weights_sha256,
)

MIN_QUOTE_CHARS = 24  # shorter deleted text (a name, "Yes.") is not looked for in other files: too many false hits


def delete_samples(run_dir: str | Path, ids: Iterable[str] | None = None, match: str | None = None,
                   hook: DeletionHook | None = None) -> DeletionResult:
    """Delete samples (ids and/or text match) in one ledger transaction; see `DeletionLedger.delete`."""
    ledger, *_ = load_run(run_dir)
    return ledger.delete(ids=ids, match=match, hook=hook)


def check_servable(run_dir: str | Path, aggregate: str | None = None, allow_base: bool = False) -> None:
    """Before loading anything: the serving mode is known and some shard serves (or `allow_base`)."""


    ledger, *_ = load_run(run_dir)
    if aggregate is not None and aggregate not in AGGREGATES:
        raise UnlearnError(f"--aggregate {aggregate!r} unknown (expected one of {', '.join(AGGREGATES)})")
    if not ledger.active_stages() and not allow_base:
        raise UnlearnError(f"{run_dir}: no shard is serving (all await retraining), so only the bare base model "
                           f"could answer; run `llm-unlearn s3t retrain {run_dir}`, or pass --allow-base")


def run_status(run_dir: str | Path) -> list[ShardStatus]:
    ledger, *_ = load_run(run_dir)
    return ledger.status()


def retrain(run_dir: str | Path, shards: list[int] | None = None) -> list[int]:
    """Retrain the shards marked ``needs_retrain`` (all B sequences, deleted samples left out), then
    `purge` what the deletions left behind."""
    load_run(run_dir)  # a missing or foreign directory is refused before the lock file is made
    with run_lock(run_dir):
        done = retrain_shards(run_dir, shards)
        _purge(Path(run_dir))
    return done


def purge(run_dir: str | Path) -> dict:
    """Remove everything a deletion left behind (``s3t purge``):

    * files in the run directory that quote a deleted question, answer or ``--match`` text (an
      evaluation written before the deletion, say), found byte for byte, JSON-escaped too;
    * the ledger's records of stages that saw a deleted sample, or belong to a superseded
      generation, and the deleted text (its normalised hashes stay, for ``--match`` idempotence);
    * every checkpoint directory the ledger no longer records: those stages, and generations
      orphaned by a retrain that was killed;
    * the free pages and WAL of the ledger file (``VACUUM``, truncating checkpoint).

    Safe to run again at any point (a crash in between leaves work the next run finishes)."""
    load_run(run_dir)  # a missing or foreign directory is refused before the lock file is made
    with run_lock(run_dir):
        return _purge(Path(run_dir))


def _purge(run_dir: Path) -> dict:
    ledger, *_ = load_run(run_dir)
    texts = ledger.deleted_texts()
    quoting = files_quoting(run_dir, texts)
    for path in quoting:
        path.unlink()
    dropped = ledger.purge_records()
    removed = [str(p.relative_to(run_dir)) for p in unrecorded_checkpoints(run_dir, ledger)]
    for rel in removed:
        target = run_dir / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    _remove_empty_dirs(run_dir / CHECKPOINTS_DIR)
    ledger.wipe()
    return {"stages_dropped": len(dropped), "checkpoints_removed": removed,
            "files_removed": [str(p.relative_to(run_dir)) for p in quoting], "texts_removed": len(texts)}


def _needles(texts: list[str]) -> list[bytes]:
    out = set()
    for t in texts:
        t = t.strip()
        if len(t) >= MIN_QUOTE_CHARS:
            out.add(t.encode())
            out.add(json.dumps(t)[1:-1].encode())
    return sorted(out)


def files_quoting(run_dir: str | Path, texts: list[str]) -> list[Path]:
    """Files of the run directory (binary ones too; the ledger and lock file aside) that contain any
    of `texts` (those of at least `MIN_QUOTE_CHARS` characters), raw or JSON-escaped."""
    needles = _needles(texts)
    if not needles:
        return []
    skip = {LEDGER_FILE, f"{LEDGER_FILE}-wal", f"{LEDGER_FILE}-shm", f"{LEDGER_FILE}-journal", LOCK_FILE}
    out = []
    for path in sorted(Path(run_dir).rglob("*")):
        if path.is_file() and not (path.parent == Path(run_dir) and path.name in skip):
            data = path.read_bytes()
            if any(n in data for n in needles):
                out.append(path)
    return out


def unrecorded_checkpoints(run_dir: str | Path, ledger) -> list[Path]:
    """Stage directories (and stray files) under ``checkpoints/`` that no ledger stage records."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    recorded = {Path(run_dir) / rec.checkpoint for rec in ledger.stages()}
    keep = set(recorded)
    for path in recorded:
        keep.update(path.parents)
    out = []

    def walk(d: Path) -> None:
        for child in sorted(d.iterdir()):
            if child in recorded:
                continue
            if child in keep and child.is_dir():
                walk(child)
            else:
                out.append(child)

    walk(root)
    return out


def _remove_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def verify_run(run_dir: str | Path, reproduce: bool = False) -> dict:
    """Check exactness of what is served: no served stage saw a deleted sample; nothing trained on
    a deleted sample is left (`check_nothing_left`); every served checkpoint file matches its
    recorded sha256; with `reproduce`, each served prefix is retrained from scratch and must match
    the checkpoint bit for bit. Raises UnlearnError on a violation."""
    run_dir = Path(run_dir)
    ledger, _plan, cfg, manifest = load_run(run_dir)
    overlap = ledger.active_deleted_overlap()
    if overlap:
        raise UnlearnError(f"served stage {overlap[0][0]} was trained on deleted sample {overlap[0][1]}")
    check_nothing_left(run_dir, ledger, cfg, manifest)
    checked = []
    for rec in ledger.active_stages():
        weights = run_dir / rec.checkpoint / "adapter_model.safetensors"
        if not weights.is_file():
            raise UnlearnError(f"served checkpoint missing: {weights}")
        if file_sha256(weights) != rec.sha256 or weights_sha256(load_file(str(weights))) != rec.weights_sha256:
            raise UnlearnError(f"{weights}: contents differ from the ledger's sha256")
        entry = {"shard": rec.shard, "sequence": rec.sequence, "prefix": rec.stage, "checkpoint": rec.checkpoint,
                 "sha256": rec.sha256}
        if reproduce:
            again = weights_sha256(reproduce_stage(run_dir, rec.stage_id))
            if again != rec.weights_sha256:
                raise UnlearnError(f"shard {rec.shard}: retraining prefix {rec.stage} from scratch gave different weights")
            entry["reproduced"] = True
        checked.append(entry)
    return {"served": checked, "deleted_samples": len(ledger.deleted_ids()), "pending_retrain": ledger.retrain_pending()}


def check_nothing_left(run_dir: str | Path, ledger, cfg, manifest: dict) -> None:
    """Raise if an artefact trained on (or holding) a deleted sample still exists: a recorded stage
    that saw one, a checkpoint directory the ledger does not vouch for (an orphaned generation),
    deleted text in the ledger, or a tokenizer trained on the deletable split."""
    run_dir = Path(run_dir)
    hint = f"run: llm-unlearn s3t purge {run_dir}"
    dirty = ledger.dirty_stages()
    if dirty:
        rec, sid = dirty[0]
        raise UnlearnError(f"{len(dirty)} checkpoint(s) trained on deleted samples still exist "
                           f"({rec.checkpoint} saw {sid}); {hint}")
    orphans = unrecorded_checkpoints(run_dir, ledger)
    if orphans:
        raise UnlearnError(f"{len(orphans)} checkpoint path(s) no ledger stage records "
                           f"({orphans[0].relative_to(run_dir)}, e.g. from a killed retrain); {hint}")
    held = ledger.deleted_texts()
    if held:
        raise UnlearnError(f"the ledger still holds {len(held)} text(s) of deleted samples or queries; {hint}")
    trained_on = manifest.get("tokenizer_trained_on")
    if manifest.get("base_model") == "base" and (
            not isinstance(trained_on, list) or cfg.split in trained_on or set(trained_on) - set(TOKENIZER_SPLITS)):
        raise UnlearnError(f"{run_dir}/base: the tiny tokenizer was trained on {trained_on!r}, not only on the "
                           "utility splits: deleted samples may live on in its vocabulary; retrain the run")


def compare_with_reference(run_dir: str | Path, reference_dir: str | Path) -> dict:
    """Compare a run after deletions with its exact-retrain reference (``s3t train --exclude-ids``
    or ``--exclude-split`` with the same settings): for every shard the run serves, the reference's
    checkpoint at the same shard, slice order and stage must hold bit-identical weights, having
    been trained on exactly the same samples. Returns ``{"identical": bool, "shards": [...]}``;
    the run's serving state is what `load_s3t_model(reference, serve_like=run)` reproduces."""
    run_ledger, run_plan, run_cfg, _ = load_run(run_dir)
    ref_ledger, ref_plan, ref_cfg, _ = load_run(reference_dir)
    if (run_plan.shards, run_plan.sequences) != (ref_plan.shards, ref_plan.sequences):
        raise UnlearnError(f"{reference_dir}: another plan than {run_dir} (train it with the same data, "
                           "--max-items, --shards, --slices, --sequences, --method and --seed)")
    ref_stages = {(r.shard, r.sequence, r.stage): r for r in ref_ledger.stages()}
    shards, identical = [], True
    for rec in run_ledger.active_stages():
        ref = ref_stages.get((rec.shard, rec.sequence, rec.stage))
        same_samples = ref is not None and (set(run_ledger.stage_sample_ids(rec.stage_id))
                                            == set(ref_ledger.stage_sample_ids(ref.stage_id)))
        same = ref is not None and ref.weights_sha256 == rec.weights_sha256
        identical &= same and same_samples
        shards.append({"shard": rec.shard, "sequence": rec.sequence, "prefix": rec.stage, "same_samples": same_samples,
                       "identical": same, "weights_sha256": rec.weights_sha256,
                       "reference_sha256": ref.weights_sha256 if ref else None})
    return {"identical": identical and bool(shards), "shards": shards}
