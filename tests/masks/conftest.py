"""Fixtures for mask tests: tokenised forget/retain sets, loaders, toy linear models, a trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@pytest.fixture(scope="session")
def qa_sets(synthetic_dir, tiny_tokenizer):
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu

    forget, _ = tokenize_qa_dataset(load_tofu("forget10", str(synthetic_dir)), tiny_tokenizer, max_length=96)
    retain, _ = tokenize_qa_dataset(load_tofu("retain90", str(synthetic_dir)).select(range(20)), tiny_tokenizer,
                                    max_length=96)
    return forget, retain  # text columns kept for pairing; QACollator ignores them


@pytest.fixture()
def loaders(qa_sets, tiny_tokenizer):
    from llm_unlearn.data.qa import QACollator

    forget, retain = qa_sets
    collate = QACollator(tiny_tokenizer)
    return (DataLoader(forget, batch_size=5, collate_fn=collate), DataLoader(retain, batch_size=5, collate_fn=collate))


class TwoLayerLinear(nn.Module):
    """logits = W2 · W1 · onehot(token); loss = mean CE at positions whose label is not -100 (no shift)."""

    def __init__(self, vocab: int = 12, hidden: int = 6, seed: int = 0, in_vocab: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.in_vocab = in_vocab or vocab
        self.fc1 = nn.Linear(self.in_vocab, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        x = F.one_hot(input_ids % self.in_vocab, self.in_vocab).float()
        logits = self.fc2(self.fc1(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)


class TwoBranch(nn.Module):
    """Tokens < vocab/2 go through branch `f`, the rest through branch `r` (each branch reads its
    half of the vocabulary): forget data on the low tokens and retain data on the high ones have
    gradients on disjoint parameters."""

    def __init__(self, vocab: int = 16, hidden: int = 8, seed: int = 0):
        super().__init__()
        self.f = TwoLayerLinear(vocab, hidden, seed, in_vocab=vocab // 2)
        self.r = TwoLayerLinear(vocab, hidden, seed + 1, in_vocab=vocab // 2)
        self.half = vocab // 2

    def forward(self, input_ids, attention_mask=None, labels=None):
        branch = self.f if bool((input_ids < self.half).all()) else self.r
        return branch(input_ids, attention_mask, labels)


def toy_batches(low: int, high: int, n_batches: int = 2, seed: int = 0, batch: int = 3, length: int = 5):
    """QACollator-shaped batches over tokens in [low, high): labels -100 on the first two
    positions and on padding (the last position of row 0 is padding)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(low, high, (batch, length), generator=gen)
        att = torch.ones_like(ids)
        att[0, -1] = 0
        labels = torch.randint(low, high, (batch, length), generator=gen)
        labels[:, :2] = -100
        labels[att == 0] = -100
        out.append({"input_ids": ids, "attention_mask": att, "labels": labels})
    return out


@pytest.fixture()
def make_trainer(tmp_path, qa_sets, tiny_tokenizer):
    """A GradAscent-like `transformers.Trainer` on the forget set (AdamW with weight decay)."""
    from transformers import Trainer, TrainingArguments

    from llm_unlearn.data.qa import QACollator

    class AscentTrainer(Trainer):
        def __init__(self, *args, mask=None, **kwargs):
            super().__init__(*args, **kwargs)
            if mask is not None:
                from llm_unlearn.masks import attach_mask

                attach_mask(self, mask)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(**inputs)
            return (-out.loss, out) if return_outputs else -out.loss

    def build(model, mask=None, steps: int = 4, lr: float = 1e-2, weight_decay: float = 0.1):
        args = TrainingArguments(
            output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=5,
            learning_rate=lr, weight_decay=weight_decay, lr_scheduler_type="constant", report_to="none",
            save_strategy="no", use_cpu=True, logging_steps=1000, remove_unused_columns=False, disable_tqdm=True,
            seed=0,
        )
        return AscentTrainer(model=model, args=args, train_dataset=qa_sets[0],
                             data_collator=QACollator(tiny_tokenizer), mask=mask)

    return build
