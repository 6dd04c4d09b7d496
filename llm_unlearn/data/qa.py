"""QA tokenisation: prompt (chat template, else ``Question: …\\nAnswer:``) + answer + EOS, with
labels on the answer tokens only (prompt and padding positions are -100).

Natively prompt and answer are tokenised separately and concatenated, so the answer's tokens
are the same whatever the prompt; the open-unlearning and TOFU-legacy protocols tokenise the
conversation as their references do (`llm_unlearn.data.protocol`). Training, unlearning and
evaluation all use `encode_qa`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from llm_unlearn.data.protocol import Protocol, get_protocol, today_strings
from llm_unlearn.errors import UnlearnError

IGNORE_INDEX = -100

logger = logging.getLogger(__name__)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer, protocol: Protocol | None = None) -> bool:
    """Whether prompts for `tokenizer` under `protocol` go through its chat template."""
    return get_protocol(protocol).use_chat_template and has_chat_template(tokenizer)


def _messages(question: str, protocol: Protocol, system_prompt: str | None = None,
              answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    system = system_prompt if system_prompt is not None else protocol.system_prompt
    if system:
        messages.insert(0, {"role": "system", "content": system})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_chat(tokenizer, messages: list[dict[str, str]], protocol: Protocol, add_generation_prompt: bool) -> str:
    """The chat template applied to `messages` with the protocol's fixed ``date_string``; a
    template that still prints today's date is refused (numbers would change from day to day)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         date_string=protocol.date_string)
    content = " ".join(m["content"] for m in messages)
    for today in today_strings():
        if today in text and today not in content and today != protocol.date_string:
            raise UnlearnError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')} writes "
                               f"today's date ({today}) into the prompt despite date_string; results would change "
                               "from day to day (use --protocol tofu-legacy or a template without the date)")
    return text


def build_prompt(tokenizer, question: str, system_prompt: str | None = None, protocol: Protocol | str | None = None) -> str:
    """The text that precedes the answer (ends where generation starts)."""
    protocol = get_protocol(protocol)
    if uses_chat_template(tokenizer, protocol):
        return render_chat(tokenizer, _messages(question, protocol, system_prompt), protocol, add_generation_prompt=True)
    return protocol.plain_prompt.format(question=question)


def prompt_ids(tokenizer, question: str, protocol: Protocol | str | None = None) -> list[int]:
    """Token ids of the prompt (what generation starts from)."""
    protocol = get_protocol(protocol)
    text = build_prompt(tokenizer, question, protocol=protocol)
    if uses_chat_template(tokenizer, protocol):
        # the template already writes BOS / special tokens as text
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, answer: str, protocol: Protocol | str | None = None) -> list[int]:
    """Native (``separate``) answer tokens: the answer tokenised alone, EOS appended."""
    protocol = get_protocol(protocol)
    text = answer if uses_chat_template(tokenizer, protocol) else protocol.plain_answer_prefix + answer.lstrip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def template_settings(tokenizer, protocol: Protocol | str | None = None) -> dict[str, Any]:
    """What a run or eval log records about the prompt: the protocol (all its settings), whether
    the chat template is used, and the prompt of a placeholder question as rendered."""
    protocol = get_protocol(protocol)
    return {
        "protocol": protocol.name,
        "settings": protocol.to_dict(),
        "chat_template": uses_chat_template(tokenizer, protocol),
        "example_prompt": build_prompt(tokenizer, "{question}", protocol=protocol),
    }


def _conversation_ids(tokenizer, question: str, answer: str, protocol: Protocol) -> tuple[list[int], int]:
    """(ids of the whole conversation, number of prompt tokens) for the ``conversation`` and
    ``joint`` tokenisations."""
    eos = tokenizer.eos_token_id
    if uses_chat_template(tokenizer, protocol):
        full = render_chat(tokenizer, _messages(question, protocol, answer=answer), protocol, add_generation_prompt=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids(tokenizer, question, protocol))
    else:
        prompt = protocol.plain_prompt.format(question=question)
        ids = tokenizer(prompt + protocol.plain_answer_prefix + answer, add_special_tokens=True)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if eos is not None and (protocol.tokenisation == "joint" or not ids or ids[-1] != eos):
        ids = ids + [eos]
    return ids, n_prompt


def check_tokenizer(tokenizer) -> None:
    """Fail early if a tokenizer lacks what QA training needs."""
    if tokenizer.eos_token_id is None:
        raise UnlearnError("tokenizer has no eos_token; set one (answers end with EOS)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def encode_qa(tokenizer, question: str, answer: str, max_length: int | None = None,
              protocol: Protocol | str | None = None) -> dict[str, Any]:
    """Token ids, labels (-100 on the prompt) and whether `max_length` cut the answer, in the
    tokenisation of `protocol` (default native: prompt and answer tokenised apart)."""
    protocol = get_protocol(protocol)
    if protocol.tokenisation == "separate":
        p = prompt_ids(tokenizer, question, protocol)
        a = answer_ids(tokenizer, answer, protocol)
        ids = p + a
        labels = [IGNORE_INDEX] * len(p) + a
    else:
        ids, n_prompt = _conversation_ids(tokenizer, question, answer, protocol)
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
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
    protocol: Protocol | str | None = None,
) -> tuple[Dataset, TokenizationReport]:
    """Tokenise every row; keep `question`/`answer` text columns (collators ignore them)."""
    check_tokenizer(tokenizer)
    rows = []
    truncated = no_answer = 0
    for row in dataset:
        enc = encode_qa(tokenizer, row[question_key], row[answer_key], max_length, protocol)
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

    def __init__(self, tokenizer, protocol: Protocol | str | None = None):
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.protocol = get_protocol(protocol)

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        prompts = [prompt_ids(self.tokenizer, r["question"], self.protocol) for r in rows]
        return {
            "input_ids": pad_sequences(prompts, self.tokenizer.pad_token_id, "left"),
            "attention_mask": pad_sequences([[1] * len(p) for p in prompts], 0, "left"),
            "answers": [r["answer"] for r in rows],
        }
