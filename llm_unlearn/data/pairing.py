"""Forget/retain pairing: each forget item is paired with a seeded random retain item, so one
epoch is one pass over the forget set (as in TOFU's unlearning scripts)."""

from __future__ import annotations

import hashlib
import random

import torch
from datasets import Dataset
from torch.utils.data import Dataset as TorchDataset

from llm_unlearn.data.qa import QACollator
from llm_unlearn.errors import UnlearnError


def qa_key(question: str, answer: str) -> str:
    return hashlib.sha256(f"{question}\x00{answer}".encode()).hexdigest()


def check_no_overlap(forget: Dataset, retain: Dataset) -> None:
    """Refuse a retain set that contains a forget item (same question and answer)."""
    forget_keys = {qa_key(q, a) for q, a in zip(forget["question"], forget["answer"])}
    for i, (q, a) in enumerate(zip(retain["question"], retain["answer"])):
        if qa_key(q, a) in forget_keys:
            raise UnlearnError(f"forget and retain sets overlap: retain item {i} ('{q[:60]}') is in the forget set")


class ForgetRetainDataset(TorchDataset):
    """Items ``{"forget": f_i, "retain": r_{π(i)}}`` over tokenised QA datasets or corpus windows."""

    def __init__(self, forget: Dataset, retain: Dataset | None, seed: int = 0):
        if len(forget) == 0:
            raise UnlearnError("forget set is empty")
        if retain is not None:
            if len(retain) == 0:
                raise UnlearnError("retain set is empty")
            if "question" in forget.column_names and "question" in retain.column_names:
                check_no_overlap(forget, retain)  # corpora are checked by document (data.corpus)
        self.forget = forget
        self.retain = retain
        rng = random.Random(seed)
        self.retain_index = [rng.randrange(len(retain)) for _ in range(len(forget))] if retain is not None else None

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.forget[i]}
        if self.retain is not None:
            item["retain"] = self.retain[self.retain_index[i]]
        return item


class PairedCollator:
    """Collates ``{"forget": …, "retain": …}`` items into two padded batches."""

    def __init__(self, tokenizer):
        self.qa = QACollator(tokenizer, padding_side="right")

    def __call__(self, items: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        batch = {"forget": self.qa([it["forget"] for it in items])}
        if "retain" in items[0]:
            batch["retain"] = self.qa([it["retain"] for it in items])
        return batch
