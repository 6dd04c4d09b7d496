"""A data source without `datasets` or torch: split names, the fields each kind of split needs,
reading and validating a local directory's ``<split>.json`` / ``<split>.jsonl`` files. Cheap to
import, so the CLI checks its input before it loads anything heavy (`check_split`);
`llm_unlearn.data.tofu.load_tofu` builds on it."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

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


def close_names(name: str, candidates, n: int = 5, cutoff: float = 0.6) -> list[str]:
    """Up to `n` of `candidates` that look like `name` (difflib ratio >= `cutoff`; case-insensitive)."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(str(c).lower(), str(c))
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=cutoff)]


_WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")


def close_phrases(query: str, texts, n: int = 5, cutoff: float = 0.6) -> list[str]:
    """Up to `n` phrases of `texts` (runs of as many words as `query` has) that look like `query`:
    the names to suggest when a text match finds nothing. Capitalised phrases (names) first."""
    size = len(_WORD.findall(query)) or 1
    names: set[str] = set()
    phrases: set[str] = set()
    for text in texts:
        words = _WORD.findall(text or "")
        for i in range(len(words) - size + 1):
            gram = words[i:i + size]
            (names if all(w[0].isupper() for w in gram) else phrases).add(" ".join(gram))
    return close_names(query, sorted(names), n=n, cutoff=cutoff) or close_names(query, sorted(phrases), n=n,
                                                                                   cutoff=cutoff)


def split_file(split: str, source: str | Path) -> Path:
    """The file of `split` in a local source; `UnlearnError` listing the splits that exist (and the
    closest names) when there is none."""
    root = Path(source)
    path = next((p for p in (root / f"{split}.jsonl", root / f"{split}.json") if p.is_file()), None)
    if path is None:
        names = available_splits(root)
        close = close_names(split, names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UnlearnError(f"unknown split '{split}' in {root}; valid splits: {', '.join(names) or '(none)'}{hint}")
    return path


def read_split(split: str, source: str | Path, max_items: int | None = None) -> list[dict]:
    """The validated rows of `split` in the local directory `source`."""
    path = split_file(split, source)
    rows = _read_rows(path)
    if not rows:
        raise UnlearnError(f"{path}: split '{split}' is empty")
    validate_rows(rows, split, str(path))
    return rows if max_items is None else rows[:max_items]


def check_source(source: str | Path) -> None:
    """A data source is a local directory or a Hub dataset name; a path that is neither is an error."""
    if is_local_source(source):
        return
    text = str(source)
    if Path(text).exists() or Path(text).suffix or text.startswith((".", "/", "~")):
        raise UnlearnError(f"data source {source} is not a directory (nor a Hub dataset name)")


def check_split(split: str, source: str | Path) -> None:
    """Fail early, and cheaply, on a bad source or split: a local split is read and validated;
    a Hub dataset is only checked when it is loaded."""
    check_source(source)
    if is_local_source(source):
        read_split(split, source, max_items=None)


def forget_percent(split: str) -> int:
    m = re.fullmatch(r"forget(\d+)(_perturbed)?", split)
    if not m:
        raise UnlearnError(f"'{split}' is not a forget split (forgetXX)")
    return int(m.group(1))


def matching_retain_split(forget_split: str) -> str:
    """forget10 -> retain90, as TOFU pairs them."""
    return f"retain{100 - forget_percent(forget_split)}"


def check_input_kinds(data=None, forget_split: str | None = None, retain_split: str | None = None,
                      forget_corpus=None, retain_corpus=None) -> str:
    """``"qa"`` or ``"corpus"``: which kind of forget/retain input a run has; mixing them is an error.

    QA inputs are `data` + `forget_split` / `retain_split`; corpus inputs `forget_corpus` /
    `retain_corpus`. A retain corpus without a forget corpus, or a forget corpus with a QA
    split or data source, is refused: both sides of a run must be the same kind of data."""
    qa = {name: v for name, v in (("--data", data), ("--forget-split", forget_split),
                                  ("--retain-split", retain_split)) if v is not None}
    if forget_corpus is None:
        if retain_corpus is not None:
            raise UnlearnError("--retain-corpus needs --forget-corpus (a QA forget split pairs with a QA retain split)")
        if data is None:
            raise UnlearnError("no forget data: pass --data (QA, with --forget-split) or --forget-corpus")
        return "qa"
    if qa:
        raise UnlearnError(f"corpus and QA inputs cannot be mixed: --forget-corpus was given with {', '.join(qa)}; "
                           "use --forget-corpus/--retain-corpus, or --data/--forget-split/--retain-split")
    return "corpus"
