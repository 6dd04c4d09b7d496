"""The main job end to end at CI size: `llm-unlearn demo --small`."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--small", "--output", str(out)]) == 0
    return out


def test_demo_writes_report_and_summary(demo_dir):
    summary = json.loads((demo_dir / "summary.json").read_text())
    report = demo_dir / "report"
    html = (report / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    for png in ("fq_vs_mu.png", "truth_ratio_hist.png", "metric_bars.png"):
        assert (report / png).stat().st_size > 1000
    runs = [r["run"] for r in summary["rows"]]
    assert runs == ["target", "retain", "graddiff", "npo", "npo_wagle", "s3t_deleted"]
    for name in runs:
        assert (demo_dir / name / "eval" / "summary.json").is_file()
    assert (demo_dir / "table.txt").read_text().startswith("Run")


def test_unlearned_runs_forget_better_than_target(demo_dir):
    fq = json.loads((demo_dir / "summary.json").read_text())["forget_quality"]
    assert fq["retain"] == pytest.approx(1.0)
    for name in ("graddiff", "npo", "npo_wagle", "s3t_deleted"):
        assert fq[name] > fq["target"], (name, fq)


def test_s3t_deletion_is_exact(demo_dir):
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t.ledger import content_hash
    from llm_unlearn.s3t.service import verify_run
    from llm_unlearn.s3t.train import load_run

    ledger, *_ = load_run(demo_dir / "s3t_deleted")
    forget = {content_hash(r["question"], r["answer"]) for r in load_tofu("forget10", demo_dir / "data")}
    assert {h for _, h in ledger.deleted_content_hashes()} == forget  # the text itself is purged
    assert ledger.deleted_texts() == []
    assert ledger.active_deleted_overlap() == []
    assert ledger.retrain_pending() == []
    verify_run(demo_dir / "s3t_deleted")  # nothing trained on the deleted authors is left
    exact = json.loads((demo_dir / "summary.json").read_text())["s3t_exactness"]
    assert exact["served_weights_identical_to_reference"] is True
    assert exact["forget_quality_vs_reference"] == pytest.approx(1.0)


def test_demo_refuses_existing_output(demo_dir, capsys):
    assert main(["demo", "--small", "--output", str(demo_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("env, expected", [(None, [1]), ("2", [])])
def test_finetune_pins_the_tiny_model_to_one_thread(env, expected, monkeypatch, synthetic_dir, tmp_path):
    """The demo's stages (finetune, run_unlearning) apply the thread policy: the tiny model runs on
    one torch thread unless OMP_NUM_THREADS says otherwise; run.json records the decision."""
    import json

    import torch

    from llm_unlearn.cli import main

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    out = tmp_path / "t"
    assert main(["finetune", "--data", str(synthetic_dir), "--output", str(out), "--epochs", "0.1"]) == 0
    assert calls[-1:] == expected
    threads = json.loads((out / "run.json").read_text())["threads"]
    assert threads["reason"] == ("model under 10 M parameters" if env is None else "OMP_NUM_THREADS=2")
