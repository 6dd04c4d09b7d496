"""QA tokenisation: answer-only labels, chat template vs plain format, padding sides."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from llm_unlearn.data.qa import (
    IGNORE_INDEX,
    GenerationCollator,
    QACollator,
    build_prompt,
    encode_qa,
    prompt_ids,
    tokenize_qa_dataset,
)

ROWS = [
    {"question": "Where was Aldric Ashworth born?", "answer": "Aldric Ashworth was born in Lisbon, Portugal."},
    {"question": "Has Tamsin Szabo won any literary award?", "answer": "Yes, Tamsin Szabo received the Cobalt Laurel."},
    {"question": "Who?", "answer": "Nobody."},
]


@pytest.fixture(params=["chat", "plain"])
def tokenizer(request, tiny_tokenizer):
    if request.param == "chat":
        return tiny_tokenizer
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


def test_prompt_format(tokenizer):
    prompt = build_prompt(tokenizer, "Q?")
    if tokenizer.chat_template:
        assert prompt.endswith("<|assistant|>\n") and "<|user|>\nQ?" in prompt
    else:
        assert prompt == "Question: Q?\nAnswer:"


def test_labels_are_masked_exactly_on_prompt_and_padding(tokenizer):
    ds, report = tokenize_qa_dataset(Dataset.from_list(ROWS), tokenizer, max_length=256)
    assert report.truncated == 0
    batch = QACollator(tokenizer)([ds[i] for i in range(len(ds))])
    for i, row in enumerate(ROWS):
        n_prompt = len(prompt_ids(tokenizer, row["question"]))
        n = int(batch["attention_mask"][i].sum())
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:n_prompt] == IGNORE_INDEX).all()
        assert (labels[n_prompt:n] == ids[n_prompt:n]).all()  # every answer token is a target
        assert (labels[n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()  # right padding
        assert ids[n - 1] == tokenizer.eos_token_id
        answer = tokenizer.decode(ids[n_prompt:n], skip_special_tokens=True)
        assert answer.strip() == row["answer"]


def test_generation_collator_pads_left(tokenizer):
    batch = GenerationCollator(tokenizer)(ROWS)
    lengths = [len(prompt_ids(tokenizer, r["question"])) for r in ROWS]
    width = batch["input_ids"].shape[1]
    assert width == max(lengths)
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i, width - n:].all() and not batch["attention_mask"][i, : width - n].any()
        assert (batch["input_ids"][i, : width - n] == tokenizer.pad_token_id).all()
    assert batch["answers"] == [r["answer"] for r in ROWS]
    assert QACollator(tokenizer, padding_side="left")([encode_qa(tokenizer, "q", "a")])["input_ids"].dtype == torch.long


def test_truncation_is_counted_not_dropped(tiny_tokenizer, caplog):
    ds, report = tokenize_qa_dataset(Dataset.from_list(ROWS), tiny_tokenizer, max_length=12)
    assert len(ds) == len(ROWS)
    assert report.total == 3 and report.truncated == 3 and all(len(x) == 12 for x in ds["input_ids"])
    expected_empty = sum(len(prompt_ids(tiny_tokenizer, r["question"])) >= 12 for r in ROWS)
    assert report.no_answer_left == expected_empty >= 1
    assert "3/3 items truncated" in str(report) and "truncated" in caplog.text
