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
