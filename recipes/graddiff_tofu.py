"""Gradient Difference unlearning on TOFU (Liu et al., 2022; TOFU baseline, Maini et al., 2024).

    python recipes/graddiff_tofu.py --config recipes/configs/graddiff_tofu.yaml
    python recipes/graddiff_tofu.py --config recipes/configs/graddiff_tofu.yaml \
        --model_name_or_path runs/tiny-target --data data/synth --output_dir runs/tiny-graddiff
"""

import sys

from _common import main

from llm_unlearn.trainers import GradDiffConfig, GradDiffTrainer

if __name__ == "__main__":
    sys.exit(main(GradDiffTrainer, GradDiffConfig))
