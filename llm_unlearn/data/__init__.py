"""Data: TOFU loading, raw-text corpora (chunking), the fictitious technical domain, the synthetic
fictitious-author generator, protocols, QA tokenisation, pairing.

The names below are re-exported lazily, so that `llm_unlearn.data.source` (split names and
validation, no torch) stays cheap to import for the CLI."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IGNORE_INDEX": "llm_unlearn.data.qa",
    "GenerationCollator": "llm_unlearn.data.qa",
    "QACollator": "llm_unlearn.data.qa",
    "build_prompt": "llm_unlearn.data.qa",
    "encode_qa": "llm_unlearn.data.qa",
    "tokenize_qa_dataset": "llm_unlearn.data.qa",
    "ForgetRetainDataset": "llm_unlearn.data.pairing",
    "PairedCollator": "llm_unlearn.data.pairing",
    "check_no_overlap": "llm_unlearn.data.pairing",
    "generate_synthetic": ("llm_unlearn.data.synthetic", "generate"),
    "write_splits": "llm_unlearn.data.synthetic",
    "load_tofu": "llm_unlearn.data.tofu",
    "read_refusals": "llm_unlearn.data.tofu",
    "check_split": "llm_unlearn.data.source",
    "matching_retain_split": "llm_unlearn.data.source",
    "check_input_kinds": "llm_unlearn.data.source",
    "ChunkReport": "llm_unlearn.data.corpus",
    "chunk_corpus": "llm_unlearn.data.corpus",
    "load_corpus": "llm_unlearn.data.corpus",
    "generate_domain": "llm_unlearn.data.domain",
    "write_domain": "llm_unlearn.data.domain",
    "PROTOCOLS": "llm_unlearn.data.protocol",
    "Protocol": "llm_unlearn.data.protocol",
    "get_protocol": "llm_unlearn.data.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'llm_unlearn.data' has no attribute '{name}'")
    module_name, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
