"""TOFU loading: the real copy in shared/ and field validation of local sources."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.data.tofu import available_splits, load_tofu, matching_retain_split, qa_per_author
from llm_unlearn.errors import UnlearnError


def test_real_tofu_sizes(shared_tofu):
    assert len(load_tofu("full", shared_tofu)) == 4000
    assert len(load_tofu("forget10", shared_tofu)) == 400
    assert len(load_tofu("retain90", shared_tofu)) == 3600
    pert = load_tofu("forget10_perturbed", shared_tofu)
    assert len(pert) == 400
    assert all(len(p) == 5 for p in pert["perturbed_answer"])
    assert len(load_tofu("world_facts_perturbed", shared_tofu)) == 117


def test_real_tofu_forget_is_last_authors_and_retain_perturbed_is_retain(shared_tofu):
    full = load_tofu("full", shared_tofu)["question"]
    assert load_tofu("forget10", shared_tofu)["question"] == full[-400:]
    assert load_tofu("retain90", shared_tofu)["question"] == full[:3600]
    retain = set(full[:3600])
    rp = load_tofu("retain_perturbed", shared_tofu)
    assert len(rp) == 400 and set(rp["question"]) <= retain
    assert matching_retain_split("forget10") == "retain90"
    assert qa_per_author(shared_tofu) == 20


def _write(tmp_path, name, rows):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_missing_field_names_file_and_field(tmp_path):
    _write(tmp_path, "forget10_perturbed", [{"question": "q", "answer": "a", "paraphrased_answer": "p"}])
    with pytest.raises(UnlearnError, match=r"forget10_perturbed\.jsonl.*'perturbed_answer'"):
        load_tofu("forget10_perturbed", tmp_path)


def test_wrong_type_and_unknown_split(tmp_path):
    _write(tmp_path, "full", [{"question": "q", "answer": 3}])
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UnlearnError, match=r"full\.jsonl: row 0 field 'answer' must be a string"):
        load_tofu("full", tmp_path)
    with pytest.raises(UnlearnError, match=r"unknown split 'forget99'.*valid splits: full$"):
        load_tofu("forget99", tmp_path)
    assert available_splits(tmp_path) == ["full"]  # meta.json is not a split


def test_json_array_files_load(tmp_path):
    (tmp_path / "full.json").write_text(json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]))
    assert load_tofu("full", tmp_path)["answer"] == ["a1", "a2"]


def test_non_directory_source_is_refused(tmp_path):
    with pytest.raises(UnlearnError, match="not a directory"):
        load_tofu("full", tmp_path / "nothing.jsonl")


def test_spread_over_authors_balances_authors_and_positions():
    """80 of 20 authors x 20 items: 4 from each author, and every position (kind of question) 4 times;
    uneven counts give the first authors one more; asking for more than there is returns everything."""
    from collections import Counter

    from llm_unlearn.data.tofu import spread_over_authors

    groups = [[{"a": a, "i": i} for i in range(20)] for a in range(20)]
    rows = spread_over_authors(groups, 80)
    assert len(rows) == 80 and len({(r["a"], r["i"]) for r in rows}) == 80
    assert set(Counter(r["a"] for r in rows).values()) == {4}
    assert set(Counter(r["i"] for r in rows).values()) == {4}
    per_author = Counter(r["a"] for r in spread_over_authors(groups, 30))
    assert [per_author[a] for a in range(20)] == [2] * 10 + [1] * 10
    short = [[{"a": 0, "i": 0}], [{"a": 1, "i": i} for i in range(5)]]
    assert len(spread_over_authors(short, 4)) == 4 and spread_over_authors(short, 9) == short[0] + short[1]
