"""NPO (+ retain term) unlearning on TOFU (Zhang et al., 2024, eq. 3; NPO+RT with alpha > 0).

    python recipes/npo_tofu.py --config recipes/configs/npo_tofu.yaml
    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 4 \
        recipes/npo_tofu.py --config recipes/configs/npo_tofu.yaml --use_lora true
"""

import sys

from _common import main

from llm_unlearn.trainers import NPOConfig, NPOTrainer

if __name__ == "__main__":
    sys.exit(main(NPOTrainer, NPOConfig))
