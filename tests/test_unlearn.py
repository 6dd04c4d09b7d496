"""`run_unlearning` / `llm-unlearn unlearn`: per-mode defaults, the forget / retain NLL and holdout
forget quality before and after, and the warning when a run did not forget."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.cli import main
from llm_unlearn.eval.metrics import describe_forgetting
from llm_unlearn.unlearn import (
    MODE_DEFAULTS,
    build_config,
    direction_advice,
    forgetting_warning,
    mode_defaults,
)


def test_mode_defaults_apply_below_config_and_flags(tmp_path):
    lora = build_config("npo", None, {}, output_dir=tmp_path, lora=True)
    full = build_config("npo", None, {}, output_dir=tmp_path, lora=False)
    assert lora.learning_rate == MODE_DEFAULTS["lora"]["learning_rate"]
    assert full.learning_rate == MODE_DEFAULTS["full"]["learning_rate"]
    assert build_config("npo", {"learning_rate": 3e-4}, {}, output_dir=tmp_path, lora=True).learning_rate == 3e-4
    assert build_config("npo", None, {"learning_rate": 7e-4}, output_dir=tmp_path, lora=True).learning_rate == 7e-4
    assert "learning_rate" not in mode_defaults("rmu", lora=True)  # RMU keeps its own lr


def test_forgetting_warning_names_the_flags():
    hp = {"learning_rate": 1e-5, "num_train_epochs": 5.0, "max_steps": -1}
    msg = forgetting_warning({"forget_before": 1.0, "forget_after": 1.05}, hp, lora=True)
    assert "--lr" in msg and "--epochs" in msg and "llm-unlearn tune" in msg
    assert forgetting_warning({"forget_before": 1.0, "forget_after": 1.6}, hp, lora=True) is None


def test_direction_advice_points_each_way():
    hp = {"learning_rate": 2e-3, "num_train_epochs": 5.0, "max_steps": -1, "beta": 0.1}
    short, over = direction_advice("short", "npo", hp), direction_advice("overshot", "npo", hp)
    assert short.startswith("raise --lr (now 0.002) or --epochs 5") and "lower --beta (now 0.1)" in short
    assert over.startswith("lower --lr (now 0.002) or --epochs 5") and "raise --beta (now 0.1)" in over
    assert "--beta" not in direction_advice("short", "grad_diff", hp)  # beta is NPO's knob
    assert "--max-steps 30" in direction_advice("short", "npo", {**hp, "max_steps": 30})
    assert direction_advice("alike", "npo", hp) == ""


def test_warning_for_a_run_with_lr_0(target_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--lora",
               "--lr", "0", "--max-steps", "3", "--output", str(out), "--set", "disable_tqdm=true"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "warning: forgetting did not happen" in printed and "llm-unlearn tune" in printed
    assert "holdout forget quality" in printed and "n/a" not in printed.split("holdout forget quality")[1].splitlines()[0]
    run = json.loads((out / "run.json").read_text())
    assert run["warning"] and run["hfq"]["before"] is not None and run["hfq"]["after"] is not None
    assert abs(run["nll"]["forget_after"] - run["nll"]["forget_before"]) < 1e-6
    # an unchanged model: its forget items against the starting model's holdout items = the HFQ before
    assert run["hfq"]["after_vs_start_holdout"] == pytest.approx(run["hfq"]["before"])
    assert "against the holdout items under the starting model" in printed
    assert run["hfq"]["direction"]["verdict"] == "short"  # nothing changed: still the target's verdict
    assert "forgetting: the forget items" not in printed  # the warning already says it


def test_default_lora_run_forgets_without_a_warning(target_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--lora",
                 "--output", str(out), "--set", "disable_tqdm=true"]) == 0
    printed = capsys.readouterr().out
    assert "warning" not in printed
    run = json.loads((out / "run.json").read_text())
    assert run["nll"]["forget_after"] - run["nll"]["forget_before"] >= 0.1
    assert run["hfq"]["after"] > run["hfq"]["before"]  # the forget items look less seen than before
    assert run["hfq"]["after_vs_start_holdout"] > run["hfq"]["before"]  # also against the unmoved holdout
    # which way the forget items now differ from unseen ones, judged against the unmoved holdout
    d = run["hfq"]["direction"]
    assert d["reference"] == "start" and d["pvalue"] == pytest.approx(run["hfq"]["after_vs_start_holdout"])
    assert (d["verdict"] == "alike") == (d["pvalue"] >= 0.05)
    assert f"forgetting: the forget items {describe_forgetting(d['verdict'])}" in printed
    assert ("llm-unlearn tune" in d["advice"]) == (d["verdict"] != "alike")
