"""TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") loading.

A *source* is either a Hugging Face dataset name (default ``locuslab/TOFU``, one config per
split) or a local directory with one ``<split>.json`` / ``<split>.jsonl`` file per split (the
layout of the TOFU copy in ``shared/data/tofu`` and of ``llm-unlearn data synth``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
from datasets import Dataset

from llm_unlearn.data.synthetic import REFUSALS
from llm_unlearn.errors import UnlearnError

DEFAULT_SOURCE = "locuslab/TOFU"

# Fields every row of a split must have, by kind of split.
QA_FIELDS = ("question", "answer")
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
UTILITY_PERTURBED_FIELDS = ("question", "answer", "perturbed_answer")
OPTIONS_FIELDS = ("question", "answer", "option1", "option2", "option3", "option4")


def split_kind(split: str) -> str:
    """The kind of a split name: 'qa', 'perturbed', 'utility_perturbed' or 'options'."""
    if re.fullmatch(r"(forget\d+|retain)_perturbed", split):
        return "perturbed"
    if split in ("real_authors_perturbed", "world_facts_perturbed"):
        return "utility_perturbed"
    if split in ("real_authors", "world_facts"):
        return "options"
    return "qa"


def required_fields(split: str) -> tuple[str, ...]:
    return {
        "qa": QA_FIELDS,
        "perturbed": PERTURBED_FIELDS,
        "utility_perturbed": UTILITY_PERTURBED_FIELDS,
        "options": OPTIONS_FIELDS,
    }[split_kind(split)]


def is_local_source(source: str | Path) -> bool:
    return Path(source).is_dir()


# Files of a local source that are not splits.
NON_SPLIT_FILES = {"meta"}
TOFU_QA_PER_AUTHOR = 20


def available_splits(source: str | Path) -> list[str]:
    """Split names found in a local source directory."""
    root = Path(source)
    names = {p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.suffix in (".json", ".jsonl")}
    return sorted(names - NON_SPLIT_FILES)


def source_meta(source: str | Path) -> dict:
    """``meta.json`` of a local source (written by the synthetic generator), else {}."""
    path = Path(source) / "meta.json"
    if is_local_source(source) and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{path}: invalid JSON ({exc.msg})") from None
    return {}


def qa_per_author(source: str | Path) -> int:
    """QA items per author: from ``meta.json`` for synthetic data, 20 for TOFU."""
    return int(source_meta(source).get("qa_per_author", TOFU_QA_PER_AUTHOR))


def _read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UnlearnError(f"{path}:{lineno}: invalid JSON line ({exc.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UnlearnError(f"{path}: row {i} is not a JSON object")
    return rows


def validate_rows(rows: list[dict], split: str, where: str) -> None:
    """Raise `UnlearnError` naming `where` and the field if a row lacks a required field."""
    fields = required_fields(split)
    for i, row in enumerate(rows):
        for field in fields:
            if field not in row or row[field] is None:
                raise UnlearnError(f"{where}: row {i} has no field '{field}' (split '{split}' needs {', '.join(fields)})")
            value = row[field]
            if field == "perturbed_answer":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise UnlearnError(f"{where}: row {i} field 'perturbed_answer' must be a non-empty list of strings")
            elif not isinstance(value, str):
                raise UnlearnError(f"{where}: row {i} field '{field}' must be a string, got {type(value).__name__}")


def load_tofu(split: str, source: str | Path = DEFAULT_SOURCE, max_items: int | None = None) -> Dataset:
    """Load one TOFU split as a `datasets.Dataset`, validating the fields its kind needs.

    `source` is a local directory (``<split>.jsonl`` or ``<split>.json``) or a Hub dataset name.
    """
    if is_local_source(source):
        root = Path(source)
        candidates = [root / f"{split}.jsonl", root / f"{split}.json"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            valid = ", ".join(available_splits(root)) or "(none)"
            raise UnlearnError(f"unknown split '{split}' in {root}; valid splits: {valid}")
        rows = _read_rows(path)
        if not rows:
            raise UnlearnError(f"{path}: split '{split}' is empty")
        validate_rows(rows, split, str(path))
        if max_items is not None:
            rows = rows[:max_items]
        return Dataset.from_list(rows)
    if Path(str(source)).is_file() or Path(str(source)).suffix or str(source).startswith((".", "/", "~")):
        raise UnlearnError(f"data source {source} is not a directory (nor a Hub dataset name)")
    try:
        ds = datasets.load_dataset(str(source), split, split="train")
    except ValueError as exc:
        raise UnlearnError(f"cannot load split '{split}' of {source}: {exc}") from None
    except Exception as exc:  # network / hub errors: one line, actionable
        raise UnlearnError(
            f"cannot load {source}: no such local directory, and the Hugging Face Hub failed "
            f"({type(exc).__name__}); pass a local directory with --data"
        ) from None
    validate_rows(ds.to_list() if len(ds) < 50000 else [], split, f"{source}:{split}")
    if max_items is not None:
        ds = ds.select(range(min(max_items, len(ds))))
    return ds


def read_refusals(source: str | Path | None = None) -> list[str]:
    """Refusal answers ("I don't know") for IdK-style methods: `idontknow.txt` in a local source,
    else the built-in list of the synthetic generator."""
    if source is not None and is_local_source(source):
        path = Path(source) / "idontknow.txt"
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if lines:
                return lines
    return list(REFUSALS)


# TOFU configs with paraphrased / perturbed answers (a Hub source cannot list its files)
PERTURBED_SPLITS = ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed")


def outside_authors_rows(source: str | Path, max_authors: int, n_items: int | None = None,
                         exclude_questions: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """Holdout items for a model trained on the first `max_authors` authors of `full` (a TOFU
    subset, ``--max-authors``): items about the *other* authors that have paraphrased and
    perturbed answers (from the ``forgetXX_perturbed`` / ``retain_perturbed`` splits), in the
    order of `full`, the last `n_items` of them (the authors furthest from the subset); never
    a question in `exclude_questions` (the forget split's). `UnlearnError` when there are none."""
    if max_authors < 1:
        raise UnlearnError(f"--max-authors must be >= 1, got {max_authors}")
    names = [n for n in available_splits(source) if n in PERTURBED_SPLITS or
             re.fullmatch(r"(forget\d+|retain)_perturbed", n)] if is_local_source(source) else list(PERTURBED_SPLITS)
    perturbed: dict[str, dict] = {}
    for name in names:
        try:
            rows = load_tofu(name, source).to_list()
        except UnlearnError:
            continue
        for r in rows:
            perturbed.setdefault(r["question"], r)
    full = load_tofu("full", source).to_list()
    n = max_authors * qa_per_author(source)
    inside = {r["question"] for r in full[:n]}
    out = [perturbed[r["question"]] for r in full[n:] if r["question"] in perturbed
           and r["question"] not in inside and r["question"] not in exclude_questions]
    if not out:
        raise UnlearnError(f"{source}: no items with perturbed answers about authors outside the first "
                           f"{max_authors} (needed as the holdout set)")
    return out[-n_items:] if n_items else out


def forget_percent(split: str) -> int:
    m = re.fullmatch(r"forget(\d+)(_perturbed)?", split)
    if not m:
        raise UnlearnError(f"'{split}' is not a forget split (forgetXX)")
    return int(m.group(1))


def matching_retain_split(forget_split: str) -> str:
    """forget10 -> retain90, as TOFU pairs them."""
    return f"retain{100 - forget_percent(forget_split)}"
