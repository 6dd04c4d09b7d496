"""The configuration of `llm_unlearn.tune` (one field per `llm-unlearn tune` flag), in a module of
its own so that building the command's parser imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_unlearn.data.protocol import DEFAULT_PROTOCOL

TUNABLE_METHODS = ("grad_diff", "npo", "simnpo", "rmu")
# the (LOW, HIGH) search ranges of TuneConfig: tuples, validated alike (None: the method's own range)
RANGE_FIELDS = ("lr_lora", "lr_full", "lr_rmu", "beta_range", "alpha_range")
MASK_CHOICES = ("none", "wagle", "random")


@dataclass
class TuneConfig:
    model: str = field(metadata={"help": "finetuned model to unlearn (directory, alias or Hub id)"})
    output: str = field(metadata={"help": "output directory: chosen/, trials/, trials.json, trials.png, tune.json"})
    data: str | None = field(default=None, metadata={"help": "TOFU-schema data source (local directory or Hub "
                                                             "dataset); or tune on corpora with --forget-corpus"})
    method: str = field(default="npo", metadata={"help": f"unlearning method: {', '.join(TUNABLE_METHODS)}"})
    forget_split: str | None = field(default=None, metadata={"help": "split to forget (default forget10)"})
    retain_split: str | None = field(default=None, metadata={"help": "split to keep (default: the matching retainXX)"})
    trials: int = field(default=8, metadata={"help": "finished trials (runs) the output ends with; with "
                                                     "--resume, those already in it count"})
    max_steps: int = field(default=40, metadata={"help": "training-step budget per trial (the search samples "
                                                         "between half of it and all of it)"})
    eval_every: int = field(default=10, metadata={"help": "score HFQ and the utility proxy every k steps"})
    patience: int = field(default=2, metadata={"help": "stop a trial after this many scorings without a better "
                                                       "step (0: never stop early)"})
    patience_warmup: float = field(default=0.5, metadata={
        "help": "patience never stops a trial before this fraction of its steps (a warm-up, as Optuna's "
                "n_warmup_steps): NPO's utility dips before the retain term pulls it back, RMU's forget scores "
                "move only after some steps; 0: patience from the first scoring"})
    utility_floor: float = field(default=0.95, metadata={"help": "constraint: utility proxy >= this x the "
                                                                 "starting model's"})
    utility_rule: str = field(default="mean", metadata={"help": "mean: the utility proxy (harmonic mean of its "
                                                               "terms) >= floor x start's; each: every term (QA: "
                                                               "probability and truth ratio on retain, real "
                                                               "authors, world facts) >= floor x its start value, "
                                                               "so a drop in one large term is not hidden"})
    hfq_level: float = field(default=1.0, metadata={
        "help": "1: the step with the highest HFQ wins. Below 1: every step whose HFQ reaches this level counts "
                "as unseen alike, and the one among them that forgets most wins (forget items' mean familiarity "
                "furthest below the holdout items'), e.g. 0.1 for hazardous knowledge, where forgetting more is "
                "the safe side; 0: the most forgetting the utility floor allows"})
    hfq_reference: str = field(default="start", metadata={
        "help": "what the forget items' truth ratios are compared with at each scoring: start (the holdout items' "
                "truth ratios under the starting model, scored once: what a model that never saw the forget data "
                "gives unseen items, unmoved by the unlearning's own drift on every item of that kind) or current "
                "(the holdout items under the model being scored, rescored every time)"})
    score_items: int = field(default=40, metadata={"help": "forget and holdout items (corpus: documents) scored "
                                                           "for HFQ"})
    holdout_items: int | None = field(default=None, metadata={
        "help": "holdout items scored for HFQ (default: with --hfq-reference start, max(3 x --score-items, 200), "
                "spread over the holdout's authors, as `eval` reads them; they are scored once, on the starting "
                "model, so the larger holdout (less noise on its side of the KS test) costs one scoring; with "
                "current, --score-items)"})
    utility_items: int = field(default=20, metadata={"help": "items per utility split (retain items left out of "
                                                             "training, real authors, world facts; corpus: retain "
                                                             "documents left out of training)"})
    modes: str = field(default="lora,full", metadata={"help": "comma list of lora, full: the modes searched"})
    masks: str = field(default="none", metadata={"help": "comma list of none, wagle, random: the masks searched"})
    lr_lora: tuple[float, float] = field(default=(1e-4, 3e-3), metadata={"help": "learning-rate range with LoRA (log)"})
    lr_full: tuple[float, float] = field(default=(3e-6, 1e-4), metadata={"help": "learning-rate range with full weights (log)"})
    lr_rmu: tuple[float, float] = field(default=(1e-5, 1e-3), metadata={"help": "learning-rate range of RMU with full "
                                                                           "weights (it trains three MLP "
                                                                           "down-projections; log)"})
    beta_range: tuple[float, float] | None = field(default=None, metadata={
        "help": "beta range searched (log), NPO and SimNPO (default NPO 0.01-1, SimNPO 0.5-5); NPO's gradient "
                "on a sequence fades as exp(beta x its log-likelihood drop), so a small beta keeps pushing longer "
                "(towards gradient ascent)"})
    alpha_range: tuple[float, float] | None = field(default=None, metadata={
        "help": "alpha range searched (log): the retain term's weight (NPO, SimNPO, GradDiff: 0.3-3 by default; "
                "RMU: its activation-matching weight, 30-3000); LOW = HIGH fixes it"})
    batch_size: int = field(default=4, metadata={"help": "forget (and retain) items per step"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2r)"})
    optim: str | None = field(default=None, metadata={"help": "optimizer (TrainingArguments.optim; default AdamW)"})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default: sqlite:///OUTPUT/study.db)"})
    study_name: str | None = field(default=None, metadata={"help": "study name (default tune-METHOD-FORGET_SPLIT)"})
    seed: int = field(default=0, metadata={"help": "training seed; the sampler's seed is derived from it and the "
                                                   "search (method, modes, masks), so searches differ"})
    default_trials: bool = field(default=True, metadata={"help": "start a new study with one trial per searched "
                                                                 "mode at the library's defaults (unlearn's per-mode "
                                                                 "lr, the method's beta and alpha, the whole step "
                                                                 "budget); then the TPE sampler"})
    guided: bool = field(default=False, metadata={
        "help": "after a trial whose chosen step's forget items stopped short of unseen items' or overshot them "
                "(the forgetting direction), run the next one at the same point with NPO's beta (other methods: "
                "the learning rate) moved the other way, bisected on a log scale between the closest earlier "
                "trials of each verdict, instead of a TPE draw"})
    protocol: str = field(default=DEFAULT_PROTOCOL, metadata={"help": "prompt / tokenisation protocol of training, "
                                                                       "scoring and the final evaluation"})
    holdout_split: str | None = field(default=None, metadata={"help": "holdout split (default holdoutXX)"})
    max_authors: int | None = field(default=None, metadata={"help": "model trained on the first N authors: holdout = the others"})
    retain_logs: str | None = field(default=None, metadata={"help": "retain model's eval logs: read only after the "
                                                                    "search, to report the chosen run's true FQ"})
    final_eval: bool = field(default=True, metadata={"help": "evaluate the chosen run (with generation) at the end"})
    eval_max_items: int | None = field(default=None, metadata={"help": "items per split in the final evaluation"})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "generation length in the final evaluation"})
    keep_full_models: bool = field(default=False, metadata={"help": "keep the weights of full-weight trials that "
                                                                    "were not chosen (large)"})
    forget_corpus: str | None = field(default=None, metadata={"help": "corpus to forget (.txt, .jsonl with "
                                                                      "'text', or NAME[:CONFIG[:SPLIT]]), "
                                                                      "instead of --data/--forget-split"})
    retain_corpus: str | None = field(default=None, metadata={"help": "corpus to keep (with --forget-corpus); its "
                                                                      "first --utility-items documents are held out "
                                                                      "of training for the utility proxy"})
    holdout_corpus: str | None = field(default=None, metadata={"help": "documents of the forget corpus's kind the "
                                                                       "model never trained on (with --forget-corpus):"
                                                                       " the holdout side of the forget quality"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per corpus window / QA item (default: "
                                                                    "the method's max_length)"})
    progress: bool = field(default=True, metadata={"help": "progress lines"})
