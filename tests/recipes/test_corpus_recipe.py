"""recipes/wagle_zephyr.py with recipes/configs/wagle_zephyr_wmdp.yaml (NPO + WAGLE on corpora,
lm-eval scoring) on the tiny model and the offline synthetic domain."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _run(args: list[str], monkeypatch) -> int:
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.setattr(sys, "argv", ["wagle_zephyr.py", "--config",
                                      str(RECIPES / "configs" / "wagle_zephyr_wmdp.yaml"), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPES / "wagle_zephyr.py"), run_name="__main__")
    return exit_info.value.code


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer):
    from llm_unlearn.models import build_tiny_model

    d = tmp_path_factory.mktemp("tiny")
    build_tiny_model(tiny_tokenizer, seed=0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def test_wmdp_config_on_tiny_with_offline_domain(tiny_dir, tmp_path, monkeypatch):
    from llm_unlearn.data.domain import generate_domain, write_domain
    from llm_unlearn.masks import load_mask

    dom = write_domain(generate_domain(4, seed=0), tmp_path / "domain")
    out = tmp_path / "run"
    rc = _run(["--model_name_or_path", str(tiny_dir), "--forget_corpus", str(dom / "forget_corpus.jsonl"),
               "--retain_corpus", str(dom / "retain_corpus.jsonl"), "--max_length", "32", "--max_steps", "2",
               "--dtype", "float32", "--bf16", "false", "--gradient_checkpointing", "false",
               "--lm_eval_tasks", "synth_domain,synth_general", "--lm_eval_include", str(dom / "tasks"),
               "--output_dir", str(out)], monkeypatch)
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["forget_corpus"].endswith("forget_corpus.jsonl") and run["data"] is None
    assert run["forget_items"] == 4 and run["max_windows_per_doc"] == 1  # the config's WMDP truncation
    assert run["hyperparameters"]["mask_ratio"] == 0.6 and run["hyperparameters"]["learning_rate"] == 1e-5
    assert load_mask(out / "mask.safetensors").density() == pytest.approx(0.6, abs=0.01)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["lm_eval"]["synth_domain"]["n"] == 24
    assert 0.0 <= summary["lm_eval"]["synth_general"]["acc"] <= 1.0
    assert "verbatim_memorisation" in summary


def test_wmdp_config_refuses_qa_and_corpus_mixed(tiny_dir, tmp_path, monkeypatch, capsys, synthetic_dir):
    rc = _run(["--model_name_or_path", str(tiny_dir), "--data", str(synthetic_dir), "--forget_split", "forget05",
               "--bf16", "false", "--output_dir", str(tmp_path / "x")], monkeypatch)
    assert rc == 2
    assert "cannot be mixed" in capsys.readouterr().err
