"""Aggregates from per-item logs: the published TOFU numbers, the three formats, bad references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.logs import LEGACY_FILES, compute_summary, format_value, read_logs


def test_reproduces_published_tofu_aggregates(reference_logs):
    full = read_logs(reference_logs / "llama2-7b_full")
    retain = read_logs(reference_logs / "llama2-7b_retain90")
    s = compute_summary(full, retain)["metrics"]
    assert f"{s['model_utility']:.4f}" == "0.6227"
    assert f"{compute_summary(retain)['metrics']['model_utility']:.4f}" == "0.6137"
    assert f"{s['forget_quality']:.4g}" == "1.834e-21"
    assert s["forget_quality_floor"] < s["forget_quality"]


def test_score_cli_prints_published_numbers(reference_logs, capsys):
    from llm_unlearn.cli import main

    rc = main(["score", "--logs", str(reference_logs / "llama2-7b_full"),
               "--retain-logs", str(reference_logs / "llama2-7b_retain90")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "0.6227" in out and "1.834e-21" in out
    assert "n/a" in out  # MIA: the reference logs have no holdout scores


def _truncated_legacy(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir()
    for f in LEGACY_FILES.values():
        d = json.loads((src / f).read_text())
        d = {k: {i: v[i] for i in list(v)[:n]} if isinstance(v, dict) else v for k, v in d.items()}
        (dst / f).write_text(json.dumps(d))
    return dst


def test_retain_reference_with_other_item_count_is_refused(reference_logs, tmp_path):
    full = read_logs(reference_logs / "llama2-7b_full")
    small = read_logs(_truncated_legacy(reference_logs / "llama2-7b_retain90", tmp_path / "r", 40))
    with pytest.raises(UnlearnError, match="40 forget items, this model has 300"):
        compute_summary(full, small)


def test_retain_reference_of_another_split_is_refused(tmp_path):
    def doc(split, questions):
        items = [{"index": i, "question": q, "answer": "a", "gt_loss": 1.0, "paraphrased_loss": 1.0,
                  "perturbed_loss": [1.5, 2.0]} for i, q in enumerate(questions)]
        return {"format": "llm-unlearn-eval-items/1", "forget_split": split,
                "splits": {"forget": {"source_split": f"{split}_perturbed", "items": items}}}

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc("forget10", ["q1", "q2"])))
    b.write_text(json.dumps(doc("forget05", ["q1", "q2"])))
    c.write_text(json.dumps(doc("forget10", ["q3", "q4"])))
    with pytest.raises(UnlearnError, match="forget05"):
        compute_summary(read_logs(a), read_logs(b))
    with pytest.raises(UnlearnError, match="different forget questions"):
        compute_summary(read_logs(a), read_logs(c))
    assert compute_summary(read_logs(a), read_logs(a))["metrics"]["forget_quality"] == 1.0


def _to_open_unlearning(legacy_dir: Path) -> dict:
    """Re-express TOFU legacy logs in open-unlearning's TOFU_EVAL.json shape."""
    out = {}
    for name, pre in (("forget", "forget"), ("retain", "retain"), ("real_authors", "ra"), ("world_facts", "wf")):
        d = json.loads((legacy_dir / LEGACY_FILES[name]).read_text())
        keys = list(d["avg_gt_loss"])
        out[f"{pre}_Q_A_Prob"] = {"agg_value": 0, "value_by_index": {k: {"avg_loss": d["avg_gt_loss"][k]} for k in keys}}
        out[f"{pre}_Q_A_PERT_Prob"] = {"agg_value": 0, "value_by_index": {
            k: {"avg_loss": d["average_perturb_loss"][k]} for k in keys}}
        out[f"{pre}_Q_A_ROUGE"] = {"agg_value": 0, "value_by_index": {
            k: {"rougeL_recall": d["rougeL_recall"][k], "generation": d["generated_text"][k][1]} for k in keys}}
        if name in ("forget", "retain"):
            out[f"{pre}_Q_A_PARA_Prob"] = {"agg_value": 0, "value_by_index": {
                k: {"avg_loss": d["avg_paraphrased_loss"][k]} for k in keys}}
        tr_name = "forget_truth_ratio" if name == "forget" else f"{pre}_Truth_Ratio"
        out[tr_name] = {"agg_value": 0, "value_by_index": {k: {"score": d["truth_ratio"][k]} for k in keys}}
    return out


def test_open_unlearning_format(reference_logs, tmp_path):
    for model in ("full", "retain90"):
        p = tmp_path / f"{model}_TOFU_EVAL.json"
        p.write_text(json.dumps(_to_open_unlearning(reference_logs / f"llama2-7b_{model}")))
    full, retain = read_logs(tmp_path / "full_TOFU_EVAL.json"), read_logs(tmp_path / "retain90_TOFU_EVAL.json")
    assert full.fmt == "open-unlearning"
    ours = compute_summary(full, retain)["metrics"]
    legacy = compute_summary(read_logs(reference_logs / "llama2-7b_full"),
                             read_logs(reference_logs / "llama2-7b_retain90"))["metrics"]
    # the stored per-item truth ratios are TOFU's own (float32) values: same test, same p-value to 3 digits
    assert f"{ours['forget_quality']:.3g}" == f"{legacy['forget_quality']:.3g}"
    for key in ("forget_probability", "retain_rougeL_recall", "real_authors_probability", "world_facts_probability"):
        assert ours[key] == pytest.approx(legacy[key], rel=1e-9)


def test_missing_metrics_are_none_with_reason(reference_logs, tmp_path):
    d = tmp_path / "forget_only"
    d.mkdir()
    shutil.copy(reference_logs / "llama2-7b_full" / LEGACY_FILES["forget"], d)
    s = compute_summary(read_logs(d))
    assert s["metrics"]["model_utility"] is None
    assert "retain" in s["not_available"]["model_utility"]
    assert format_value(s["metrics"]["model_utility"]) == "n/a"
    assert s["metrics"]["forget_probability"] == pytest.approx(0.9909, abs=1e-4)


def test_unknown_logs_path_is_a_clear_error(tmp_path):
    with pytest.raises(UnlearnError, match="no per_item.json"):
        read_logs(tmp_path)


def _utility_logs(rng, n: int, rouge_hits: int):
    from llm_unlearn.eval.logs import EvalLogs, SplitLog

    splits = {}
    for name in ("retain", "real_authors", "world_facts"):
        rouge = np.zeros(n)
        rouge[:rouge_hits] = 1.0
        splits[name] = SplitLog(name=name, index=[str(i) for i in range(n)], gt_loss=rng.uniform(0.5, 2.0, n),
                                paraphrased_loss=rng.uniform(0.5, 2.0, n),
                                perturbed_loss=rng.uniform(1.0, 3.0, (n, 3)).tolist(), rougeL_recall=rouge)
    return EvalLogs(splits=splits, fmt="synthetic")


def test_utility_bootstrap_intervals():
    from llm_unlearn.eval.logs import utility_bootstrap

    rng = np.random.default_rng(0)
    few, many = _utility_logs(rng, 40, 3), _utility_logs(rng, 400, 30)
    b_few, b_many = utility_bootstrap(few, n_boot=300), utility_bootstrap(many, n_boot=300)
    for b in (b_few, b_many):
        lo, hi = b["model_utility_interval"]
        assert lo <= b["model_utility"] <= hi
    # a handful of generations decide MU on 40 items: the interval narrows with 10x the items
    width = [b["model_utility_interval"][1] - b["model_utility_interval"][0] for b in (b_few, b_many)]
    assert width[1] < 0.6 * width[0]
    # paired with itself: the ratio is exactly 1 on every resample
    same = utility_bootstrap(few, few, n_boot=100)
    assert same["ratio"] == 1.0 and same["ratio_interval"] == [1.0, 1.0]
    other = utility_bootstrap(_utility_logs(rng, 40, 5), few, n_boot=300)
    assert other["ratio_interval"][0] < other["ratio"] < other["ratio_interval"][1]
    with pytest.raises(UnlearnError, match="same retain items"):
        utility_bootstrap(_utility_logs(rng, 41, 3), few, n_boot=10)
