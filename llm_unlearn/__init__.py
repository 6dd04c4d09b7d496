"""llm-unlearn: make a language model forget specific training data, and measure it.

The public API is re-exported here lazily (importing the package stays cheap for the CLI)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "load_tofu": "llm_unlearn.data.tofu",
    "generate_synthetic": ("llm_unlearn.data.synthetic", "generate"),
    "write_splits": "llm_unlearn.data.synthetic",
    "encode_qa": "llm_unlearn.data.qa",
    "tokenize_qa_dataset": "llm_unlearn.data.qa",
    "QACollator": "llm_unlearn.data.qa",
    "ForgetRetainDataset": "llm_unlearn.data.pairing",
    "Protocol": "llm_unlearn.data.protocol",
    "PROTOCOLS": "llm_unlearn.data.protocol",
    "get_protocol": "llm_unlearn.data.protocol",
    "PairedCollator": "llm_unlearn.data.pairing",
    "load_corpus": "llm_unlearn.data.corpus",
    "chunk_corpus": "llm_unlearn.data.corpus",
    "generate_domain": "llm_unlearn.data.domain",
    "write_domain": "llm_unlearn.data.domain",
    # models and finetuning
    "load_model": "llm_unlearn.models",
    "load_tokenizer": "llm_unlearn.models",
    "attach_lora": "llm_unlearn.models",
    "build_tiny": "llm_unlearn.models",
    "FinetuneConfig": "llm_unlearn.finetune",
    "finetune": "llm_unlearn.finetune",
    "finetune_on_corpus": "llm_unlearn.finetune",
    # unlearning
    "METHODS": "llm_unlearn.trainers",
    "UnlearnTrainer": "llm_unlearn.trainers",
    "run_unlearning": "llm_unlearn.unlearn",
    "MODE_DEFAULTS": "llm_unlearn.unlearn",
    # retain-free tuning
    "TuneConfig": "llm_unlearn.tune",
    "tune": "llm_unlearn.tune",
    "BestStepCallback": "llm_unlearn.tune",
    "OptimizerInBackward": "llm_unlearn.optim",
    # memory planning
    "estimate_memory": ("llm_unlearn.memory", "estimate"),
    "MemoryEstimate": "llm_unlearn.memory",
    # masks
    "WeightMask": "llm_unlearn.masks",
    "compute_mask": "llm_unlearn.masks",
    "load_mask": "llm_unlearn.masks",
    # evaluation
    "evaluate_model": "llm_unlearn.eval.evaluator",
    "score_splits": "llm_unlearn.eval.evaluator",
    "holdout_forget_quality": "llm_unlearn.eval.metrics",
    "corpus_forget_quality": "llm_unlearn.eval.metrics",
    "corpus_utility_proxy": "llm_unlearn.eval.metrics",
    "score_corpus": "llm_unlearn.eval.corpus_scores",
    "compare_split": "llm_unlearn.eval.parity",
    "load_for_eval": "llm_unlearn.eval.loading",
    "build_report": "llm_unlearn.eval.report",
    "run_lm_eval": "llm_unlearn.eval.lm_eval_tasks",
    "verbatim_memorisation": "llm_unlearn.eval.memorisation",
    "corpus_memorisation": "llm_unlearn.eval.memorisation",
    "run_attacks": "llm_unlearn.eval.attacks",
    "AttackConfig": "llm_unlearn.eval.attacks",
    # S3T
    "DeletionLedger": "llm_unlearn.s3t.ledger",
    "load_s3t_model": "llm_unlearn.s3t.serve",
    # errors
    "UnlearnError": "llm_unlearn.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'llm_unlearn' has no attribute '{name}'")
    module_name, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
