"""The main job end to end at CI size: `llm-unlearn demo --small`."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from llm_unlearn.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo's output directory and its console (stdout and stderr together, as a terminal shows)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        assert main(["demo", "--small", "--output", str(out)]) == 0
    return out, console.getvalue()


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


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


def test_demo_console_is_quiet(demo_run):
    out, console = demo_run
    # a terminal line ends with a newline; a bar redraws itself in place with carriage returns
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in console.rstrip("\n").split("\n")]
    assert len(lines) <= 60, console
    assert "{'loss'" not in console and "Warning" not in console
    assert sum(line.startswith("Run ") for line in lines) == 1  # one table
    for stage in ("finetune retain (retain90)", "finetune target (full)", "unlearn grad_diff", "unlearn npo",
                  "unlearn npo + wagle mask", "eval target", "eval s3t_deleted"):
        assert sum(stage + ":" in line for line in lines) == 1, [line for line in lines if stage + ":" in line]  # one bar each
    assert sum("s3t train:" in line for line in lines) >= 1  # the S3T run (and its exact-retrain reference)
    notes = lines[lines.index("What each row is:") + 1:]
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["rows"]:
        assert any(line.split()[0] == row["run"] for line in notes if line.strip()), row["run"]
    assert set(summary["row_notes"]) == {r["run"] for r in summary["rows"]}


def test_demo_trainer_logs_go_to_jsonl(demo_dir):
    records = [json.loads(line) for line in (demo_dir / "trainer_log.jsonl").read_text().splitlines()]
    stages = {r["stage"] for r in records}
    assert {"finetune retain (retain90)", "finetune target (full)", "unlearn grad_diff", "unlearn npo",
            "unlearn npo + wagle mask", "s3t"} <= stages
    assert all("loss" in r or "train_loss" in r or "last_loss" in r for r in records)
    # each run keeps its own log too
    npo = [json.loads(line) for line in (demo_dir / "npo" / "trainer_log.jsonl").read_text().splitlines()]
    assert npo and {r["stage"] for r in npo} == {"unlearn npo"}


def test_row_notes_flag_a_collapse_and_the_exact_row():
    from llm_unlearn.demo import DemoConfig, row_notes

    rows = [{"run": "target", "model_utility": 0.867}, {"run": "retain", "model_utility": 0.85},
            {"run": "graddiff", "model_utility": 0.0}, {"run": "npo", "model_utility": 0.83},
            {"run": "s3t_deleted", "model_utility": 0.37}, {"run": "s3t_retrain_reference", "model_utility": 0.4}]
    notes = row_notes(rows, DemoConfig())
    assert list(notes) == [r["run"] for r in rows]
    assert "COLLAPSED" in notes["graddiff"] and "0.000" in notes["graddiff"]
    # utility below half the target's: a collapse for an approximate method, not for the exact rows
    assert not any("COLLAPSED" in notes[r] for r in ("target", "npo", "s3t_deleted", "s3t_retrain_reference"))
    assert "exact" in notes["s3t_deleted"] and "retain model" in notes["s3t_deleted"]
    assert "exact-retrain reference" in notes["s3t_retrain_reference"]
    assert all("\n" not in n and n and len(n) <= 120 for n in notes.values())


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


def test_s3t_base_corpus_leaves_out_the_demo_authors(tmp_path):
    from llm_unlearn.data.synthetic import generate, write_splits
    from llm_unlearn.demo import DemoConfig, s3t_base_corpus

    data = write_splits(generate(20, 20, seed=0), tmp_path / "data")
    demo = json.loads((data / "meta.json").read_text())
    theirs = set(demo["authors"] + demo["holdout_authors"])
    # seed 0: the generator's seed 1 draws a demo author ("Jareth Whitlock") among its first 20
    assert set(generate(20, 20, seed=1).meta["authors"]) & theirs
    base = s3t_base_corpus(DemoConfig(output=str(tmp_path / "out"), seed=0), data)
    assert len(base.meta["authors"]) == 20 and not set(base.meta["authors"] + base.meta["holdout_authors"]) & theirs
    cfg = DemoConfig(output=str(tmp_path / "out"), seed=0, s3t_base_authors=30, s3t_base_paraphrases=True)
    big = s3t_base_corpus(cfg, data)
    assert len(big.meta["authors"]) == 30 and "full_paraphrased" not in big
    assert len(big["full"]) == 2 * 30 * cfg.qa_per_author  # every item in its answer's and its paraphrase's wording


def test_demo_without_the_exact_retrain_reference(tmp_path, capsys):
    """`s3t_reference=False` (the benchmark's --no-reference) trains no reference and says so, and
    still serves and evaluates the deleted ensemble."""
    from llm_unlearn.demo import DemoConfig, run_demo

    out = tmp_path / "out"
    summary = run_demo(DemoConfig(output=str(out), small=True, authors=10, methods=[], s3t_reference=False,
                                  eval_max_items=8))
    assert not (out / "s3t_reference").exists()
    assert (out / "s3t_deleted" / "eval" / "per_item.json").is_file()
    exact = summary["s3t_exactness"]
    assert exact["forget_quality_vs_reference"] is None and exact["served_weights_identical_to_reference"] is None
    assert exact["forget_quality_vs_retain_model"] is not None
    assert "s3t_reference_train" not in summary["timings_s"]
    assert "no exact-retrain reference was trained" in capsys.readouterr().out
