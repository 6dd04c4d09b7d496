"""TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") loading.

A *source* is either a Hugging Face dataset name (default ``locuslab/TOFU``, one config per
split) or a local directory with one ``<split>.json`` / ``<split>.jsonl`` file per split (the
layout of the TOFU copy in ``shared/data/tofu`` and of ``llm-unlearn data synth``).
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
from datasets import Dataset

from llm_unlearn.data.source import (  # noqa: F401  (re-exported: the names of a source and its splits)
    DEFAULT_SOURCE,
    NON_SPLIT_FILES,
    OPTIONS_FIELDS,
    PERTURBED_FIELDS,
    QA_FIELDS,
    TOFU_QA_PER_AUTHOR,
    UTILITY_PERTURBED_FIELDS,
    available_splits,
    check_source,
    check_split,
    forget_percent,
    is_local_source,
    matching_retain_split,
    qa_per_author,
    read_split,
    required_fields,
    source_meta,
    split_kind,
    validate_rows,
)
from llm_unlearn.data.synthetic import REFUSALS
from llm_unlearn.errors import UnlearnError


def load_tofu(split: str, source: str | Path = DEFAULT_SOURCE, max_items: int | None = None) -> Dataset:
    """Load one TOFU split as a `datasets.Dataset`, validating the fields its kind needs.

    `source` is a local directory (``<split>.jsonl`` or ``<split>.json``) or a Hub dataset name.
    """
    if is_local_source(source):
        return Dataset.from_list(read_split(split, source, max_items))
    check_source(source)
    try:
        ds = datasets.load_dataset(str(source), split, split="train")
    except ValueError as exc:
        raise UnlearnError(f"cannot load split '{split}' of {source}: {str(exc).splitlines()[0]}"
                           + _hub_splits_hint(source)) from None
    except Exception as exc:  # network / hub errors: one line, actionable
        raise UnlearnError(
            f"cannot load {source}: no such local directory, and the Hugging Face Hub failed "
            f"({type(exc).__name__}); pass a local directory with --data"
        ) from None
    validate_rows(ds.to_list() if len(ds) < 50000 else [], split, f"{source}:{split}")
    if max_items is not None:
        ds = ds.select(range(min(max_items, len(ds))))
    return ds


def _hub_splits_hint(source: str | Path) -> str:
    """'; valid splits: …' for a Hub dataset whose config names can be listed (cache or network)."""
    try:
        names = datasets.get_dataset_config_names(str(source))
    except Exception:  # offline without a cache: nothing to list
        return ""
    return f"; valid splits: {', '.join(names)}" if names else ""


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


def spread_over_authors(groups: list[list[dict]], n_items: int) -> list[dict]:
    """`n_items` items taken evenly from every group (one group per author, items in their order):
    as many from each author (the first authors one more when `n_items` does not divide), at
    evenly spaced positions that rotate with the author, so every kind of question (TOFU asks
    them in the same order for every author) is drawn about equally often. All items when
    `n_items` is at least their number. A holdout drawn this way reads every author, not a few
    whole ones (which four TOFU authors an 80-item holdout read moved one model's holdout forget
    quality from 0.92 to 0.24); how many items it reads matters more (`benchmarks/hfq_holdout_sets.py`)."""
    groups = [g for g in groups if g]
    total = sum(len(g) for g in groups)
    if n_items >= total:
        return [r for g in groups for r in g]
    quota = [0] * len(groups)
    left, i = n_items, 0
    while left:  # round-robin, skipping authors with no items left
        if quota[i] < len(groups[i]):
            quota[i] += 1
            left -= 1
        i = (i + 1) % len(groups)
    out = []
    for a, (g, c) in enumerate(zip(groups, quota)):
        if not c:
            continue
        step = len(g) / c  # evenly spaced, rotated by the author's index: distinct positions, all used alike
        out.extend(g[(int(j * step) + a) % len(g)] for j in range(c))
    return out


def outside_authors_rows(source: str | Path, max_authors: int, n_items: int | None = None,
                         exclude_questions: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """Holdout items for a model trained on the first `max_authors` authors of `full` (a TOFU
    subset, ``--max-authors``): items about the *other* authors that have paraphrased and
    perturbed answers (from the ``forgetXX_perturbed`` / ``retain_perturbed`` splits), never a
    question in `exclude_questions` (the forget split's). All of them, or `n_items` spread over
    every such author (`spread_over_authors`). `UnlearnError` when there are none."""
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
    per = qa_per_author(source)
    n = max_authors * per
    inside = {r["question"] for r in full[:n]}
    groups: dict[int, list[dict]] = {}
    for i, r in enumerate(full[n:], n):
        q = r["question"]
        if q in perturbed and q not in inside and q not in exclude_questions:
            groups.setdefault(i // per, []).append(perturbed[q])
    if not groups:
        raise UnlearnError(f"{source}: no items with perturbed answers about authors outside the first "
                           f"{max_authors} (needed as the holdout set)")
    return spread_over_authors(list(groups.values()), n_items or sum(len(g) for g in groups.values()))
