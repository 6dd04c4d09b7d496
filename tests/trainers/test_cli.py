"""End to end: `llm-unlearn unlearn` and `run_unlearning` write the model or adapter, the tokenizer and
run.json with the forget / retain NLL before and after; config file < flags; masks hook."""

from __future__ import annotations

import json
import statistics

import pytest

from llm_unlearn.cli import main
from llm_unlearn.unlearn import run_unlearning


def test_cli_lora_npo_with_config_file(target_dir, synthetic_dir, tmp_path, capsys, unlearn_data):
    cfg = tmp_path / "npo.yaml"
    cfg.write_text("method: npo\nbeta: 0.2\nlearning_rate: 1.0e-4\nalpha: 2.0\nlogging_steps: 1\n")
    out = tmp_path / "out"
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--lora",
               "--config", str(cfg), "--lr", "5e-3", "--max-steps", "4", "--output", str(out),
               "--set", "disable_tqdm=true"])
    assert rc == 0, capsys.readouterr().err
    assert "forget NLL" in capsys.readouterr().out
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "run.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    hp = run["hyperparameters"]
    assert hp["beta"] == 0.2 and hp["alpha"] == 2.0  # from the file
    assert hp["learning_rate"] == 5e-3  # the flag wins over the file
    assert run["status"] == "ok" and run["steps"] == 4 and run["lora"] == {"r": 8, "alpha": 16}
    nll = run["nll"]
    assert nll["forget_after"] > nll["forget_before"]
    # the saved adapter reloads to the model that was scored
    from llm_unlearn.models import load_model
    from llm_unlearn.trainers import per_item_nll

    reloaded = load_model(str(out))
    assert statistics.fmean(per_item_nll(reloaded, unlearn_data.forget, unlearn_data.tokenizer)) == pytest.approx(
        nll["forget_after"], rel=1e-4)
    # refuses to overwrite
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo",
               "--output", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_cli_full_weight_npo_with_adafactor(target_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "ada"
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--optim",
               "adafactor", "--lr", "1e-3", "--max-steps", "3", "--output", str(out), "--set", "disable_tqdm=true"])
    assert rc == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["hyperparameters"]["optim"] == "adafactor" and run["steps"] == 3
    assert run["nll"]["forget_after"] > run["nll"]["forget_before"]
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--optim",
               "no_such_optimizer", "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "optim" in err and "Traceback" not in err


def test_run_unlearning_full_weights_and_diverged_manifest(target_dir, synthetic_dir, tmp_path, monkeypatch):
    out, result = run_unlearning(str(target_dir), synthetic_dir, tmp_path / "ga", method="grad_ascent",
                                 overrides={"max_steps": 3, "learning_rate": 5e-4, "disable_tqdm": True})
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert result["nll"]["forget_after"] > result["nll"]["forget_before"]
    assert len(result["nll"]["forget_per_item_after"]) == result["forget_items"] == 10

    from llm_unlearn import trainers
    from llm_unlearn.errors import DivergenceError
    from llm_unlearn.trainers.grad_ascent import GradAscentConfig, GradAscentTrainer

    class AlwaysNaN(GradAscentTrainer):
        def unlearn_loss(self, model, inputs, counts):
            loss, terms = super().unlearn_loss(model, inputs, counts)
            return loss * float("nan"), terms

    monkeypatch.setitem(trainers.METHODS, "grad_ascent", (AlwaysNaN, GradAscentConfig))
    with pytest.raises(DivergenceError, match="no checkpoint was saved"):
        run_unlearning(str(target_dir), synthetic_dir, tmp_path / "nan", method="grad_ascent",
                       overrides={"max_steps": 2, "disable_tqdm": True})
    run = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert run["status"] == "diverged" and "loss became nan" in run["error"]
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_mask_is_passed_to_the_masks_module(target_dir, synthetic_dir, tmp_path, monkeypatch):
    masks = pytest.importorskip("llm_unlearn.masks")
    seen = {}

    def fake_load(path):
        seen["path"] = str(path)
        return "MASK"

    def fake_attach(trainer, mask):
        seen["attached"] = (type(trainer).__name__, mask)

    monkeypatch.setattr(masks, "load_mask", fake_load)
    monkeypatch.setattr(masks, "attach_mask", fake_attach)
    (tmp_path / "mask.safetensors").touch()  # must exist: a missing --mask fails before loading
    run_unlearning(str(target_dir), synthetic_dir, tmp_path / "m", method="npo", mask=tmp_path / "mask.safetensors",
                   overrides={"max_steps": 1, "disable_tqdm": True})
    assert seen == {"path": str(tmp_path / "mask.safetensors"), "attached": ("NPOTrainer", "MASK")}
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["mask"] == {"path": str(tmp_path / "mask.safetensors")}
