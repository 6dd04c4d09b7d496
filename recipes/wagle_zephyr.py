"""NPO + WAGLE (Jia et al., NeurIPS 2024) over LoRA on HuggingFaceH4/zephyr-7b-beta, TOFU forget10:
score weights, keep the top mask_ratio as may-change, unlearn through a masked LoRA, evaluate, push.

    python recipes/wagle_zephyr.py --config recipes/configs/wagle_zephyr.yaml                   # 1 GPU, bf16 + LoRA
    python recipes/wagle_zephyr.py --config recipes/configs/wagle_zephyr.yaml \
        --model_name_or_path runs/tiny-target --data data/synth --dtype float32 --bf16 false
"""

import sys

from _common import main

from llm_unlearn.trainers import NPOConfig, NPOTrainer

if __name__ == "__main__":
    sys.exit(main(NPOTrainer, NPOConfig))
