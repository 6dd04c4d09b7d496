"""IdK-DPO (Maini et al., 2024, TOFU §4 "Preference Optimization"; Rafailov et al., 2023, DPO eq. 7):
prefer a refusal answer y_w ("I don't know …", drawn per forget item from a refusal list) over
the forget answer y_l:

    L = γ·E_forget[−log σ(β·[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))])]
        + α·R(retain)"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.data.qa import encode_qa
from llm_unlearn.data.tofu import read_refusals
from llm_unlearn.errors import UnlearnError
from llm_unlearn.scoring import sequence_logprobs
from llm_unlearn.trainers.base import QA_KEYS, RetainRegularisedConfig, UnlearnTrainer
from llm_unlearn.trainers.losses import dpo_loss


@dataclass
class IdkDPOConfig(RetainRegularisedConfig):
    """DPO towards a refusal + retain term."""

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature β (> 0)"})
    refusals_file: str | None = field(default=None, metadata={"help": "text file, one refusal answer per line (default: idontknow.txt of the data source, else the built-in list)"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise UnlearnError(f"beta must be > 0, got {self.beta}")


def read_refusal_file(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UnlearnError(f"refusals file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UnlearnError(f"refusals file {p} has no non-empty line")
    return lines


class IdkDPOTrainer(UnlearnTrainer):
    method = "idk_dpo"
    uses_retain = True
    reference_prefixes = ("", "idk_")

    def __init__(self, *args, refusals: list[str] | None = None, **kwargs):
        self.refusals = refusals
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        """Add ``idk_input_ids/idk_labels/idk_attention_mask``: the forget question with a refusal answer."""
        forget = self.train_dataset.forget
        if "idk_input_ids" in forget.column_names:
            return
        if self.refusals is None:
            self.refusals = read_refusal_file(self.args.refusals_file) if self.args.refusals_file else read_refusals(None)
        if not self.refusals:
            raise UnlearnError("idk_dpo: the refusal list is empty")
        if "question" not in forget.column_names:
            raise UnlearnError("idk_dpo: the tokenised forget set needs its 'question' text column")
        rng = random.Random(self.args.seed)
        encoded = [encode_qa(self.processing_class, q, rng.choice(self.refusals), self.args.max_length)
                   for q in forget["question"]]
        for key in QA_KEYS:
            forget = forget.add_column(f"idk_{key}", [e[key] for e in encoded])
        self.train_dataset.forget = forget

    def unlearn_loss(self, model, inputs, counts):
        forget, idk = inputs["forget"], inputs["idk"]
        ref_rejected = self.reference_logprobs(model, forget)  # no-grad passes before any graph is held
        ref_chosen = self.reference_logprobs(model, idk)
        rejected, _ = sequence_logprobs(model, forget)
        chosen, n_idk = sequence_logprobs(model, idk)
        dpo = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.args.beta).sum() / counts["forget_items"]
        loss = self.args.gamma * dpo
        terms = {
            "dpo": dpo,
            "forget_nll": -rejected.sum() / counts["forget_tokens"].clamp(min=1),
            "idk_nll": -(chosen / n_idk.clamp(min=1)).sum() / counts["forget_items"],
        }
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
