"""IdK-DPO (Maini et al., 2024, TOFU §4 "Preference Optimization"; Rafailov et al., 2023, DPO eq. 7):
prefer a refusal answer y_w ("I don't know …", drawn per forget item from a refusal list) over
the forget answer y_l:

    L = γ·E_forget[−(2/β)·log σ(β·[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))])]
        + α·R(retain)

The 2/β factor is TOFU's and open-unlearning's (``compute_dpo_loss``); without it (``dpo_scale:
one``, eq. 7 as written) the retain term weighs β/2 times less relative to the forget term
(at β = 0.1, 20× more retain). The refusal of each forget item is drawn again every epoch
(seeded), as the references draw one per access."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

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
    dpo_scale: str = field(default="2/beta", metadata={"help": "factor on the DPO term: 2/beta (TOFU, open-unlearning) or one (Rafailov et al. eq. 7)"})
    refusals_file: str | None = field(default=None, metadata={"help": "text file, one refusal answer per line (default: idontknow.txt of the data source, else the built-in list)"})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise UnlearnError(f"beta must be > 0, got {self.beta}")
        if self.dpo_scale not in ("2/beta", "one"):
            raise UnlearnError(f"dpo_scale must be 2/beta or one, got '{self.dpo_scale}'")


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
        """Per epoch, one draw ``idk_input_ids/idk_labels/idk_attention_mask``: each forget
        question with a refusal drawn from the list (seeded by seed and epoch; one draw for the
        run with ``resample_pairs: false``), as the dataset's ``forget_variants``."""
        forget = self.train_dataset.forget
        if "idk_input_ids" in forget.column_names or getattr(self.train_dataset, "forget_variants", None):
            return
        if self.refusals is None:
            self.refusals = read_refusal_file(self.args.refusals_file) if self.args.refusals_file else read_refusals(None)
        if not self.refusals:
            raise UnlearnError("idk_dpo: the refusal list is empty")
        if "question" not in forget.column_names:
            raise UnlearnError("idk_dpo: the tokenised forget set needs its 'question' text column")
        draws = self.epochs_planned() if self.args.resample_pairs else 1
        variants = []
        for epoch in range(draws):
            rng = random.Random(self.args.seed if epoch == 0 else f"{self.args.seed}:idk:{epoch}")
            encoded = [encode_qa(self.processing_class, q, rng.choice(self.refusals), self.args.max_length,
                                 self.args.protocol) for q in forget["question"]]
            variants.append(Dataset.from_dict({f"idk_{key}": [e[key] for e in encoded] for key in QA_KEYS}))
        self.train_dataset.forget_variants = variants

    def one_graph_parts(self) -> tuple[str, ...]:
        return ("forget", "idk", *super().one_graph_parts()[1:])

    def unlearn_loss(self, model, inputs, counts):
        forget, idk = inputs["forget"], inputs["idk"]
        ref_rejected = self.reference_logprobs(model, forget)  # no-grad passes before any graph is held
        ref_chosen = self.reference_logprobs(model, idk)
        rejected, _ = sequence_logprobs(model, forget)
        chosen, n_idk = sequence_logprobs(model, idk)
        scale = 2.0 / self.args.beta if self.args.dpo_scale == "2/beta" else 1.0
        dpo = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.args.beta, scale).sum() / counts["forget_items"]
        loss = self.args.gamma * dpo
        terms = {
            "dpo": dpo,
            "forget_nll": -rejected.sum() / counts["forget_tokens"].clamp(min=1),
            "idk_nll": -(chosen / n_idk.clamp(min=1)).sum() / counts["forget_items"],
        }
        return self.add_retain_term(model, inputs, counts, loss, terms), terms
