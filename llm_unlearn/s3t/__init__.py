"""S3T exact deletion (Chowdhury et al., 2024, "Towards Scalable Exact Machine Unlearning Using
Parameter-Efficient Fine-Tuning"): plan, slice-wise LoRA training, the deletion ledger and
serving the surviving adapter prefixes."""

from llm_unlearn.s3t.ledger import DeletionLedger, DeletionResult, ShardStatus, StageRecord
from llm_unlearn.s3t.plan import S3TPlan, bipartite_sequences, cyclic_sequences, layer_blocks, make_plan
from llm_unlearn.s3t.serve import S3TEnsemble, aggregate_logprobs, load_s3t_model
from llm_unlearn.s3t.service import (
    compare_with_reference,
    delete_samples,
    purge,
    retrain,
    run_status,
    verify_run,
)
from llm_unlearn.s3t.train import AGGREGATES, S3TConfig, load_run, reproduce_stage, retrain_shards, train_s3t

__all__ = [
    "AGGREGATES", "aggregate_logprobs", "compare_with_reference", "purge",
    "DeletionLedger", "DeletionResult", "S3TConfig", "S3TEnsemble", "S3TPlan", "ShardStatus", "StageRecord",
    "bipartite_sequences", "cyclic_sequences", "delete_samples", "layer_blocks", "load_run", "load_s3t_model",
    "make_plan", "reproduce_stage", "retrain", "retrain_shards", "run_status", "train_s3t", "verify_run",
]
