"""Protocols (issue 17): the prompt and tokenisation of native, open-unlearning and TOFU-legacy,
checked token by token on the tiny tokenizer with its chat template and a Llama-3-style one."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from llm_unlearn.data.protocol import FIXED_DATE_STRING, PROTOCOLS, get_protocol, today_strings
from llm_unlearn.data.qa import (
    IGNORE_INDEX,
    answer_ids,
    build_prompt,
    encode_qa,
    prompt_ids,
    template_settings,
)
from llm_unlearn.errors import UnlearnError

Q, A = "Who wrote the Book of Sand?", "Jorge Luis Borges wrote it."

# a Llama-3.x-like template: a date line that falls back to today's date unless date_string is given
DATED_TEMPLATE = (
    "{{ bos_token }}{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
    "<|system|>\nToday Date: {{ date_string }}\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}<|end|>\n"
    "{% for message in messages %}{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}<|end|>\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ALWAYS_TODAY = "{{ bos_token }}<|system|>\n{{ strftime_now('%d %b %Y') }}<|end|>\n" + DATED_TEMPLATE.split("<|end|>\n", 1)[1]


def _labels(enc) -> list[int]:
    return [t for t in enc["labels"] if t != IGNORE_INDEX]


def test_native_is_prompt_then_answer_alone_plus_eos(tiny_tokenizer):
    enc = encode_qa(tiny_tokenizer, Q, A)
    p, a = prompt_ids(tiny_tokenizer, Q), answer_ids(tiny_tokenizer, A)
    assert enc["input_ids"] == p + a
    assert _labels(enc) == a and a[-1] == tiny_tokenizer.eos_token_id
    assert "helpful assistant" not in build_prompt(tiny_tokenizer, Q)  # the template's own default


def test_open_unlearning_labels_the_whole_assistant_turn(tiny_tokenizer):
    ou = get_protocol("open-unlearning")
    enc = encode_qa(tiny_tokenizer, Q, A, protocol=ou)
    full = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": Q},
         {"role": "assistant", "content": A}], tokenize=False)
    ids = tiny_tokenizer(full, add_special_tokens=False)["input_ids"]
    # the template ends the turn with "<|end|>\n"; the EOS (</s>) is not there, so it is appended
    assert enc["input_ids"] == ids + [tiny_tokenizer.eos_token_id]
    n_prompt = len(prompt_ids(tiny_tokenizer, Q, ou))
    assert enc["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tiny_tokenizer.decode(_labels(enc)) == A + "<|end|>\n</s>"


def test_open_unlearning_adds_no_second_eos(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = tok.chat_template.replace("<|end|>\n{% endif %}{% endfor %}", "</s>{% endif %}{% endfor %}")
    enc = encode_qa(tok, Q, A, protocol="open-unlearning")
    assert tok.decode(_labels(enc)) == A + "</s>"  # ends with EOS already: not doubled


def test_tofu_legacy_tokenises_the_text_together(tiny_tokenizer):
    enc = encode_qa(tiny_tokenizer, Q, A, protocol="tofu-legacy")
    text = f"[INST] {Q} [/INST]"
    whole = tiny_tokenizer(text + A, add_special_tokens=True)["input_ids"]
    n_q = len(tiny_tokenizer(text, add_special_tokens=True)["input_ids"])  # BOS counted, as TOFU does
    assert enc["input_ids"] == whole + [tiny_tokenizer.eos_token_id]
    assert enc["labels"] == [IGNORE_INDEX] * n_q + whole[n_q:] + [tiny_tokenizer.eos_token_id]


def test_fixed_date_never_today(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = DATED_TEMPLATE
    for name in PROTOCOLS:
        if not get_protocol(name).use_chat_template:
            continue
        prompt = build_prompt(tok, Q, protocol=name)
        assert f"Today Date: {FIXED_DATE_STRING}" in prompt
        assert not any(t in prompt for t in today_strings())
    assert template_settings(tok, "open-unlearning")["example_prompt"].count(FIXED_DATE_STRING) == 1


def test_template_that_always_prints_today_is_refused(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ALWAYS_TODAY
    with pytest.raises(UnlearnError, match="today's date"):
        encode_qa(tok, Q, A)


def test_today_strings_formats():
    assert today_strings(dt.date(2025, 4, 10))[:2] == ["10 Apr 2025", "2025-04-10"]


def test_unknown_protocol_is_one_line_error():
    with pytest.raises(UnlearnError, match="unknown protocol 'x'; choose one of native, open-unlearning, tofu-legacy"):
        get_protocol("x")


def test_open_unlearning_equals_its_tokenize_true_path(tiny_tokenizer):
    """open-unlearning calls apply_chat_template(tokenize=True) for the conversation and the prompt;
    our text-then-tokenise path gives the same ids and labels."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = DATED_TEMPLATE
    chat = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": Q},
            {"role": "assistant", "content": A}]

    def ids(x):
        return list(x["input_ids"]) if not isinstance(x, list) else x

    conv = ids(tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, date_string=FIXED_DATE_STRING))
    prompt = ids(tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True,
                                         date_string=FIXED_DATE_STRING))
    if conv[-1] != tok.eos_token_id:
        conv = conv + [tok.eos_token_id]
    enc = encode_qa(tok, Q, A, protocol="open-unlearning")
    assert enc["input_ids"] == conv
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt) + conv[len(prompt):]
    assert prompt_ids(tok, Q, "open-unlearning") == prompt
