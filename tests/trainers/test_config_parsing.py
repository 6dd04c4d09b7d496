"""Method configs parse from the command line and YAML with transformers' HfArgumentParser and TRL's
TrlParser (the recipes' parser), including ``report_to``."""

from __future__ import annotations

import pytest

from llm_unlearn.trainers import METHODS, NPOConfig


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hf_argument_parser_builds_every_method_config(method, tmp_path):
    from transformers import HfArgumentParser

    _, config_cls = METHODS[method]
    (cfg,) = HfArgumentParser(config_cls).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--learning_rate", "3e-4", "--report_to", "tensorboard"])
    assert type(cfg) is config_cls and cfg.learning_rate == 3e-4 and cfg.report_to == ["tensorboard"]


def test_npo_config_from_flags_and_default_report_to(tmp_path):
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(NPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--beta", "0.3", "--alpha", "0"])
    assert (cfg.beta, cfg.alpha) == (0.3, 0.0)
    assert cfg.report_to == []  # the default "none": no integration


def test_trl_parser_reads_yaml_config_and_flags(tmp_path):
    from trl import TrlParser

    yaml_file = tmp_path / "npo.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'out'}\nbeta: 0.25\nreport_to: none\nuse_cpu: true\n")
    (cfg,) = TrlParser((NPOConfig,)).parse_args_and_config(
        args=["--config", str(yaml_file), "--gamma", "2.0", "--report_to", "tensorboard"])
    assert type(cfg) is NPOConfig
    assert (cfg.beta, cfg.gamma, cfg.report_to) == (0.25, 2.0, ["tensorboard"])
