"""QA tokenisation: prompt (chat template, else ``Question: …\\nAnswer:``) + answer + EOS, with
labels on the answer tokens only (prompt and padding positions are -100).

Prompt and answer are tokenised separately and concatenated, so the answer's tokens are the
same whatever the prompt; training, unlearning and evaluation all use this one function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from llm_unlearn.errors import UnlearnError

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"

logger = logging.getLogger(__name__)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The text that precedes the answer (ends where generation starts)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": question}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_PROMPT.format(question=question)


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = build_prompt(tokenizer, question)
    if has_chat_template(tokenizer):
        # the template already writes BOS / special tokens as text
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    text = answer if has_chat_template(tokenizer) else " " + answer.lstrip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def check_tokenizer(tokenizer) -> None:
    """Fail early if a tokenizer lacks what QA training needs."""
    if tokenizer.eos_token_id is None:
        raise UnlearnError("tokenizer has no eos_token; set one (answers end with EOS)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def encode_qa(tokenizer, question: str, answer: str, max_length: int | None = None) -> dict[str, Any]:
    """Token ids, labels (-100 on the prompt) and whether `max_length` cut the answer."""
    p = prompt_ids(tokenizer, question)
    a = answer_ids(tokenizer, answer)
    ids = p + a
    labels = [IGNORE_INDEX] * len(p) + a
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids), "truncated": truncated}


@dataclass
class TokenizationReport:
    """How many items `max_length` truncated (never dropped silently)."""

    total: int
    truncated: int
    no_answer_left: int

    def __str__(self) -> str:
        return (
            f"{self.truncated}/{self.total} items truncated by max_length"
            f" ({self.no_answer_left} with no answer token left)"
        )


def tokenize_qa_dataset(
    dataset: Dataset,
    tokenizer,
    max_length: int | None = 256,
    question_key: str = "question",
    answer_key: str = "answer",
) -> tuple[Dataset, TokenizationReport]:
    """Tokenise every row; keep `question`/`answer` text columns (collators ignore them)."""
    check_tokenizer(tokenizer)
    rows = []
    truncated = no_answer = 0
    for row in dataset:
        enc = encode_qa(tokenizer, row[question_key], row[answer_key], max_length)
        truncated += enc.pop("truncated")
        if all(label == IGNORE_INDEX for label in enc["labels"]):
            no_answer += 1
        rows.append({"question": row[question_key], "answer": row[answer_key], **enc})
    report = TokenizationReport(total=len(rows), truncated=truncated, no_answer_left=no_answer)
    if truncated:
        logger.warning("tokenisation: %s", report)
    return Dataset.from_list(rows), report


def pad_sequences(seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
    return out


class QACollator:
    """Pads tokenised QA features: right padding (training / scoring) by default."""

    def __init__(self, tokenizer, padding_side: str = "right"):
        check_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.padding_side = padding_side

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        side = self.padding_side
        batch = {
            "input_ids": pad_sequences([f["input_ids"] for f in features], self.pad_id, side),
            "attention_mask": pad_sequences([f["attention_mask"] for f in features], 0, side),
            "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX, side),
        }
        return batch


class GenerationCollator:
    """Left-padded prompts for batched greedy generation; answers kept as text."""

    def __init__(self, tokenizer):
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        prompts = [prompt_ids(self.tokenizer, r["question"]) for r in rows]
        return {
            "input_ids": pad_sequences(prompts, self.tokenizer.pad_token_id, "left"),
            "attention_mask": pad_sequences([[1] * len(p) for p in prompts], 0, "left"),
            "answers": [r["answer"] for r in rows],
        }
