"""eval/tofu_suite.py: the user's unlearning settings (--lr, --set) reach every run and win over
the suite's defaults (the tiny model's learning rate 1e-3)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "eval" / "tofu_suite.py"


def _suite():
    spec = importlib.util.spec_from_file_location("tofu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_user_lr_wins_over_the_suite_default(target_dir, synthetic_dir, tmp_path):
    suite = _suite()
    args = argparse.Namespace(model="tiny", data=str(synthetic_dir), forget_split="forget10", epochs=5.0, lr=5e-4,
                              protocol="native",
                              set=["max_steps=2", "disable_tqdm=true"])
    out = tmp_path / "ga"
    suite._unlearn(args, "grad_ascent", target_dir, out)
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["learning_rate"] == 5e-4 and run["steps"] == 2

    no_lr = argparse.Namespace(**{**vars(args), "lr": None})
    assert suite.unlearn_overrides(no_lr)["learning_rate"] == 1e-3  # the tiny default
    by_set = argparse.Namespace(**{**vars(args), "lr": None, "set": ["learning_rate=2.0e-4"]})
    assert suite.unlearn_overrides(by_set)["learning_rate"] == 2e-4


def test_unlearn_args_reach_every_run(target_dir, synthetic_dir, tmp_path):
    """--unlearn-args "--lr …" (the way the issue reported it) ends up in run.json, and an unknown
    flag is refused."""
    suite = _suite()
    args = argparse.Namespace(model="tiny", data=str(synthetic_dir), forget_split="forget10", epochs=5.0, lr=None,
                              set=["disable_tqdm=true"], protocol="native",
                              unlearn_args="--lr 3e-4 --max-steps 2 --set alpha=0.5")
    suite.apply_unlearn_args(args)
    out = tmp_path / "gd"
    suite._unlearn(args, "grad_diff", target_dir, out)
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["learning_rate"] == 3e-4 and run["steps"] == 2
    assert run["hyperparameters"]["alpha"] == 0.5

    bad = argparse.Namespace(**{**vars(args), "unlearn_args": "--bogus 1"})
    import pytest

    with pytest.raises(SystemExit, match="unsupported --bogus"):
        suite.apply_unlearn_args(bad)
