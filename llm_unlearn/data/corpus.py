"""Raw-text corpora for unlearning (the WMDP / MUSE setting): loading and chunking.

A corpus is a set of documents with a ``text`` field: a local ``.jsonl`` (one ``{"text": …}`` per
line), a local ``.txt`` (documents separated by blank lines) or a Hub dataset given as
``NAME[:CONFIG[:SPLIT]]`` (e.g. ``cais/wmdp-corpora:cyber-forget-corpus:train``; NAME may be a
local dataset directory, such as a snapshot of the Hub dataset).

Documents are tokenised and cut into windows of at most ``max_length`` tokens with a batched,
cached ``datasets.map``. Consecutive windows of a document overlap by one token, which is context
only (label -100), so the causal loss predicts every token of a document after its first exactly
once (the first token of a document has no context to be predicted from). Windows never cross a
document boundary. ``max_windows_per_doc`` keeps only the first N windows (WMDP's unlearning
script keeps one per document); what it drops is counted in the `ChunkReport`, never silent.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.utils import logging as ds_logging

from llm_unlearn.data.qa import IGNORE_INDEX, check_tokenizer
from llm_unlearn.data.source import check_input_kinds  # noqa: F401  (re-exported)
from llm_unlearn.errors import UnlearnError

logger = logging.getLogger(__name__)

QA_COLUMNS = ("question", "answer")


@contextmanager
def _quiet_datasets():
    """No `datasets` progress bars ("Generating train split", "Map") on the console; restored after."""
    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


@dataclass
class ChunkReport:
    """What chunking made of a corpus: documents, tokens, windows and what `max_windows_per_doc` cut."""

    documents: int
    tokens: int
    windows: int
    truncated_documents: int
    dropped_tokens: int

    def __str__(self) -> str:
        return (f"{self.documents} documents, {self.tokens} tokens -> {self.windows} windows"
                f" ({self.truncated_documents} documents truncated, {self.dropped_tokens} tokens dropped)")

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _check_columns(ds: Dataset, source: str, text_key: str) -> Dataset:
    cols = set(ds.column_names)
    if text_key not in cols:
        if set(QA_COLUMNS) <= cols:
            raise UnlearnError(f"{source} looks like QA data (question/answer fields, no '{text_key}'): "
                               "pass QA data with --data/--forget-split, a corpus with --forget-corpus")
        raise UnlearnError(f"{source}: corpus documents need a '{text_key}' field, found {sorted(cols)}")
    ds = ds.filter(lambda t: bool(t and t.strip()), input_columns=[text_key])
    if len(ds) == 0:
        raise UnlearnError(f"{source}: the corpus has no non-empty document")
    return ds.select_columns([text_key]).rename_column(text_key, "text") if text_key != "text" else ds.select_columns(["text"])


def load_corpus(source: str | Path, split: str = "train", text_key: str = "text",
                max_documents: int | None = None) -> Dataset:
    """The documents of a corpus as a Dataset with one column ``text`` (see the module docstring)."""
    with _quiet_datasets():
        return _load_corpus(source, split, text_key, max_documents)


def _load_corpus(source, split, text_key, max_documents) -> Dataset:
    src = str(source)
    path = Path(src)
    if path.suffix in (".txt", ".jsonl", ".json") or path.is_file():
        if not path.is_file():
            raise UnlearnError(f"corpus file not found: {path}")
        if path.suffix == ".txt":
            ds = load_dataset("text", data_files=str(path), sample_by="paragraph", split="train")
        elif path.suffix in (".jsonl", ".json"):
            try:
                ds = load_dataset("json", data_files=str(path), split="train")
            except Exception as exc:  # datasets raises several types for malformed JSON
                raise UnlearnError(f"{path}: not a JSON-lines corpus ({str(exc).splitlines()[0][:120]})") from None
        else:
            raise UnlearnError(f"{path}: a corpus file must be .txt or .jsonl")
    else:  # a Hub dataset, or a local dataset directory (e.g. a snapshot of one), NAME[:CONFIG[:SPLIT]]
        name, _, rest = src.partition(":")
        config, _, hub_split = rest.partition(":")
        try:
            ds = load_dataset(name, config or None, split=hub_split or split)
        except Exception as exc:  # offline, unknown dataset / config / split
            raise UnlearnError(f"cannot load corpus '{src}' (NAME[:CONFIG[:SPLIT]]): {str(exc).splitlines()[0][:160]}") from None
    ds = _check_columns(ds, src, text_key)
    if max_documents is not None:
        ds = ds.select(range(min(len(ds), max_documents)))
    return ds


def _window_starts(n: int, max_length: int) -> list[int]:
    """Starts of the windows of an n-token document: each after the first begins on the last token
    of the previous one (its label is -100), so every token but the first is a target once."""
    starts, s = [0], 0
    while s + max_length < n:
        s += max_length - 1
        starts.append(s)
    return starts


def chunk_corpus(docs: Dataset, tokenizer, max_length: int = 512, max_windows_per_doc: int | None = None,
                 add_eos: bool = True, num_proc: int | None = None) -> tuple[Dataset, ChunkReport]:
    """Tokenise `docs` (a ``text`` column) into labelled windows of at most `max_length` tokens.

    Returns ``(windows, report)``; windows have ``input_ids``, ``attention_mask``, ``labels``,
    ``doc_index`` and are cached by `datasets` when `docs` is file-backed."""
    check_tokenizer(tokenizer)
    if max_length < 2:
        raise UnlearnError(f"max_length must be >= 2 for corpus windows, got {max_length}")
    if max_windows_per_doc is not None and max_windows_per_doc < 1:
        raise UnlearnError(f"max_windows_per_doc must be >= 1, got {max_windows_per_doc}")
    eos = tokenizer.eos_token_id if add_eos else None

    def windows(batch, indices):
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", "doc_index",
                                                  "doc_tokens", "dropped_tokens")}
        for text, idx in zip(batch["text"], indices):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if eos is not None and (not ids or ids[-1] != eos):
                ids = ids + [eos]
            starts = _window_starts(len(ids), max_length)
            kept = starts if max_windows_per_doc is None else starts[:max_windows_per_doc]
            covered = min(len(ids), kept[-1] + max_length)
            for j, s in enumerate(kept):
                w = ids[s: s + max_length]
                out["input_ids"].append(w)
                out["attention_mask"].append([1] * len(w))
                out["labels"].append(([IGNORE_INDEX] if j else []) + w[1 if j else 0:])
                out["doc_index"].append(idx)
                out["doc_tokens"].append(len(ids) if j == 0 else 0)
                out["dropped_tokens"].append(len(ids) - covered if j == 0 else 0)
        return out

    with _quiet_datasets():
        chunked = docs.map(windows, batched=True, with_indices=True, remove_columns=docs.column_names,
                           num_proc=num_proc, desc="chunking corpus")
    dropped = chunked["dropped_tokens"]
    report = ChunkReport(documents=len(docs), tokens=sum(chunked["doc_tokens"]), windows=len(chunked),
                         truncated_documents=sum(1 for d in dropped if d > 0), dropped_tokens=sum(dropped))
    if report.dropped_tokens:
        logger.warning("corpus chunking: %s", report)
    return chunked.remove_columns(["doc_tokens", "dropped_tokens"]), report


def corpus_hash(docs: Dataset) -> str:
    h = hashlib.sha256()
    for t in docs["text"]:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def check_corpus_overlap(forget: Dataset, retain: Dataset, other: str = "retain") -> None:
    """Refuse a retain (or, `other`, holdout) corpus that contains a forget document (same text)."""
    keys = {hashlib.sha256(t.strip().encode()).hexdigest() for t in forget["text"]}
    for i, t in enumerate(retain["text"]):
        if hashlib.sha256(t.strip().encode()).hexdigest() in keys:
            raise UnlearnError(f"forget and {other} corpora overlap: {other} document {i} ('{t[:60]}') is in the "
                               "forget corpus")


__all__ = ["ChunkReport", "check_corpus_overlap", "check_input_kinds", "chunk_corpus", "corpus_hash", "load_corpus"]
