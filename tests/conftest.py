"""Shared fixtures: synthetic TOFU-schema data, a tiny random Llama, and finetuned target /
retain models, each built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and tests that start torchrun workers would
# oversubscribe 2 cores (OpenMP spin-waits make that ~100x slower), so one thread each.
torch.set_num_threads(1)

# the real TOFU copy beside the checkout; LLM_UNLEARN_TOFU_DATA points elsewhere (e.g. from a worktree)
SHARED_TOFU = Path(os.environ.get("LLM_UNLEARN_TOFU_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu")
N_AUTHORS, QA_PER_AUTHOR = 10, 10


@pytest.fixture(autouse=True)
def _own_tune_start_cache(tmp_path, monkeypatch):
    """Each test its own cache of `tune`'s starting-model scores: no test reads another's (or the
    user's) cached scores, and none writes into ~/.cache."""
    monkeypatch.setenv("LLM_UNLEARN_TUNE_START_CACHE", str(tmp_path / "tune_start_cache"))


@pytest.fixture(scope="session")
def shared_tofu() -> Path:
    if not (SHARED_TOFU / "full.jsonl").is_file():
        pytest.skip(f"real TOFU data not found at {SHARED_TOFU} (shared/ is only beside the developers' checkout; "
                    "set LLM_UNLEARN_TOFU_DATA)")
    return SHARED_TOFU


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from llm_unlearn.data.synthetic import generate, write_splits

    return write_splits(generate(N_AUTHORS, QA_PER_AUTHOR, seed=0), tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_dir):
    from llm_unlearn.models import texts_for_tokenizer, train_tiny_tokenizer

    return train_tiny_tokenizer(texts_for_tokenizer(synthetic_dir), vocab_size=1024)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from llm_unlearn.models import build_tiny_model

    return build_tiny_model(tiny_tokenizer, seed=0)


def _finetune(tmp_path_factory, synthetic_dir, split: str) -> Path:
    from llm_unlearn.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp(f"finetuned_{split}")
    cfg = FinetuneConfig(model="tiny", data=str(synthetic_dir), split=split, output=str(out),
                         epochs=15, lr=3e-3, batch_size=16, seed=0)
    return finetune(cfg)


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory, synthetic_dir) -> Path:
    """Tiny model finetuned on `full` (+ utility sets): the model to unlearn."""
    return _finetune(tmp_path_factory, synthetic_dir, "full")


@pytest.fixture(scope="session")
def retain_dir(tmp_path_factory, synthetic_dir) -> Path:
    """Tiny model finetuned on `retain90` (+ utility sets): the gold standard for forget quality."""
    return _finetune(tmp_path_factory, synthetic_dir, "retain90")
