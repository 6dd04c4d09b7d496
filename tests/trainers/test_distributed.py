"""UnlearnTrainer on 2 CPU processes (torchrun, gloo) equals 1 process with the same global batch:
2 × batch 1 vs 1 × batch 2, full-weight NPO + retain NLL, 3 steps, same seed.

- Loss normalisation: counts are summed over ranks and the loss scaled by the world size, so the
  logged loss and terms and the trained weights match the global-batch run. (Averaging per-rank
  means instead, the retain NLL of items of different lengths differs from the global token mean.)
- Reference pass: each rank scores its half of the forget set and the gathered ``ref_logprob``
  column equals the one of the single process.

Tolerance 1e-4 relative: the remaining differences are float32 summation order and padding
(batch 1 vs 2) in the reference pass.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests._torchrun import torchrun, worker_env

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.multiprocess
def test_two_processes_match_one_global_batch(target_dir, synthetic_dir, tmp_path):
    one = _worker().run(str(target_dir), str(synthetic_dir), str(tmp_path / "one"), batch_size=2)
    env = worker_env()
    cmd = [*torchrun(2), str(WORKER), str(target_dir), str(synthetic_dir), str(tmp_path / "two"), "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert one["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    # reference: 10 forget items, each rank scored 5 of them, every rank holds the full column
    assert one["reference_rows_scored"] == 10
    assert [r["reference_rows_scored"] for r in ranks] == [5, 5]
    for r in ranks:
        assert r["ref_logprob"] == pytest.approx(one["ref_logprob"], rel=1e-4)
    # loss and every logged term, step by step (rank 0 logs; rank 1 computes the same values)
    keys = ("loss", "npo", "forget_nll", "retain_loss", "retain_nll")
    steps1, steps2 = one["steps"], ranks[0]["steps"]
    assert [s["step"] for s in steps1] == [s["step"] for s in steps2] == [1, 2, 3]
    for s1, s2 in zip(steps1, steps2):
        for k in keys:
            assert s2[k] == pytest.approx(s1[k], rel=1e-4, abs=1e-5), (s1["step"], k)
    assert ranks[1]["steps"] == steps2
    # the run moved (NPO raised the forget NLL) and both produced the same weights
    assert steps1[-1]["forget_nll"] > steps1[0]["forget_nll"]
    w1 = torch.load(tmp_path / "one" / "weights.pt")
    w2 = torch.load(tmp_path / "two" / "weights.pt")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max().item() < 1e-5, k
