"""Mask enforcement on FSDP2-sharded parameters (`MaskEnforcer.rebind` / `mask_grads_`), on 2 CPU
processes with ``fully_shard`` over gloo, against the same run in one process: frozen weights stay
bit-identical (full weights, element mask) and frozen lora_B rows stay exactly zero (LoRA, row
mask) while every parameter is a DTensor shard, and the weights equal the unsharded run's (1e-5).
Accelerate enables its FSDP plugin only on GPUs; the recipe path on top of this is the same code
(`attach_mask` calls `rebind` when the Trainer creates its optimizer after wrapping)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests._torchrun import torchrun, worker_env

WORKER = Path(__file__).with_name("_fsdp2_worker.py")


def _run(out: Path, mode: str, procs: int, *extra: str) -> dict:
    out.mkdir(parents=True)
    proc = subprocess.run([*torchrun(procs), str(WORKER), str(out), mode, *extra], env=worker_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "result.pt")


def _base(name: str) -> str:
    from llm_unlearn.masks.weight_mask import base_param_name

    return base_param_name(name)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["full_element", "lora_row"])
def test_mask_holds_on_fsdp2_shards(mode, tmp_path):
    one = _run(tmp_path / "one", mode, 1)
    two = _run(tmp_path / "two", mode, 2)
    assert one["sharded_params"] == 0 and two["sharded_params"] > 0 and two["rebound"] > 0
    mask = two["mask"]
    frozen_checked = moved = 0
    for name, after in two["final"].items():
        before = two["initial"][name]
        if mode == "full_element":
            key = name
            if key in mask:
                m = mask[key]
                assert torch.equal(after[~m], before[~m]), name
                frozen_checked += int((~m).sum())
                moved += int((after[m] != before[m]).sum())
            else:
                assert torch.equal(after, before), name  # not covered: frozen outright
        elif "lora_B" in name:
            rows = mask[_base(name.replace(".lora_B.default", ""))].reshape(-1)
            assert torch.count_nonzero(after[~rows]) == 0, name
            frozen_checked += int((~rows).sum())
            moved += int((after[rows] != 0).any(1).sum())
        torch.testing.assert_close(after, one["final"][name], atol=1e-5, rtol=1e-4)
    assert frozen_checked > 0 and moved > 0
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-5)
