"""S3T fixtures: one tiny S3T run (2 shards x 2 slices x 2 sequences, 1 epoch per stage) trained
once per session; tests that delete work on a copy.

S3T tests run torch on one thread: the tiny model gains nothing from two, and a busy machine
makes two threads many times slower. Bitwise reproduction is checked under the same setting."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    with _one_thread():
        yield


def s3t_config(data, out, **overrides):
    """The settings of the session's S3T run (2 shards x 2 slices x 2 sequences, 32 items)."""
    from llm_unlearn.s3t.train import S3TConfig

    settings = dict(model="tiny", data=str(data), split="full", output=str(out), shards=2, slices=2, sequences=2,
                    epochs_per_stage=1, lr=1e-2, batch_size=8, max_items=32, seed=0)
    return S3TConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def s3t_settings():
    return s3t_config


@pytest.fixture(scope="session")
def s3t_run(tmp_path_factory, synthetic_dir) -> Path:
    from llm_unlearn.s3t.train import train_s3t

    out = tmp_path_factory.mktemp("s3t_run")
    with _one_thread():
        return train_s3t(s3t_config(synthetic_dir, out))


@pytest.fixture()
def run_copy(s3t_run, tmp_path) -> Path:
    """A private copy of the trained run (deletions change its ledger)."""
    dst = tmp_path / "run"
    shutil.copytree(s3t_run, dst)
    return dst
