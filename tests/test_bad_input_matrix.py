"""Bad input, command by command: one line ``error: …``, exit 2, no traceback, every input
unchanged on disk (checksums before and after), and, where the check can run before the model
loads, no model loaded (`load_model` is replaced by a tripwire)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from llm_unlearn.cli import main


def _checksums(paths) -> dict[str, str]:
    sums = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            sums[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return sums


def _earlier_search(w) -> str:
    """An output holding an earlier `tune` search of another method (only its state file matters)."""
    out = w["runs"] / "tune"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_state.json").write_text(json.dumps({"config": {"method": "simnpo"}, "elapsed_s": 60.0}))
    return str(out)


@pytest.fixture()
def world(tmp_path, target_dir, synthetic_dir):
    """Copies of a model and data the commands may be asked to destroy, plus a finished run
    directory with an eval and a retain-eval-like per_item.json."""
    runs = tmp_path / "runs"
    model = runs / "target"
    shutil.copytree(target_dir, model)
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    (model / "eval").mkdir()
    (model / "eval" / "summary.json").write_text(json.dumps({"format": "llm-unlearn-eval-summary/1"}))
    return {"tmp": tmp_path, "runs": runs, "model": model, "data": data}


@pytest.fixture()
def no_model_load(monkeypatch):
    """Loading any model or tokenizer fails the test (patched at the transformers / PEFT entry
    points, whatever module imported them)."""
    import peft
    import transformers

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, peft.PeftModel):
        monkeypatch.setattr(cls, "from_pretrained", tripwire)


def _retain_logs(path: Path, questions: list[str], with_losses: bool = True) -> Path:
    items = []
    for i, q in enumerate(questions):
        item = {"index": i, "question": q, "answer": "a"}
        if with_losses:
            item.update(gt_loss=1.0, paraphrased_loss=1.0, perturbed_loss=[2.0, 2.0])
        items.append(item)
    path.mkdir(parents=True)
    (path / "per_item.json").write_text(json.dumps({"format": "llm-unlearn-eval-items/1", "forget_split": "forget10",
                                                    "splits": {"forget": {"items": items}}}))
    return path


def _forget_questions(data: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in (data / "forget10_perturbed.jsonl").read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows[:n]]


def _truncated_model(w) -> Path:
    bad = w["tmp"] / "truncated"
    shutil.copytree(w["model"], bad, ignore=shutil.ignore_patterns("eval"))
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return bad


def _adapter_without_base(w) -> Path:
    adapter = w["tmp"] / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                             "base_model_name_or_path": str(w["tmp"] / "gone")}))
    return adapter


def _eval(w, model, *extra):
    return ["eval", "--model", str(model), "--data", str(w["data"]), "--max-items", "5", *extra]


# name -> (argv from the world, inputs whose files must not change, expected message, checked before loading)
CASES = {
    "eval output is the model": (
        lambda w: _eval(w, w["model"], "--output", str(w["model"]), "--overwrite"),
        lambda w: [w["model"], w["data"]], "is also an input", True),
    "eval output contains the model": (
        lambda w: _eval(w, w["model"], "--output", str(w["runs"]), "--overwrite"),
        lambda w: [w["model"]], "contains the input", True),
    "eval output is the retain logs": (
        lambda w: _eval(w, w["model"], "--retain-logs", str(w["model"] / "eval"), "--output", str(w["model"] / "eval"),
                        "--overwrite"),
        lambda w: [w["model"]], "is also an input", True),
    "report output is a run": (
        lambda w: ["report", str(w["model"]), "--output", str(w["model"]), "--overwrite"],
        lambda w: [w["model"]], "is also an input", True),
    "unlearn output is the model": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "grad_ascent",
                   "--output", str(w["model"]), "--overwrite"],
        lambda w: [w["model"], w["data"]], "is also an input", True),
    "finetune output is the data": (
        lambda w: ["finetune", "--data", str(w["data"]), "--output", str(w["data"]), "--overwrite"],
        lambda w: [w["data"]], "is also an input", True),
    "mask output is inside the model": (
        lambda w: ["mask", "--model", str(w["model"]), "--data", str(w["data"]), "--output",
                   str(w["model"] / "model.safetensors"), "--overwrite"],
        lambda w: [w["model"]], "lies inside the input", True),
    "score output is its logs": (
        lambda w: ["score", "--logs", str(w["model"] / "eval" / "summary.json"), "--output",
                   str(w["model"] / "eval" / "summary.json"), "--overwrite"],
        lambda w: [w["model"]], "is also an input", True),
    "mistyped local path": (
        lambda w: _eval(w, w["runs"] / "targte", "--output", str(w["tmp"] / "out")),
        lambda w: [w["runs"]], r"no such model directory \(did you mean .*target\?\)", True),
    "adapter with a missing base": (
        lambda w: _eval(w, _adapter_without_base(w), "--output", str(w["tmp"] / "out")),
        lambda w: [w["tmp"] / "adapter"], r"base model of adapter .*gone: no such model directory", True),
    "truncated model.safetensors": (
        lambda w: _eval(w, _truncated_model(w), "--output", str(w["tmp"] / "out")),
        lambda w: [w["tmp"] / "truncated"], "truncated or corrupt safetensors", True),
    "resume without a checkpoint": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "grad_ascent",
                   "--output", str(w["tmp"] / "out"), "--resume"],
        lambda w: [w["model"]], "--resume: no checkpoint", True),
    "resume from a non-checkpoint": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "grad_ascent",
                   "--output", str(w["tmp"] / "out"), "--resume", str(w["data"])],
        lambda w: [w["model"]], "not a checkpoint directory", True),
    "mask ratio above 1": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "grad_diff",
                   "--mask-method", "wagle", "--mask-ratio", "1.5", "--output", str(w["tmp"] / "out")],
        lambda w: [w["model"], w["data"]], r"--mask-ratio must be in \(0, 1\], got 1.5", True),
    "mask ratio without a method": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "grad_diff",
                   "--mask-ratio", "0.5", "--output", str(w["tmp"] / "out")],
        lambda w: [w["model"]], "needs --mask-method", True),
    "mask command ratio above 1": (
        lambda w: ["mask", "--model", str(w["model"]), "--data", str(w["data"]), "--ratio", "1.5", "--output",
                   str(w["tmp"] / "m.safetensors")],
        lambda w: [w["model"]], "ratio", True),
    "retain logs of another size": (
        lambda w: _eval(w, w["model"], "--retain-logs", str(_retain_logs(w["tmp"] / "r3", _forget_questions(w["data"], 3))),
                        "--output", str(w["tmp"] / "out")),
        lambda w: [w["tmp"] / "r3"], "has 3 forget items, this model has 5", True),
    "retain logs of another split": (
        lambda w: _eval(w, w["model"], "--forget-split", "forget05", "--retain-logs",
                        str(_retain_logs(w["tmp"] / "r5", _forget_questions(w["data"], 5))), "--output", str(w["tmp"] / "out")),
        lambda w: [w["tmp"] / "r5"], "was evaluated on forget10, this model on forget05", True),
    "retain logs without truth ratios": (
        lambda w: _eval(w, w["model"], "--retain-logs",
                        str(_retain_logs(w["tmp"] / "rn", _forget_questions(w["data"], 5), with_losses=False)),
                        "--output", str(w["tmp"] / "out")),
        lambda w: [w["tmp"] / "rn"], "no forget truth ratios", True),
    "eval max-items 0": (
        lambda w: _eval(w, w["model"], "--max-items", "0", "--output", str(w["tmp"] / "out")),
        lambda w: [w["model"]], "--max-items must be >= 1", True),
    "eval on a missing CUDA device": (
        lambda w: _eval(w, w["model"], "--device", "cuda", "--output", str(w["tmp"] / "out")),
        lambda w: [w["model"]], "no CUDA device", True),
    "push offline": (
        lambda w: ["push", str(w["model"]), "--repo-id", "org/name", "--token", "hf_x"],
        lambda w: [w["model"]], "HF_HUB_OFFLINE", False),
    "unlearn 4-bit without LoRA": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "npo",
                   "--load-in-4bit", "--output", str(w["tmp"] / "out")],
        lambda w: [w["model"]], "needs --lora", True),
    "unlearn unknown dtype": (
        lambda w: ["unlearn", "--model", str(w["model"]), "--data", str(w["data"]), "--method", "npo",
                   "--dtype", "float8", "--output", str(w["tmp"] / "out")],
        lambda w: [w["model"]], "--dtype must be", True),
    "tune hfq level": (
        lambda w: ["tune", "--model", str(w["model"]), "--data", str(w["data"]), "--output", str(w["tmp"] / "out"),
                   "--hfq-level", "1.5"],
        lambda w: [w["model"]], "--hfq-level must be in", True),
    "tune resume with other settings": (
        lambda w: ["tune", "--model", str(w["model"]), "--data", str(w["data"]), "--output", _earlier_search(w),
                   "--method", "npo", "--resume"],
        lambda w: [w["runs"] / "tune"], r"--resume: .* holds a search with other settings \(.*method", True),
    "finetune threads": (
        lambda w: ["finetune", "--data", str(w["data"]), "--output", str(w["tmp"] / "out"), "--threads", "many"],
        lambda w: [w["data"]], "--threads must be", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, world, no_model_load, capsys, monkeypatch):
    if case == "eval on a missing CUDA device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == "push offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv_of, inputs_of, message, _ = CASES[case]
    argv = argv_of(world)
    inputs = inputs_of(world)
    before = _checksums(inputs)
    outputs_before = sorted(p.name for p in world["tmp"].iterdir())
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    import re

    assert re.search(message, err), err
    assert _checksums(inputs) == before
    # nothing written beside the inputs: no output, no staging directory left behind
    assert sorted(p.name for p in world["tmp"].iterdir()) == outputs_before


def test_push_with_the_hub_unreachable_is_one_line(world, capsys, monkeypatch):
    """`push --token X` with the network down: the client's connection error, in one line."""
    class Unreachable:
        def create_repo(self, *args, **kwargs):  # what requests / the socket layer raise offline
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("llm_unlearn.hub.publish.make_api", lambda token: Unreachable())
    before = _checksums([world["model"]])
    assert main(["push", str(world["model"]), "--repo-id", "org/name", "--token", "hf_x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: push to org/name failed: ConnectionError") and err.count("\n") == 1, err
    assert _checksums([world["model"]]) == before
