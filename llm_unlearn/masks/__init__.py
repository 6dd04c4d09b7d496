"""Weight attribution masks: decide which weights unlearning may change before it starts
(WAGLE, Jia et al. NeurIPS 2024; baselines random / magnitude / SalUn / Wanda), and enforce the
decision during training for full weights and LoRA.

    mask = compute_mask(model, forget_loader, retain_loader, method="wagle", ratio=0.8)
    mask.save("mask.safetensors"); print(mask.summary())
    attach_mask(trainer, load_mask("mask.safetensors"))   # from UnlearnTrainer.__init__
"""

from llm_unlearn.masks.enforce import MaskEnforcer, attach_mask, enforce_mask
from llm_unlearn.masks.scores import DEFAULT_GAMMA, METHODS, compute_scores, default_loss, find_targets
from llm_unlearn.masks.select import GRANULARITIES, SCOPES, check_ratio, compute_mask, select_mask
from llm_unlearn.masks.weight_mask import WeightMask, base_param_name, load_mask, named_base_parameters

__all__ = [
    "DEFAULT_GAMMA", "GRANULARITIES", "METHODS", "SCOPES", "MaskEnforcer", "WeightMask", "attach_mask",
    "base_param_name", "check_ratio", "compute_mask", "compute_scores", "default_loss", "enforce_mask",
    "find_targets", "load_mask", "named_base_parameters", "select_mask",
]
