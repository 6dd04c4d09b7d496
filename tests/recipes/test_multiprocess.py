"""A recipe on 2 CPU processes (torchrun, gloo, through Accelerate) follows the same loss trajectory
as 1 process with the same global batch: 2 × batch 1 vs 1 × batch 2, 8 steps (almost two epochs of
the 10-item forget set), same seed.

Tolerance: |Δloss| ≤ 1e-4 + 1e-4·|loss| per step. Data order, pairing and the global-batch loss
normalisation are identical by construction, so the only differences left are float32 summation
order in gloo's all-reduce (measured: equal to 5 decimals).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._torchrun import torchrun, worker_env

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "graddiff_tofu.py"


def _run(cmd: list[str], out: Path) -> list[dict]:
    env = worker_env()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((out / "loss.json").read_text())
    return log


@pytest.mark.multiprocess
def test_two_cpu_processes_match_one(target_dir, synthetic_dir, tmp_path):
    common = ["--config", str(ROOT / "recipes" / "configs" / "graddiff_tofu.yaml"),
              "--model_name_or_path", str(target_dir), "--data", str(synthetic_dir), "--dtype", "float32",
              "--bf16", "false", "--gradient_accumulation_steps", "1", "--max_steps", "8", "--logging_steps", "1",
              "--learning_rate", "1e-3", "--warmup_steps", "0", "--run_eval", "false", "--disable_tqdm", "true",
              "--seed", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    log1 = _run([sys.executable, str(RECIPE), *common, "--output_dir", str(one), "--per_device_train_batch_size", "2",
                 "--loss_log", str(one / "loss.json")], one)
    log2 = _run([*torchrun(2), str(RECIPE), *common, "--output_dir", str(two),
                 "--per_device_train_batch_size", "1", "--loss_log", str(two / "loss.json")], two)
    assert (log1["world_size"], log2["world_size"]) == (1, 2)
    steps1, steps2 = log1["steps"], log2["steps"]
    assert [s["step"] for s in steps1] == [s["step"] for s in steps2] == list(range(1, 9))
    losses1 = [s["loss"] for s in steps1]
    losses2 = [s["loss"] for s in steps2]
    assert losses2 == pytest.approx(losses1, rel=1e-4, abs=1e-4)
    # the run really unlearned: the loss moved, and the forget NLL rose (GradDiff ascends on it)
    assert max(losses1) - min(losses1) > 0.1
    assert steps1[-1]["forget_nll"] > steps1[0]["forget_nll"]
    # both saved a model with the same weights (rank 0 writes once)
    from safetensors.torch import load_file

    w1, w2 = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max().item() < 1e-4, k
    manifest = json.loads((two / "run.json").read_text())
    assert manifest["world_size"] == 2 and manifest["forget_split"] == "forget10" and manifest["forget_items"] == 10
