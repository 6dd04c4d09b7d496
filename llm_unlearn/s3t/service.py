"""The S3T deletion service a compliance team runs on a run directory: delete (by id or text),
status, retrain the shards that lost every sequence, and verify that what is served is exact.
Every function opens the run through `load_run`, which refuses directories written by another
format or ledger schema version."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.ledger import DeletionHook, DeletionResult, ShardStatus
from llm_unlearn.s3t.train import file_sha256, load_run, reproduce_stage, retrain_shards, weights_sha256


def delete_samples(run_dir: str | Path, ids: Iterable[str] | None = None, match: str | None = None,
                   hook: DeletionHook | None = None) -> DeletionResult:
    """Delete samples (ids and/or text match) in one ledger transaction; see `DeletionLedger.delete`."""
    ledger, *_ = load_run(run_dir)
    return ledger.delete(ids=ids, match=match, hook=hook)


def run_status(run_dir: str | Path) -> list[ShardStatus]:
    ledger, *_ = load_run(run_dir)
    return ledger.status()


def retrain(run_dir: str | Path, shards: list[int] | None = None) -> list[int]:
    """Retrain the shards marked ``needs_retrain`` (all B sequences, deleted samples left out)."""
    return retrain_shards(run_dir, shards)


def verify_run(run_dir: str | Path, reproduce: bool = False) -> dict:
    """Check exactness of what is served: no served stage saw a deleted sample; every served
    checkpoint file matches its recorded sha256; with `reproduce`, each served prefix is retrained
    from scratch and must match the checkpoint bit for bit. Raises UnlearnError on a violation."""
    run_dir = Path(run_dir)
    ledger, *_ = load_run(run_dir)
    overlap = ledger.active_deleted_overlap()
    if overlap:
        raise UnlearnError(f"served stage {overlap[0][0]} was trained on deleted sample {overlap[0][1]}")
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
