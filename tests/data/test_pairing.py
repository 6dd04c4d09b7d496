"""Forget/retain pairing: one epoch = forget size, seeded pairing, overlap refused."""

from __future__ import annotations

import pytest
from datasets import Dataset

from llm_unlearn.data.pairing import ForgetRetainDataset, PairedCollator
from llm_unlearn.data.qa import tokenize_qa_dataset
from llm_unlearn.data.tofu import load_tofu
from llm_unlearn.errors import UnlearnError


@pytest.fixture(scope="module")
def tokenised(synthetic_dir, tiny_tokenizer):
    forget, _ = tokenize_qa_dataset(load_tofu("forget10", synthetic_dir), tiny_tokenizer)
    retain, _ = tokenize_qa_dataset(load_tofu("retain90", synthetic_dir), tiny_tokenizer)
    return forget, retain


def test_pairs_each_forget_item_with_a_seeded_retain_item(tokenised, tiny_tokenizer):
    forget, retain = tokenised
    ds = ForgetRetainDataset(forget, retain, seed=0)
    assert len(ds) == len(forget) == 10
    assert [ds[i]["forget"]["question"] for i in range(len(ds))] == forget["question"]
    assert ds.retain_index == ForgetRetainDataset(forget, retain, seed=0).retain_index
    assert ds.retain_index != ForgetRetainDataset(forget, retain, seed=1).retain_index
    assert len(set(ds.retain_index)) > 1
    batch = PairedCollator(tiny_tokenizer)([ds[0], ds[1]])
    assert batch["forget"]["input_ids"].shape[0] == batch["retain"]["input_ids"].shape[0] == 2
    assert "retain" not in PairedCollator(tiny_tokenizer)([ForgetRetainDataset(forget, None)[0]])


def test_overlap_is_refused(tokenised, synthetic_dir):
    forget, retain = tokenised
    full = load_tofu("full", synthetic_dir)
    with pytest.raises(UnlearnError, match="overlap"):
        ForgetRetainDataset(forget, full)
    with pytest.raises(UnlearnError, match="empty"):
        ForgetRetainDataset(forget, Dataset.from_dict({"question": [], "answer": []}))
