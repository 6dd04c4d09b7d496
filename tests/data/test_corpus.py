"""Corpus loading and chunking (llm_unlearn.data.corpus)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from llm_unlearn.data.corpus import check_corpus_overlap, check_input_kinds, chunk_corpus, load_corpus
from llm_unlearn.data.qa import IGNORE_INDEX
from llm_unlearn.errors import UnlearnError

DOCS = [
    "The Veltrax coolant loop runs on argon at forty bar. " * 7,
    "Short note.",
    "Calibration of the Morrow gauge starts at the lower flange and ends at the valve. " * 4,
]


def _targets(chunked) -> dict[int, list[int]]:
    """Per document: the token ids that are prediction targets (labels shifted as the causal loss does)."""
    out: dict[int, list[int]] = {}
    for row in chunked:
        labels = row["labels"]
        out.setdefault(row["doc_index"], []).extend(t for t in labels[1:] if t != IGNORE_INDEX)
    return out


@pytest.mark.parametrize("max_length", [8, 13, 64, 4096])
def test_chunking_covers_every_token_once(tiny_tokenizer, max_length):
    docs = Dataset.from_dict({"text": DOCS})
    chunked, report = chunk_corpus(docs, tiny_tokenizer, max_length=max_length)
    assert report.dropped_tokens == 0 and report.truncated_documents == 0
    assert report.documents == len(DOCS)
    assert max(len(r["input_ids"]) for r in chunked) <= max_length
    targets = _targets(chunked)
    total = 0
    for i, text in enumerate(DOCS):
        ids = tiny_tokenizer(text)["input_ids"] + [tiny_tokenizer.eos_token_id]
        assert targets[i] == ids[1:]  # every token after the first, in order, exactly once
        total += len(ids)
    assert report.tokens == total
    assert report.windows == len(chunked)


def test_chunking_counts_truncation(tiny_tokenizer):
    docs = Dataset.from_dict({"text": DOCS})
    full, _ = chunk_corpus(docs, tiny_tokenizer, max_length=10)
    cut, report = chunk_corpus(docs, tiny_tokenizer, max_length=10, max_windows_per_doc=1)
    n_tokens = [len(tiny_tokenizer(t)["input_ids"]) + 1 for t in DOCS]
    assert len(cut) == len(DOCS)
    assert report.truncated_documents == sum(n > 10 for n in n_tokens)
    assert report.dropped_tokens == sum(max(0, n - 10) for n in n_tokens)
    assert report.tokens == sum(n_tokens) and len(full) > len(cut)


def test_load_corpus_txt_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first doc line one\nline two\n\nsecond doc\n\n\nthird doc\n")
    assert len(load_corpus(txt)) == 3
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(DOCS)) + "\n")
    ds = load_corpus(jl)
    assert ds.column_names == ["text"] and ds["text"] == DOCS


def test_load_corpus_dataset_directory_with_split(tmp_path):
    """The Hub path (NAME[:CONFIG[:SPLIT]] through datasets.load_dataset) on a local dataset directory."""
    d = tmp_path / "wmdp-like"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"text": "train doc"}) + "\n")
    (d / "test.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("a doc", "b doc")) + "\n")
    assert load_corpus(str(d))["text"] == ["train doc"]
    assert load_corpus(f"{d}::test")["text"] == ["a doc", "b doc"]
    with pytest.raises(UnlearnError, match="cannot load corpus"):
        load_corpus(f"{d}::nosuchsplit")


def test_qa_file_as_corpus_is_refused(synthetic_dir):
    with pytest.raises(UnlearnError, match="looks like QA data"):
        load_corpus(synthetic_dir / "forget10.jsonl")


def test_missing_corpus_file(tmp_path):
    with pytest.raises(UnlearnError, match="not found"):
        load_corpus(tmp_path / "nope.jsonl")


def test_mixing_corpus_and_qa_is_an_error():
    assert check_input_kinds(data="d", forget_split="forget10") == "qa"
    assert check_input_kinds(forget_corpus="f.jsonl", retain_corpus="r.jsonl") == "corpus"
    with pytest.raises(UnlearnError, match="cannot be mixed.*--retain-split"):
        check_input_kinds(retain_split="retain90", forget_corpus="f.jsonl")
    with pytest.raises(UnlearnError, match="cannot be mixed.*--data"):
        check_input_kinds(data="d", forget_corpus="f.jsonl")
    with pytest.raises(UnlearnError, match="--retain-corpus needs --forget-corpus"):
        check_input_kinds(data="d", forget_split="forget10", retain_corpus="r.jsonl")


def test_corpus_overlap_is_refused():
    a = Dataset.from_dict({"text": ["x y z", "p q"]})
    with pytest.raises(UnlearnError, match="overlap"):
        check_corpus_overlap(a, Dataset.from_dict({"text": ["other", "p q "]}))
