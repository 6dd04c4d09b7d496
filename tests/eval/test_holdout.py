"""Retain-free forgetting scores: holdout forget quality (HFQ) and membership AUCs vs a holdout set."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llm_unlearn.eval import metrics as M


def test_hfq_is_a_ks_pvalue_of_forget_vs_holdout_ratios():
    rng = np.random.default_rng(0)
    same = M.holdout_forget_quality(rng.uniform(0.4, 0.9, 40), rng.uniform(0.4, 0.9, 40))
    apart = M.holdout_forget_quality(rng.uniform(0.05, 0.3, 40), rng.uniform(0.6, 0.9, 40))
    assert same["pvalue"] > 0.05 and apart["pvalue"] == pytest.approx(apart["floor"])
    assert apart["statistic"] == 1.0


def test_forgetting_direction_says_which_way_the_forget_items_differ():
    """HFQ is two-sided; the direction tells stopping short (forget items still more familiar: lower
    truth ratios) from overshooting (less familiar than unseen items)."""
    rng = np.random.default_rng(1)
    holdout = rng.uniform(0.6, 0.9, 80)
    short = M.forgetting_direction(rng.uniform(0.2, 0.5, 80), holdout)
    over = M.forgetting_direction(rng.uniform(0.95, 1.4, 80), holdout)
    alike = M.forgetting_direction(rng.uniform(0.6, 0.9, 80), holdout)
    assert (short["verdict"], over["verdict"], alike["verdict"]) == ("short", "overshot", "alike")
    assert short["more_familiar"] == 1.0 and short["less_familiar"] == 0.0
    assert over["less_familiar"] == 1.0 and over["more_familiar"] == 0.0
    assert alike["pvalue"] >= M.FORGETTING_LEVEL and short["forget_median"] < short["holdout_median"]
    # a partly forgotten set: 30 items still known, 50 like unseen ones: short, by the one-sided distance
    mixed = np.concatenate([rng.uniform(0.2, 0.5, 30), rng.uniform(0.6, 0.9, 50)])
    d = M.forgetting_direction(mixed, holdout)
    assert d["verdict"] == "short" and d["more_familiar"] > d["less_familiar"]
    assert d["pvalue"] == pytest.approx(M.holdout_forget_quality(mixed, holdout)["pvalue"])
    assert M.forgetting_direction(mixed, holdout, level=0.0)["verdict"] == "alike"  # the level decides "alike"
    assert len({M.describe_forgetting(v) for v in M.FORGETTING_VERDICTS}) == 3


def test_utility_proxy_is_the_harmonic_mean_without_rouge():
    vals = {f"{s}_{m}": 0.5 for s in M.UTILITY_SPLITS for m in M.UTILITY_MEASURES}
    vals["retain_rougeL_recall"] = 0.0  # ROUGE plays no part
    assert M.utility_proxy(vals) == pytest.approx(0.5)
    vals["world_facts_truth_ratio"] = 0.0
    assert M.utility_proxy(vals) == 0.0
    with pytest.raises(KeyError):
        M.utility_proxy({"retain_probability": 0.5})


def test_spearman():
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert np.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


@pytest.fixture(scope="module")
def scored(synthetic_dir, target_dir, retain_dir):
    from llm_unlearn.eval.evaluator import load_eval_rows, score_splits
    from llm_unlearn.unlearn import load_target

    rows, _, reason = load_eval_rows(synthetic_dir, "forget10")
    assert reason is None and "paraphrased_answer" in rows["holdout"][0]
    out = {}
    for role, path in (("target", target_dir), ("retain", retain_dir)):
        model, tok = load_target(str(path))
        summary = score_splits(model, tok, rows)
        out[role] = {**summary["metrics"], "truth_ratios": summary["truth_ratios"]}
    return out


def test_hfq_high_for_the_retain_model_low_for_the_target(scored):
    """The retain model never saw the forget authors: it treats them like the holdout authors.
    The target memorised them: its forget truth ratios stand apart from the holdout's."""
    assert scored["retain"]["holdout_forget_quality"] > 0.1
    assert scored["target"]["holdout_forget_quality"] < 0.01
    assert scored["retain"]["holdout_forget_quality"] > 100 * scored["target"]["holdout_forget_quality"]
    # membership AUC forget vs holdout: near 0.5 (the retain-free reference) for the retain model
    assert abs(scored["retain"]["mia_auc_loss"] - M.RETAIN_FREE_AUC) < 0.25
    assert scored["target"]["mia_auc_loss"] > 0.9
    assert scored["target"]["utility_proxy"] > 0 and scored["target"]["model_utility"] is None  # no generation
    # and which way: the target's forget items are more familiar than unseen ones; the retain model's alike
    tr = {role: scored[role]["truth_ratios"] for role in ("target", "retain")}
    assert M.forgetting_direction(tr["target"]["forget"], tr["target"]["holdout"])["verdict"] == "short"
    assert M.forgetting_direction(tr["retain"]["forget"], tr["retain"]["holdout"])["verdict"] == "alike"


def test_eval_and_score_print_hfq_without_retain_logs(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
                 "--max-items", "10", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "holdout_forget_quality" in printed and "mia_auc_loss" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["holdout_forget_quality"] is not None
    assert summary["metrics"]["forget_quality"] is None
    d = summary["forgetting_direction"]  # and which way the forget items differ: the target's stop short
    assert d["pvalue"] == pytest.approx(summary["metrics"]["holdout_forget_quality"])
    assert (d["verdict"] == "alike") == (d["pvalue"] >= M.FORGETTING_LEVEL)
    assert d["verdict"] != "overshot" and d["forget_median"] <= d["holdout_median"]
    assert f"the forget items {M.describe_forgetting(d['verdict'])}" in printed
    assert main(["score", "--logs", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("holdout_forget_quality "))
    assert "n/a" not in line
    assert f"the forget items {M.describe_forgetting(d['verdict'])}" in printed  # score recomputes it from the logs


def test_holdout_from_authors_outside_a_subset(synthetic_dir, tmp_path):
    """--max-authors N: the holdout items are other authors' (with perturbed answers), never the first N's
    nor the excluded (forget) questions; a few items are spread over the outside authors, one each."""
    from llm_unlearn.data.source import qa_per_author
    from llm_unlearn.data.tofu import load_tofu, outside_authors_rows
    from llm_unlearn.errors import UnlearnError

    src = tmp_path / "src"  # perturbed answers for every author's items, so several authors lie outside
    shutil.copytree(synthetic_dir, src)
    rows = load_tofu("full", src).to_list()
    with (src / "retain_perturbed.jsonl").open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r, "paraphrased_answer": r["answer"], "perturbed_answer": ["no", "none"]}) + "\n")
    full = [r["question"] for r in rows]
    per = qa_per_author(src)
    every = outside_authors_rows(src, 5)
    authors = {full.index(r["question"]) // per for r in every}
    assert len(authors) >= 2 and min(authors) >= 5 and all(r.get("perturbed_answer") for r in every)
    rows = outside_authors_rows(src, 5, n_items=len(authors))
    assert len({full.index(r["question"]) // per for r in rows}) == len(authors)  # one item from each author
    assert {r["question"] for r in rows} <= {r["question"] for r in every}
    assert outside_authors_rows(src, 5, n_items=10 ** 6) == every
    with pytest.raises(UnlearnError, match="outside the first 5"):
        outside_authors_rows(synthetic_dir, 5, exclude_questions=set(full))


def test_holdout_of_a_real_tofu_subset(shared_tofu):
    from llm_unlearn.data.tofu import load_tofu, outside_authors_rows
    from llm_unlearn.eval.evaluator import holdout_size, load_eval_rows

    full = [r["question"] for r in load_tofu("full", shared_tofu).to_list()]
    rows, splits, reason = load_eval_rows(shared_tofu, "forget01", max_authors=20)
    forget = {r["question"] for r in rows["forget"]}
    hold = [r["question"] for r in rows["holdout"]]
    assert reason is None and len(forget) == 40 and len(hold) == holdout_size(40) == 200  # scored only: more
    assert min(full.index(q) for q in hold) >= 400 and not set(hold) & forget
    outside = {full.index(r["question"]) // 20 for r in outside_authors_rows(shared_tofu, 20, exclude_questions=forget)}
    assert {full.index(q) // 20 for q in hold} == outside  # every outside author, not the first few
    assert "authors after the first 20" in splits["holdout"]


def test_explicit_holdout_split(synthetic_dir):
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.eval.evaluator import load_eval_rows

    rows, splits, _ = load_eval_rows(synthetic_dir, "forget10", holdout_split="holdout05")
    assert splits["holdout"] == "holdout05"
    capped, _, _ = load_eval_rows(synthetic_dir, "forget10", max_items=2, holdout_split="holdout05")
    assert len(capped["forget"]) == 2 and capped["holdout"] == rows["holdout"]  # the holdout is not capped to 2
    with pytest.raises(UnlearnError, match="nosuch"):
        load_eval_rows(synthetic_dir, "forget10", holdout_split="nosuch")
