"""Bad input fails early with one actionable line (UnlearnError), from the library and the CLI."""

from __future__ import annotations

import shutil

import pytest

from llm_unlearn.cli import main
from llm_unlearn.errors import UnlearnError
from llm_unlearn.unlearn import build_config, run_unlearning


def test_unknown_method(target_dir, synthetic_dir, tmp_path, capsys):
    with pytest.raises(UnlearnError, match="unknown method 'forgetful'; valid methods: grad_ascent, grad_diff, npo"):
        run_unlearning(str(target_dir), synthetic_dir, tmp_path / "out", method="forgetful")
    assert not (tmp_path / "out").exists()  # nothing created
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "forgetful",
               "--output", str(tmp_path / "out")])
    assert rc == 2
    assert "error: unknown method 'forgetful'" in capsys.readouterr().err


def test_empty_forget_split(target_dir, synthetic_dir, tmp_path, make_trainer, unlearn_data):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    (data / "forget10.jsonl").write_text("")
    with pytest.raises(UnlearnError, match="forget10.*empty"):
        run_unlearning(str(target_dir), data, tmp_path / "out", method="npo")
    from llm_unlearn.data.pairing import ForgetRetainDataset

    with pytest.raises(UnlearnError, match="forget set is empty"):
        ForgetRetainDataset(unlearn_data.forget.select([]), unlearn_data.retain)


def test_tokenizer_without_eos(make_trainer, unlearn_data):
    import copy

    tok = copy.deepcopy(unlearn_data.tokenizer)
    tok.eos_token = None
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    args = NPOConfig(output_dir="unused", use_cpu=True, report_to="none")
    with pytest.raises(UnlearnError, match="no eos_token"):
        NPOTrainer(model=None, args=args, train_dataset=ForgetRetainDataset(unlearn_data.forget, unlearn_data.retain),
                   processing_class=tok)
    with pytest.raises(UnlearnError, match="processing_class"):
        NPOTrainer(model=None, args=args, train_dataset=ForgetRetainDataset(unlearn_data.forget, unlearn_data.retain))


def test_model_dir_without_tokenizer(target_dir, synthetic_dir, tmp_path):
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(target_dir / name, model_only / name)
    with pytest.raises(UnlearnError, match="has no tokenizer"):
        run_unlearning(str(model_only), synthetic_dir, tmp_path / "out", method="grad_ascent")


def test_method_needs_retain_split(make_trainer, unlearn_data):
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.trainers import GradDiffConfig, GradDiffTrainer

    args = GradDiffConfig(output_dir="unused", use_cpu=True, report_to="none")
    with pytest.raises(UnlearnError, match="alpha > 0 needs a retain split"):
        GradDiffTrainer(model=None, args=args, train_dataset=ForgetRetainDataset(unlearn_data.forget, None),
                        processing_class=unlearn_data.tokenizer)


@pytest.mark.parametrize("method,fields,message", [
    ("grad_ascent", {"beta": 0.1}, "unknown config field.*grad_ascent: beta"),
    ("npo", {"beta": 0.0}, "beta must be > 0"),
    ("npo", {"retain_loss_type": "mse"}, "retain_loss_type must be one of nll, kl"),
    ("simnpo", {"alpha": -1.0}, "alpha and gamma must be >= 0"),
])
def test_bad_config_fields(method, fields, message):
    with pytest.raises(UnlearnError, match=message):
        build_config(method, fields, output_dir="unused")


def test_rmu_bad_layers(make_trainer):
    with pytest.raises(UnlearnError, match="layer must be in 0..3"):
        make_trainer("rmu", layer=9)
    with pytest.raises(UnlearnError, match="update_layers must be within 0..1"):
        make_trainer("rmu", layer=1, update_layers="1,2")


def test_config_file_for_another_method(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("method: simnpo\nbeta: 2.0\n")
    with pytest.raises(UnlearnError, match="config is for method 'simnpo'"):
        build_config("npo", cfg, output_dir="unused")
    with pytest.raises(UnlearnError, match="config file not found"):
        build_config("npo", tmp_path / "missing.yaml")
