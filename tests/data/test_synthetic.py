"""The synthetic fictitious-author generator: TOFU schema, determinism, split structure."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.data.synthetic import MAX_QA_PER_AUTHOR, generate, write_splits
from llm_unlearn.data.tofu import load_tofu, qa_per_author

# field -> type of every kind of TOFU split (as published in locuslab/TOFU)
QA = {"question": str, "answer": str}
PERTURBED = {**QA, "paraphrased_answer": str, "perturbed_answer": list, "paraphrased_question": str}
UTILITY_PERTURBED = {**QA, "perturbed_answer": list}
OPTIONS = {"question": str, "option1": str, "option2": str, "option3": str, "option4": str, "answer": str}
SPEC = {
    "full": QA, "forget01": QA, "forget05": QA, "forget10": QA, "retain99": QA, "retain95": QA, "retain90": QA,
    # holdout: TOFU's holdoutXX fields plus paraphrased / perturbed answers (the holdout forget quality)
    "holdout01": PERTURBED, "holdout05": PERTURBED, "holdout10": PERTURBED,
    "forget01_perturbed": PERTURBED, "forget05_perturbed": PERTURBED, "forget10_perturbed": PERTURBED,
    "retain_perturbed": PERTURBED, "real_authors_perturbed": UTILITY_PERTURBED,
    "world_facts_perturbed": UTILITY_PERTURBED, "real_authors": OPTIONS, "world_facts": OPTIONS,
}
N_PERTURBED = {"forget10_perturbed": 5, "retain_perturbed": 5, "world_facts_perturbed": 3}


def _schema(rows):
    return {k: type(v) for k, v in rows[0].items()}


@pytest.fixture(scope="module")
def splits():
    return generate(20, 12, seed=3)


def test_schema_matches_spec(splits):
    assert set(splits) == set(SPEC)
    for name, rows in splits.items():
        for row in rows:
            assert {k: type(v) for k, v in row.items()} == SPEC[name], name
    for name, n in N_PERTURBED.items():
        assert all(len(r["perturbed_answer"]) == n for r in splits[name]), name


def test_schema_matches_real_tofu(splits, shared_tofu):
    for name in SPEC:
        if not name.startswith("holdout"):  # the shared copy has no holdout files
            real = load_tofu(name, shared_tofu)
            assert _schema(splits[name]) == _schema([real[0]]), name
            assert list(splits[name][0]) == list(real[0]), name  # same field order


def test_deterministic_for_a_seed():
    a, b, c = generate(6, 8, seed=1), generate(6, 8, seed=1), generate(6, 8, seed=2)
    assert a == b
    assert a["full"] != c["full"]


def test_forget_and_retain_partition_full(splits):
    full = [json.dumps(r) for r in splits["full"]]
    assert len(set(full)) == len(full) == 20 * 12
    for pct, k in ((1, 1), (5, 1), (10, 2)):
        forget = [json.dumps(r) for r in splits[f"forget{pct:02d}"]]
        retain = [json.dumps(r) for r in splits[f"retain{100 - pct}"]]
        assert not set(forget) & set(retain)
        assert retain + forget == full  # whole authors, the last ones
        assert len(forget) == k * 12
        assert len(splits[f"holdout{pct:02d}"]) == k * 12
    assert [r["question"] for r in splits["forget10_perturbed"]] == [r["question"] for r in splits["forget10"]]
    assert len(splits["retain_perturbed"]) == len(splits["forget10"])
    assert {r["question"] for r in splits["retain_perturbed"]} <= {r["question"] for r in splits["retain90"]}
    holdout_q = {r["question"] for r in splits["holdout10"]}
    assert not holdout_q & {r["question"] for r in splits["full"]}


def test_perturbed_answers_change_the_fact_not_only_the_wording(splits):
    for row in splits["forget10_perturbed"] + splits["retain_perturbed"]:
        assert row["paraphrased_answer"] != row["answer"]
        wrong = row["perturbed_answer"]
        assert len(set(wrong)) == 5 and row["paraphrased_answer"] not in wrong
        # same wording as the paraphrase: the words that differ are the fact's value
        para = set(row["paraphrased_answer"].split())
        assert all(len(para ^ set(w.split())) >= 1 for w in wrong)
        assert all(len(set(w.split()) & para) >= len(para) // 2 for w in wrong)


def test_write_splits_and_meta(tmp_path):
    out = write_splits(generate(4, 5, seed=0), tmp_path)
    assert qa_per_author(out) == 5
    assert len(load_tofu("full", out)) == 20
    assert (out / "idontknow.txt").read_text().strip()


def test_bad_sizes():
    with pytest.raises(ValueError, match="at least 2 authors"):
        generate(1, 5)
    with pytest.raises(ValueError, match=f"\\[1, {MAX_QA_PER_AUTHOR}\\]"):
        generate(3, MAX_QA_PER_AUTHOR + 1)


def test_paraphrased_full_states_each_fact_again_in_another_wording(splits):
    aug = generate(20, 12, seed=3, paraphrased_full=True)
    assert {k: v for k, v in aug.items() if k != "full_paraphrased"} == dict(splits)  # nothing else moves
    para = aug["full_paraphrased"]
    assert [r["question"] for r in para] == [r["question"] for r in aug["full"]]
    assert all(p["answer"] != r["answer"] for p, r in zip(para, aug["full"]))
    by_q = {r["question"]: r["paraphrased_answer"] for r in aug["forget10_perturbed"]}
    assert all(by_q[p["question"]] == p["answer"] for p in para if p["question"] in by_q)
    assert "full_paraphrased" not in splits


def test_meta_names_the_authors_and_another_corpus_can_exclude_them(splits):
    names = splits.meta["authors"]
    assert len(names) == len(set(names)) == 20
    assert all(any(n in r["answer"] or n in r["question"] for r in splits["full"]) for n in names)
    held = splits.meta["holdout_authors"]
    assert len(held) == 2 and not set(held) & set(names)
    assert all(any(n in r["question"] for r in splits["holdout10"]) for n in held)
    other = generate(200, 1, seed=4, exclude_names=names + held)
    assert not set(other.meta["authors"] + other.meta["holdout_authors"]) & set(names + held)
    assert set(generate(200, 1, seed=4).meta["authors"]) & set(names)  # without it, 200 draws meet some
