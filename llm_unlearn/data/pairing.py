"""Forget/retain pairing: each forget item is paired with a seeded random retain item, so one
epoch is one pass over the forget set (as in TOFU's unlearning scripts).

By default the partners are drawn again every epoch (``set_epoch``, seeded by (seed, epoch)), as
TOFU and open-unlearning draw a random retain item at every access; ``resample=False`` keeps
one draw for the whole run. Per-epoch forget-side variants (``forget_variants``: e.g. the
IdK-DPO refusal answers, one tokenised draw per epoch) are merged into the forget item of the
current epoch."""

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
    """Items ``{"forget": f_i, "retain": r_{π_e(i)}}`` over tokenised QA datasets or corpus windows, π_e
    the partner draw of epoch e (`set_epoch`; one draw for all epochs when not `resample`)."""

    def __init__(self, forget: Dataset, retain: Dataset | None, seed: int = 0, resample: bool = True,
                 forget_variants: list[Dataset] | None = None):
        if len(forget) == 0:
            raise UnlearnError("forget set is empty")
        if retain is not None:
            if len(retain) == 0:
                raise UnlearnError("retain set is empty")
            if "question" in forget.column_names and "question" in retain.column_names:
                check_no_overlap(forget, retain)  # corpora are checked by document (data.corpus)
        self.forget = forget
        self.retain = retain
        self.seed = seed
        self.resample = resample
        self.forget_variants = forget_variants
        self.epoch = 0
        self.retain_index = self.partners(0)

    def partners(self, epoch: int) -> list[int] | None:
        """The retain partner of every forget item in `epoch` (seeded by seed and epoch)."""
        if self.retain is None:
            return None
        rng = random.Random(self.seed if not self.resample or epoch == 0 else f"{self.seed}:{epoch}")
        return [rng.randrange(len(self.retain)) for _ in range(len(self.forget))]

    def set_epoch(self, epoch: int) -> None:
        """Draw the partners (and pick the forget variant) of `epoch`."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.retain_index = self.partners(epoch if self.resample else 0)

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        forget = self.forget[i]
        if self.forget_variants:
            variant = self.forget_variants[(self.epoch if self.resample else 0) % len(self.forget_variants)]
            forget = {**forget, **variant[i]}
        item = {"forget": forget}
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
