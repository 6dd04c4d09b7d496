"""Reports: files exist, the HTML holds the table and embeds the plots, missing metrics show n/a."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.eval.evaluator import evaluate_model, write_eval
from llm_unlearn.eval.logs import compute_summary, logs_from_items, read_logs
from llm_unlearn.runinfo import write_manifest


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, synthetic_dir, tiny_tokenizer):
    from llm_unlearn.models import build_tiny_model

    root = tmp_path_factory.mktemp("runs")
    kw = dict(max_items=3, max_new_tokens=3, progress=False)
    retain, unlearned, no_retain, not_evaluated = (root / n for n in ("retain", "grad_ascent", "target", "crashed_run"))
    for d in (retain, unlearned, no_retain, not_evaluated):
        d.mkdir()
    write_manifest(retain, role="retain", run_time_s=1.5)
    write_manifest(unlearned, method="grad_ascent", run_time_s=2.0)
    write_manifest(no_retain, kind="finetune", split="full")
    write_manifest(not_evaluated, method="npo")
    res = evaluate_model(build_tiny_model(tiny_tokenizer, seed=1), tiny_tokenizer, str(synthetic_dir), **kw)
    write_eval(retain / "eval", res)
    # the retain model against itself (forget quality 1), without a second model run
    res["summary"].update(compute_summary(read_logs(retain / "eval"), read_logs(retain / "eval")))
    write_eval(retain / "eval", res)
    res = evaluate_model(build_tiny_model(tiny_tokenizer, seed=2), tiny_tokenizer, str(synthetic_dir),
                         retain_logs=retain / "eval", **kw)
    write_eval(unlearned / "eval", res)
    res["summary"].update(compute_summary(logs_from_items(res["per_item"])))  # same model, no retain logs
    write_eval(no_retain / "eval", res)
    return [retain, unlearned, no_retain, not_evaluated]


def test_report_files_table_and_embedded_plots(run_dirs, tmp_path):
    from llm_unlearn.eval.report import build_report

    paths = build_report(run_dirs, tmp_path / "rep")
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    html = paths["html"].read_text()
    assert "<table id='results'>" in html and "Forget quality" in html and "PrivLeak" in html
    assert html.count("data:image/png;base64,") == 3
    assert "src='fq_vs_mu.png'" not in html  # self-contained
    md = paths["markdown"].read_text()
    assert "| grad_ascent | unlearned |" in md and "![" in md
    row = next(line for line in md.splitlines() if line.startswith("| retain |"))
    assert "| 1 |" in row  # retain vs itself: forget quality 1


def test_missing_metrics_show_na_not_crash(run_dirs, tmp_path):
    from llm_unlearn.eval.report import build_report, load_run

    paths = build_report(run_dirs, tmp_path / "rep")
    md = paths["markdown"].read_text()
    target_row = next(line for line in md.splitlines() if line.startswith("| target |"))
    assert target_row.split("|")[3].strip() == "n/a"  # forget quality without retain logs
    crashed = next(line for line in md.splitlines() if line.startswith("| crashed_run |"))
    assert crashed.count("n/a") == 8
    assert "no eval summary found" in md
    assert load_run(run_dirs[2]).role == "target"


def test_report_cli(run_dirs, tmp_path):
    from llm_unlearn.cli import main

    out = tmp_path / "cli_rep"
    assert main(["report", *map(str, run_dirs), "--output", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 2
    summary = json.loads((run_dirs[1] / "eval" / "summary.json").read_text())
    assert summary["format"] == "llm-unlearn-eval-summary/1"


def fake_attack_summary(synthetic_dir):
    """An attack summary from hand-made per-item values (recovery 0.5 on probability under nf4)."""
    from llm_unlearn.eval.attacks import AttackConfig, build_plan, summarise

    plan = build_plan(synthetic_dir, "forget10", AttackConfig(attacks=("quantize", "paraphrase"), quant_modes=("nf4",)))
    n = len(plan.rows)

    def vals(p, r):
        return {"probability": [p] * n, "rougeL_recall": [r] * n, "truth_ratio": [0.5] * n, "generation": [""] * n}

    results = {"unlearned": {"values": {"baseline": vals(0.1, 0.2), "quantize_nf4": vals(0.5, 0.2),
                                        "paraphrase": vals(0.1, 0.2)}},
               "target": {"values": {"baseline": vals(0.9, 0.6), "quantize_nf4": vals(0.88, 0.6),
                                     "paraphrase": vals(0.7, 0.5)}}}
    return summarise(plan, results, {"unlearned_vs_target": [1.0, 0.8]})


def test_report_robustness_table_and_recovery_plot(run_dirs, synthetic_dir, tmp_path):
    import shutil

    from llm_unlearn.eval.attacks import write_attacks
    from llm_unlearn.eval.report import build_report

    runs = [tmp_path / d.name for d in run_dirs]
    for src, dst in zip(run_dirs, runs):
        shutil.copytree(src, dst)
    summary = fake_attack_summary(synthetic_dir)
    assert summary["attacks"]["quantize_nf4"]["recovery"] == pytest.approx({"probability": 0.5, "rougeL_recall": 0.0})
    assert summary["attacks"]["quantize_nf4"]["target_recovery"]["probability"] == pytest.approx(0.975)
    write_attacks(runs[1] / "attacks", {"summary": summary, "per_item": {}})
    paths = build_report(runs, tmp_path / "rep")
    assert paths["recovery"].is_file()
    md = paths["markdown"].read_text()
    assert "## Robustness" in md
    row = next(line for line in md.splitlines() if line.startswith("| grad_ascent | 0.50 / 0.00 |"))
    assert row.endswith("| 0.900 |")  # CKA vs target: mean over layers
    assert paths["html"].read_text().count("data:image/png;base64,") == 4
    # without attack results: no robustness section, no recovery plot
    assert "recovery" not in build_report(run_dirs, tmp_path / "rep2")
