"""Fixtures for evaluation tests: the published TOFU reference logs and a saved tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference_logs(shared_tofu) -> Path:
    path = shared_tofu / "reference_logs"
    if not (path / "llama2-7b_full" / "eval_log_forget.json").is_file():
        pytest.skip(f"TOFU reference logs not found under {path}")
    return path


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random tiny model + tokenizer saved to disk (for the CLI)."""
    from llm_unlearn.models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(tiny_tokenizer, seed=0).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out
