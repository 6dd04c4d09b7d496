"""eval/tofu_suite.py: the user's --unlearn-args reach `llm-unlearn unlearn` and win over the
suite's defaults."""

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


def test_user_lr_in_unlearn_args_is_used(target_dir, synthetic_dir, tmp_path):
    suite = _suite()
    args = argparse.Namespace(model="tiny", data=str(synthetic_dir), forget_split="forget10",
                              unlearn_args="--lr 5e-4 --max-steps 2 --set disable_tqdm=true")
    out = tmp_path / "ga"
    suite._unlearn(args, "grad_ascent", target_dir, out)
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["learning_rate"] == 5e-4 and run["steps"] == 2

    # without a user --lr the tiny default applies; --lr=X counts as given
    default = suite.unlearn_argv(argparse.Namespace(**{**vars(args), "unlearn_args": "--epochs 1"}),
                                 "npo", target_dir, out)
    assert default[default.index("--lr") + 1] == "1e-3"
    given = suite.unlearn_argv(argparse.Namespace(**{**vars(args), "unlearn_args": "--lr=2e-4"}), "npo", target_dir, out)
    assert "--lr" not in given and given[-1] == "--lr=2e-4"
