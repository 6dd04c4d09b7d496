"""Names the parsers offer as choices, written out so that building a parser imports no torch.
`tests/test_cli_console.py` checks them against the library (`llm_unlearn.trainers.METHODS`,
`llm_unlearn.masks`): a new method or mask score must be added here too."""

from __future__ import annotations

UNLEARN_METHODS = ("grad_ascent", "grad_diff", "npo", "npo_sam", "simnpo", "idk_dpo", "rmu")
MASK_METHODS = ("wagle", "random", "magnitude", "salun", "wanda")
MASK_SCOPES = ("global", "per_layer", "per_row", "all")
MASK_GRANULARITIES = ("element", "row")
MASK_DEFAULT_GAMMA = 1e-3
