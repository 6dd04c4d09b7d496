"""Ctrl-C during training saves a checkpoint, exits 130 and prints the --resume command; the
resumed run finishes where it left off. Thread policy recorded in run.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llm_unlearn.cli import main
from llm_unlearn.outputs import staging_path

REPO = Path(__file__).resolve().parents[2]


def test_sigint_during_unlearn_saves_a_checkpoint_and_resume_finishes(target_dir, synthetic_dir, tmp_path, monkeypatch):
    out = tmp_path / "ga"
    argv = ["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "grad_ascent",
            "--lr", "1e-5", "--output", str(out), "--set", "disable_tqdm=true"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm_unlearn.cli", *argv, "--max-steps", "100000"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("training:"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(180), "".join(lines)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, "".join(lines)
    reader.join(10)
    err = "".join(lines)
    assert "Traceback" not in err
    resume = [line for line in lines if line.startswith("resume with: llm-unlearn unlearn ")]
    assert resume and resume[0].rstrip().endswith("--resume"), err

    staged = staging_path(out)
    checkpoints = sorted(staged.glob("checkpoint-*"))
    assert not out.exists() and len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()
    step = int(checkpoints[0].name.split("-")[1])
    interrupted = json.loads((staged / "run.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["checkpoint"].endswith(checkpoints[0].name)

    # the printed command, with a shorter --max-steps so the test ends: picks the checkpoint up (in this
    # process, with the same OMP_NUM_THREADS as the interrupted one whatever the outer environment has)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main([*argv, "--max-steps", str(step + 2), "--resume"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ok" and run["steps"] == step + 2
    assert run["resumed_from"].endswith(checkpoints[0].name)
    assert not staged.exists() and not list(out.glob("checkpoint-*"))  # Ctrl-C checkpoints are not kept
    assert run["threads"]["threads"] == 1 and run["threads"]["reason"] == "OMP_NUM_THREADS=1"


def test_sigint_during_finetune_saves_a_checkpoint(synthetic_dir, tmp_path, monkeypatch, capsys):
    """In-process: the handler is Python's, so a SIGINT sent to ourselves at step 2 is a real Ctrl-C."""
    from llm_unlearn.interrupt import SaveOnInterrupt

    original = SaveOnInterrupt.on_step_end

    def ctrl_c_at_step_2(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(SaveOnInterrupt, "on_step_end", ctrl_c_at_step_2)
    out = tmp_path / "target"
    argv = ["finetune", "--data", str(synthetic_dir), "--output", str(out), "--epochs", "1", "--batch-size", "16"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2/" in err and "resume with: llm-unlearn finetune" in err
    assert (staging_path(out) / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not out.exists()

    monkeypatch.setattr(SaveOnInterrupt, "on_step_end", original)
    assert main([*argv, "--resume"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"].endswith("checkpoint-2") and not (out / "checkpoints").exists()
    assert (out / "model.safetensors").is_file() and not staging_path(out).exists()


def test_thread_policy(monkeypatch):
    import torch

    from llm_unlearn.threads import apply_thread_policy

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        small = apply_thread_policy(num_params=1_000_000)
        assert small["threads"] == 1 and "under 10 M" in small["reason"]
        large = apply_thread_policy(num_params=135_000_000)
        assert large["reason"] == "torch default" and large["threads"] >= 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        chosen = apply_thread_policy(num_params=1_000_000)
        assert chosen["threads"] == 2 and chosen["reason"] == "OMP_NUM_THREADS=2"
        assert apply_thread_policy(num_params=1, policy=3)["threads"] == 3
        assert apply_thread_policy(num_params=1, policy="keep")["threads"] == 3
        from llm_unlearn.errors import UnlearnError

        with pytest.raises(UnlearnError, match="threads must be"):
            apply_thread_policy(num_params=1, policy="many")
    finally:
        torch.set_num_threads(before)
