"""Finetune the TOFU target (on `full`) or retain model (on `retainXX`), full weights, LoRA or
QLoRA, answer-only loss (TOFU, Maini et al., 2024, Sec. 3), then evaluate it into OUTPUT/eval.
The retain model's ``eval/per_item.json`` is the ``retain_logs`` the unlearning recipes need for
forget quality.

    python recipes/finetune_tofu.py --config recipes/configs/finetune_tofu.yaml                 # target
    python recipes/finetune_tofu.py --config recipes/configs/finetune_tofu.yaml \
        --split retain90 --output_dir runs/retain                                                  # retain
    python recipes/finetune_tofu.py --config recipes/configs/finetune_tofu.yaml \
        --model_name_or_path tiny --data data/synth --output_dir runs/tiny-target --lr 3e-3 --epochs 15
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields, make_dataclass

from _common import EvalArguments, UnlearnError, run_evaluation

from llm_unlearn.finetune import FinetuneConfig

# Recipe-wide names for the library's fields (every recipe takes --model_name_or_path / --output_dir).
RENAMED = {"model": "model_name_or_path", "output": "output_dir", "lora": "use_lora"}


@dataclass
class FinetuneRecipeArguments:
    overwrite_output: bool = field(default=False, metadata={"help": "replace a non-empty output_dir"})


def _arguments():
    """`FinetuneConfig`'s fields under the recipe names, plus the output and evaluation options."""
    renamed = [(RENAMED.get(f.name, f.name), f.type, field(default=f.default, metadata=f.metadata))
               for f in fields(FinetuneConfig)]
    return make_dataclass("FinetuneArguments", renamed), FinetuneRecipeArguments, EvalArguments


def main() -> int:
    import torch
    from trl import TrlParser

    from llm_unlearn.finetune import build_model_for_finetune, finetune

    lib, extra, ev = TrlParser(_arguments()).parse_args_and_config()
    inverse = {v: k for k, v in RENAMED.items()}
    cfg = FinetuneConfig(**{inverse.get(k, k): v for k, v in vars(lib).items()})
    try:
        from llm_unlearn.data.tofu import load_tofu

        load_tofu(cfg.split, cfg.data)  # a wrong split or source fails before the output exists
        from llm_unlearn.outputs import staged_dir

        inputs = [cfg.data, None if cfg.model == "tiny" else cfg.model]
        with staged_dir(cfg.output, extra.overwrite_output, inputs) as stage:
            cfg.output = str(stage.path)  # written beside the output, moved into place at the end
            model, tokenizer = build_model_for_finetune(cfg)
            finetune(cfg, model=model, tokenizer=tokenizer)
            if ev.run_eval:
                with torch.no_grad():
                    run_evaluation(model, tokenizer, cfg.data, stage.path, ev)
        out = stage.final
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved finetuned model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
