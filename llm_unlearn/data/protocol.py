"""Evaluation and training protocols: how a QA item becomes tokens, and the settings around it.

A figure such as forget quality is comparable only when it is computed the way the reference
computes it. A `Protocol` fixes everything that changes per-item numbers besides the model:

* the prompt: system prompt (None = the chat template's own default) and a fixed date for
  templates that print one (Llama-3.x writes "Today Date: …"; no prompt ever holds today's
  date);
* the tokenisation (``tokenisation``):

  - ``separate`` (native): prompt and answer tokenised alone and concatenated, EOS appended;
    the answer's tokens are the same whatever the prompt (so the variants of one question
    share a prompt prefix, and the answer tokens of training and scoring are identical);
  - ``conversation`` (open-unlearning, ``src/data/utils.py`` ``preprocess_chat_instance`` with
    ``apply_chat_template: true``): the whole conversation goes through the chat template
    (``add_generation_prompt=False``); the labels start where the prompt rendered with
    ``add_generation_prompt=True`` ends, so the template's end-of-turn tags are labelled; EOS
    is appended only when the conversation does not already end with it. Without a chat
    template: prompt text + answer text tokenised together with special tokens;
  - ``joint`` (TOFU's legacy ``convert_raw_data_to_model_format``): prompt tags + question +
    answer tokenised together with special tokens, the prompt's tokens (counted with special
    tokens) unlabelled, EOS always appended;

* lengths and caps: the longest item (``max_length``; TOFU legacy 200, open-unlearning 512),
  items per evaluation split (``max_items``; TOFU legacy 300);
* generation: new tokens (``max_new_tokens``) or a total length (``generation_max_length``),
  and which EOS stops it (``generation_eos``: the tokenizer's one EOS, or the model's
  ``generation_config`` list, as the references pass none);
* membership inference: whether Min-K% / Min-K%++ drop the last answer token (EOS) and the
  floor on the Min-K%++ variance.

`PROTOCOLS` holds the three built-in ones; `get_protocol` looks one up; `add_protocol_argument`
puts ``--protocol`` on an argparse parser.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from dataclasses import asdict, dataclass
from typing import Any

from llm_unlearn.errors import UnlearnError

# open-unlearning's model configs (configs/model/Llama-3.*-Instruct.yaml) fix this date
FIXED_DATE_STRING = "10 Apr 2025"
TOKENISATIONS = ("separate", "conversation", "joint")
GENERATION_EOS = ("tokenizer", "model")


@dataclass(frozen=True)
class Protocol:
    """Prompt format, tokenisation, lengths, generation and MIA details of one protocol."""

    name: str
    description: str
    system_prompt: str | None = None
    date_string: str = FIXED_DATE_STRING
    use_chat_template: bool = True
    tokenisation: str = "separate"
    # prompt for tokenizers without a chat template (or when use_chat_template is False)
    plain_prompt: str = "Question: {question}\nAnswer:"
    plain_answer_prefix: str = " "
    max_length: int | None = None  # evaluation; None = no truncation
    max_items: int | None = None
    max_new_tokens: int = 200
    generation_max_length: int | None = None  # total length (prompt + new tokens), TOFU legacy
    generation_eos: str = "tokenizer"
    mia_drop_last_token: bool = False
    mia_variance_floor: float = 1e-6  # Min-K%++: floor on the variance of log p (open-unlearning's)

    def __post_init__(self):
        if self.tokenisation not in TOKENISATIONS:
            raise UnlearnError(f"protocol {self.name}: tokenisation must be one of {', '.join(TOKENISATIONS)}")
        if self.generation_eos not in GENERATION_EOS:
            raise UnlearnError(f"protocol {self.name}: generation_eos must be one of {', '.join(GENERATION_EOS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NATIVE = Protocol(
    name="native",
    description="llm-unlearn's own: the chat template's default system prompt, fixed date, answer tokenised "
                "alone + EOS (identical answer tokens in training and scoring), no truncation in evaluation",
)
OPEN_UNLEARNING = Protocol(
    name="open-unlearning",
    description="open-unlearning (apply_chat_template: true): system prompt 'You are a helpful assistant.', "
                "date '10 Apr 2025', whole conversation through the chat template, EOS only if absent, "
                "max_length 512, generation stops at the model's EOS list, Min-K drops the EOS token",
    system_prompt="You are a helpful assistant.",
    tokenisation="conversation",
    plain_prompt="Question: {question}\nAnswer: ",
    plain_answer_prefix="",
    max_length=512,
    generation_eos="model",
    mia_drop_last_token=True,
    mia_variance_floor=1e-6,
)
TOFU_LEGACY = Protocol(
    name="tofu-legacy",
    description="TOFU's original code (llama2-7b family): '[INST] q [/INST]' + answer tokenised together, "
                "EOS appended, max_length 200 (generation: 200 tokens in all), 300 items per split",
    use_chat_template=False,
    tokenisation="joint",
    plain_prompt="[INST] {question} [/INST]",
    plain_answer_prefix="",
    max_length=200,
    max_items=300,
    generation_max_length=200,
    generation_eos="model",
    mia_drop_last_token=True,
    mia_variance_floor=1e-6,
)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (NATIVE, OPEN_UNLEARNING, TOFU_LEGACY)}
DEFAULT_PROTOCOL = "native"


def get_protocol(protocol: str | Protocol | None = None) -> Protocol:
    """A protocol by name (None = native); a `Protocol` is returned as is."""
    if protocol is None:
        return NATIVE
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise UnlearnError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def add_protocol_argument(parser: argparse.ArgumentParser, default: str | None = DEFAULT_PROTOCOL) -> None:
    """``--protocol native|open-unlearning|tofu-legacy`` (default native; None: leave the value
    of a config file alone unless the flag is given)."""
    parser.add_argument(
        "--protocol", default=default, choices=list(PROTOCOLS),
        help="prompt format, tokenisation, lengths, generation and MIA details: native (default), "
             "open-unlearning (its apply_chat_template path) or tofu-legacy (TOFU's original code)",
    )


def add_allow_mixed_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-mixed-protocols``: score forget quality / privleak against retain logs of another
    protocol or evaluator (refused otherwise; the summary then says so)."""
    parser.add_argument("--allow-mixed-protocols", action="store_true",
                        help="compute forget quality and privleak even when the retain logs come from another "
                             "protocol or evaluator (the summary then records the mismatch)")


def today_strings(now: _dt.date | None = None) -> list[str]:
    """Today's date as chat templates print it (for the check that no prompt contains it)."""
    d = now or _dt.date.today()
    return [d.strftime("%d %b %Y"), d.strftime("%Y-%m-%d"), d.strftime("%d %B %Y"), d.strftime("%B %d, %Y")]
