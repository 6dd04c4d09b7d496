"""Masked recipes on 2 CPU processes (torchrun, gloo, through Accelerate: DDP; Accelerate only
enables its FSDP plugin on GPUs, so FSDP2 sharding of masks is tested directly with
``fully_shard`` in tests/masks/test_fsdp2.py).

- wagle_zephyr (NPO + WAGLE row mask over LoRA): the mask the 2 ranks score together (each on
  half of the data, gradient sums all-reduced) equals the 1-process mask over the same batches;
  the gathered adapter keeps every frozen row of lora_B at exactly zero; the loss trajectory
  follows a 1-process run with the same global batch and the same mask (tolerance as in
  test_multiprocess.py: 1e-4 + 1e-4·|loss|).
- graddiff with full weights and an element mask: every frozen weight of the gathered model is
  bit-identical to the target's, while allowed weights moved.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests._torchrun import torchrun, worker_env

ROOT = Path(__file__).resolve().parents[2]


def _launch(recipe: str, args: list[str], out: Path, procs: int) -> dict:
    cmd = [*torchrun(procs), str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(ROOT / "recipes" / "configs" / f"{recipe}.yaml"),
           *args, "--output_dir", str(out), "--loss_log", str(out / "loss.json")]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "loss.json").read_text())


def _common(target_dir, synthetic_dir) -> list[str]:
    return ["--model_name_or_path", str(target_dir), "--data", str(synthetic_dir), "--dtype", "float32",
            "--bf16", "false", "--gradient_accumulation_steps", "1", "--max_steps", "4", "--logging_steps", "1",
            "--warmup_steps", "0", "--run_eval", "false", "--disable_tqdm", "true", "--seed", "0",
            "--max_length", "64"]


@pytest.mark.multiprocess
def test_wagle_lora_row_mask_on_two_processes(target_dir, synthetic_dir, tmp_path):
    from safetensors.torch import load_file

    from llm_unlearn.masks import load_mask

    common = [*_common(target_dir, synthetic_dir), "--learning_rate", "1e-2"]
    # the mask: 1 process over batches of 1 vs 2 ranks over half the batches each
    solo = _launch("wagle_zephyr", [*common, "--per_device_train_batch_size", "1", "--max_steps", "1"],
                   tmp_path / "solo", 1)
    two = _launch("wagle_zephyr", [*common, "--per_device_train_batch_size", "1"], tmp_path / "two", 2)
    assert (solo["world_size"], two["world_size"]) == (1, 2)
    m1, m2 = load_mask(tmp_path / "solo" / "mask.safetensors"), load_mask(tmp_path / "two" / "mask.safetensors")
    assert m1.keys() == m2.keys() and m2.granularity == "row"
    agree = sum(int((m1[k] == m2[k]).sum()) for k in m1) / sum(m1[k].numel() for k in m1)
    assert agree > 0.99, agree  # equal up to float summation order at the selection threshold
    # the gathered adapter: frozen rows of every lora_B exactly zero, allowed rows trained
    adapter = load_file(tmp_path / "two" / "adapter_model.safetensors")
    frozen = moved = 0
    for key, b in adapter.items():
        if "lora_B" in key:
            rows = m2[key.replace("base_model.model.", "").replace(".lora_B.weight", ".weight")].reshape(-1)
            assert torch.count_nonzero(b[~rows]) == 0, key
            frozen += int((~rows).sum())
            moved += int((b[rows].abs().sum(1) > 0).sum())
    assert frozen > 0 and moved > 0
    # same mask, same global batch (2 x 1 vs 1 x 2): same losses
    one = _launch("wagle_zephyr", [*common, "--per_device_train_batch_size", "2", "--mask_path",
                                   str(tmp_path / "two" / "mask.safetensors")], tmp_path / "one", 1)
    losses1 = [s["loss"] for s in one["steps"]]
    losses2 = [s["loss"] for s in two["steps"]]
    assert len(losses1) == len(losses2) == 4
    assert losses2 == pytest.approx(losses1, rel=1e-4, abs=1e-4)
    assert max(losses1) - min(losses1) > 1e-3


@pytest.mark.multiprocess
def test_full_weight_element_mask_on_two_processes(target_dir, synthetic_dir, tmp_path):
    from safetensors.torch import load_file

    from llm_unlearn.masks import compute_mask
    from llm_unlearn.models import load_model

    mask = compute_mask(load_model(str(target_dir)), method="random", ratio=0.5, granularity="element", seed=2)
    mask_path = mask.save(tmp_path / "mask.safetensors")
    out = tmp_path / "two"
    _launch("graddiff_tofu", [*_common(target_dir, synthetic_dir), "--learning_rate", "1e-3",
                              "--per_device_train_batch_size", "1", "--mask_path", str(mask_path)], out, 2)
    before, after = load_file(target_dir / "model.safetensors"), load_file(out / "model.safetensors")
    moved = 0
    for name, m in mask.items():
        assert torch.equal(after[name][~m], before[name][~m]), name
        moved += int((after[name][m] != before[name][m]).sum())
    assert moved > 0
    # weights the mask does not cover (embeddings, norms) are frozen outright
    uncovered = [k for k in before if k not in mask]
    assert uncovered and all(torch.equal(after[k], before[k]) for k in uncovered)
