"""`tune`: hyperparameter search and stopping-step choice for unlearning *without a retain model*.

Real users have no retain model, so nothing here reads one. Each Optuna trial (Akiba et al., 2019;
TPE sampler, any Optuna storage: a SQLite file by default, a shared RDB URL lets several
machines work on one study) runs `llm_unlearn.unlearn.run_unlearning` with sampled
hyperparameters (learning rate, training steps, β, α, mask method and ratio, LoRA or full
weights). A `BestStepCallback` scores the model every `eval_every` steps on small subsets,
scoring only (no generation):

* the holdout forget quality (HFQ, `llm_unlearn.eval.metrics.holdout_forget_quality`): KS
  p-value between the per-item truth ratios on the forget items and on holdout items about
  entities the model never trained on. By default (``hfq_reference="start"``) the holdout side is
  the holdout items' truth ratios under the *starting* model, scored once: what a model that never
  saw the forget data gives unseen items. The unlearning moves the holdout items too (its retain
  term keeps finetuning on items of the same kind; on the SmolLM2 TOFU benchmark the holdout
  median truth ratio fell from 0.85 to 0.78 in 100 NPO + RT steps), and scored against that moving
  reference a half-forgotten model looked forgotten (``"current"``: rescored every time);
* a utility proxy (`llm_unlearn.eval.metrics.utility_proxy`): probability and truth ratio on
  retain items *left out of training*, real authors and world facts.

On raw-text corpora (`forget_corpus`, `retain_corpus`, `holdout_corpus`: the WMDP / MUSE setting)
the same search runs with the corpus forms of both scores (`llm_unlearn.eval.corpus_scores`):

* the corpus holdout forget quality: KS p-value between the per-window Min-K% Prob scores of
  forget-corpus windows and of holdout-corpus windows (documents of the same kind the model never
  trained on; `llm-unlearn data synth` writes ``domain/holdout_corpus.jsonl``);
* the corpus utility proxy: the geometric-mean token probability on the first `utility_items`
  retain documents, which are left out of the unlearning's retain data.

The objective: maximise HFQ subject to utility proxy >= `utility_floor` x the starting model's.
The callback keeps the best feasible step (ties on the p-value: the smaller KS statistic, then
the smaller distance between the forget and holdout scores, then the higher utility) and restores
it when training ends or stalls (`patience`), so each trial also chooses when to stop. The chosen
run is a copy of the best trial's output (loadable like any ``unlearn`` output); `retain_logs`, if
given, is read only after the search, to report the chosen run's true forget quality.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm
from transformers import TrainerCallback

import llm_unlearn.unlearn as unlearn_mod  # module attributes: tests can watch every run and read
from llm_unlearn.data.corpus import check_corpus_overlap, chunk_corpus, load_corpus
from llm_unlearn.data.protocol import DEFAULT_PROTOCOL, PROTOCOLS
from llm_unlearn.data.source import check_input_kinds
from llm_unlearn.data.tofu import load_tofu
from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval import logs as eval_logs
from llm_unlearn.eval.corpus_scores import score_corpus
from llm_unlearn.eval.evaluator import evaluate_model, holdout_size, score_splits, write_eval
from llm_unlearn.eval.metrics import (
    UTILITY_PROXY_KEYS,
    describe_forgetting,
    forgetting_direction,
    holdout_forget_quality,
)
from llm_unlearn.models import cache_dir, load_tokenizer, resolve_model_path
from llm_unlearn.outputs import check_output, prepare_output_dir
from llm_unlearn.trainers import get_method
from llm_unlearn.tune_config import MASK_CHOICES, RANGE_FIELDS, TUNABLE_METHODS, TuneConfig  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

TUNE_FORMAT = "llm-unlearn-tune-v1"
# --------------------------------------------------------------------------------------------
# the callback


def step_key(rec: dict[str, Any], hfq_level: float = 1.0) -> tuple:
    """Order of scored steps: feasible before infeasible; then higher HFQ, smaller KS statistic,
    smaller `distance` (the Wasserstein-1 distance between the forget and holdout scores), higher
    utility proxy (infeasible ones by utility alone).

    The distance matters while the two sets are still completely separated: the KS p-value and
    statistic then sit at their floor and 1 however far apart the sets are, so without it every
    step of a trial ties with the untouched start, which wins on utility (a search that
    cannot see forgetting until the first forget score crosses a holdout one).

    `hfq_level` < 1: every step whose HFQ reaches it counts as unseen alike (the test cannot tell
    its forget scores from the holdout ones at that level), and among those the one that forgets
    most wins: the smallest `gap` (forget items' mean familiarity minus the holdout items'), then
    the higher utility. Such steps rank above every step under the level. 0: the most forgetting
    the utility floor allows."""
    if not rec["feasible"]:
        return (0, rec["utility_proxy"], 0.0, 0.0, 0.0)
    if hfq_level < 1 and rec["hfq"] >= hfq_level and rec.get("gap") is not None:
        return (1, hfq_level, 1, -rec["gap"], rec["utility_proxy"])
    return (1, min(rec["hfq"], hfq_level), 0, -rec["ks_statistic"], -(rec.get("distance") or 0.0),
            rec["utility_proxy"])


def familiarity_gap(forget: Any, holdout: Any) -> float:
    """Mean familiarity of the forget items minus the holdout items' (0: alike; > 0: the forget
    items are more familiar), from per-item scores where higher means more familiar."""
    forget, holdout = list(forget), list(holdout)
    return float(sum(forget) / len(forget) - sum(holdout) / len(holdout))


def score_distance(forget: Any, holdout: Any) -> float:
    """Wasserstein-1 distance between two samples of per-item scores (truth ratios, Min-K%)."""
    return float(wasserstein_distance(list(forget), list(holdout)))


def _weakest_term(rec: dict[str, Any], start: dict[str, Any]) -> str:
    """``"; lowest term NAME 0.91x"``: the utility term that fell most against its start value."""
    terms, base = rec.get("utility_terms") or {}, start.get("utility_terms") or {}
    ratios = {k: v / base[k] for k, v in terms.items() if base.get(k)}
    if not ratios:
        return ""
    k = min(ratios, key=ratios.get)
    return f"; lowest term {k} {ratios[k]:.2f}x"


def _distance_note(rec: dict[str, Any], start: dict[str, Any]) -> str:
    if rec.get("distance") is None or not start.get("distance"):
        return ""
    return f" (forget-holdout distance {rec['distance'] / start['distance']:.2f}x start)"


# what to change when the chosen step's forget items still differ from unseen ones
# (`forgetting_direction`; the two-sided HFQ cannot say which way)
DIRECTION_HINTS = {
    "short": ": give the search room to go further (more --trials, a larger --max-steps, a higher --lr-lora / "
             "--lr-full range, or for NPO a lower --beta-range)",
    "overshot": ": the forgetting ran past unseen items' level before the step the search kept; score more "
                "often (--eval-every) or search a lower learning-rate range",
}


def objective_value(rec: dict[str, Any], start: dict[str, Any], hfq_level: float = 1.0) -> float:
    """What a trial reports to Optuna (maximised): log10 HFQ, minus the KS statistic, minus the
    distance as a fraction of the start's. The chosen trial is picked by `step_key`; this scalar
    only guides the sampler, and it keeps changing while the p-value sits at its floor. With
    `hfq_level` < 1, a step at the level scores log10(level) plus its drop in `gap` as a fraction
    of the start's (above every step under the level while it forgets)."""
    if hfq_level < 1 and rec["hfq"] >= hfq_level and rec.get("gap") is not None and start.get("gap"):
        return math.log10(max(hfq_level, 1e-300)) + (start["gap"] - rec["gap"]) / abs(start["gap"])
    value = math.log10(max(min(rec["hfq"], hfq_level), 1e-300)) - rec["ks_statistic"]
    if start.get("distance"):
        value -= (rec.get("distance") or 0.0) / start["distance"]
    return value


class BestStepCallback(TrainerCallback):
    """Scores the model every `every` optimizer steps with `score_fn(model) -> {"hfq",
    "ks_statistic", "utility_proxy"}`, keeps a copy of the trainable weights at the best step
    (`step_key`; feasible = utility proxy >= `utility_min`), stops training after `patience`
    scorings without improvement (0: never), and restores the best weights when training ends.

    `warmup_steps`: patience never stops training before this step (Optuna's ``n_warmup_steps``):
    a method whose utility first dips and then recovers (NPO + RT: the retain term pulls it back),
    or whose forget scores move only after some steps (RMU), is not judged by its first scorings.

    `initial`: the scores of the starting model (step 0), when known (saves one scoring); the
    starting model is always a candidate, so a trial that only hurts restores it.

    `on_record`: called with each scored step's record (after `feasible` is set), e.g. to report
    progress or append it to a log while the trial runs."""

    def __init__(self, score_fn: Callable[[Any], dict[str, float]], every: int, utility_min: float,
                 patience: int = 0, initial: dict[str, float] | None = None,
                 term_min: dict[str, float] | None = None, warmup_steps: int = 0, hfq_level: float = 1.0,
                 on_record: Callable[[dict[str, Any]], None] | None = None):
        if every < 1:
            raise UnlearnError(f"eval_every must be >= 1, got {every}")
        self.hfq_level = hfq_level  # see `step_key`
        self.score_fn, self.every, self.utility_min, self.patience = score_fn, every, utility_min, patience
        self.warmup_steps = warmup_steps
        self.term_min = term_min  # the "each" rule: every utility term >= its own floor
        self.initial = initial
        self.on_record = on_record
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._weights: dict[str, Any] | None = None
        self._stale = 0
        self.stopped_early = False

    @staticmethod
    def _trainable(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _record(self, step: int, model, scores: dict[str, float] | None = None) -> None:
        scores = scores if scores is not None else self.score_fn(model)
        rec = {"step": step, "hfq": float(scores["hfq"]), "ks_statistic": float(scores["ks_statistic"]),
               "utility_proxy": float(scores["utility_proxy"])}
        for key in ("distance", "gap"):
            if scores.get(key) is not None:
                rec[key] = float(scores[key])
        if scores.get("direction"):
            rec["direction"] = scores["direction"]
        if self.term_min is None:
            rec["feasible"] = rec["utility_proxy"] >= self.utility_min
        else:
            terms = scores.get("utility_terms") or {}
            rec["feasible"] = all(terms.get(k, float("-inf")) >= v for k, v in self.term_min.items())
        for key in ("forget_truth_ratios", "holdout_truth_ratios", "forget_nll", "holdout_nll", "retain_nll", "utility_terms"):  # kept for later analysis
            if key in scores:  # (never compared with a retain model here)
                rec[key] = scores[key]
        self.history.append(rec)
        if self.on_record is not None:
            self.on_record(rec)
        if self.best is None or step_key(rec, self.hfq_level) > step_key(self.best, self.hfq_level):
            self.best = rec
            self._weights = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable(model).items()}
            self._stale = 0
        else:
            self._stale += 1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.history:
            self._record(0, model, self.initial)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(state.global_step, model)
            if self.patience and self._stale >= self.patience and state.global_step >= self.warmup_steps:
                self.stopped_early = True
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.history and self.history[-1]["step"] != state.global_step:
            self._record(state.global_step, model)
        if self._weights is not None:
            with torch.no_grad():
                for n, p in self._trainable(model).items():
                    p.copy_(self._weights[n].to(p.device))
        self._weights = None


# --------------------------------------------------------------------------------------------
# scoring subsets


def scoring_rows(cfg: TuneConfig) -> tuple[dict[str, list[dict]], str | None]:
    """The subsets every scoring uses: forget and holdout items (HFQ; with the start reference, as many
    holdout items as an evaluation reads, else as many as forget items), and the utility items —
    the first retain items with perturbed answers (left out of training), real authors, world
    facts. `UnlearnError` when there is no holdout set with perturbed answers."""
    # the holdout under the start is scored once: as many items as an evaluation reads (`holdout_size`)
    n_hold = cfg.holdout_items or (holdout_size(cfg.score_items) if cfg.hfq_reference == "start" else None)
    rows, reason = unlearn_mod.hfq_rows(cfg.data, cfg.forget_split, cfg.score_items, cfg.holdout_split, cfg.max_authors,
                                        holdout_items=n_hold)
    if rows is None:
        raise UnlearnError(f"tune needs forget and holdout items with perturbed answers: {reason}")
    forget_q = {r["question"] for r in rows["forget"]}
    retain = [r for r in load_tofu("retain_perturbed", cfg.data).to_list() if r["question"] not in forget_q]
    rows["retain"] = retain[:cfg.utility_items]
    for split in ("real_authors", "world_facts"):
        rows[split] = load_tofu(f"{split}_perturbed", cfg.data, max_items=cfg.utility_items).to_list()
    return rows, None


START_CACHE_VERSION = 1  # bump when the start's scores change meaning


def start_cache_path(cfg: TuneConfig, rows: dict[str, list[dict]]) -> Path | None:
    """Where the starting model's scores on `rows` are cached across searches
    (``$LLM_UNLEARN_CACHE/tune_start/KEY.json``, or ``$LLM_UNLEARN_TUNE_START_CACHE/KEY.json``):
    keyed by the model directory's files (path, size, modification time), the scored items, the
    protocol and the batch size, so a search of another method, budget or seed on the same model
    and items skips that scoring (6-9 min for SmolLM2 on 80 + 80 + 3 x 40 items on one core). None
    for a model that is not a local directory."""
    try:
        model_dir = Path(resolve_model_path(cfg.model))
    except Exception:  # a Hub id not downloaded yet: nothing to key on
        return None
    if not model_dir.is_dir():
        return None
    files = [(str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(model_dir.rglob("*")) if p.is_file() and "eval" not in p.relative_to(model_dir).parts]
    payload = {"version": START_CACHE_VERSION, "model": str(model_dir.resolve()), "files": files, "rows": rows,
               "protocol": cfg.protocol, "batch_size": cfg.batch_size}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    root = os.environ.get("LLM_UNLEARN_TUNE_START_CACHE") or cache_dir() / "tune_start"
    return Path(root) / f"{key}.json"


def make_scorer(rows: dict[str, list[dict]], tokenizer, batch_size: int, protocol: str = DEFAULT_PROTOCOL,
                holdout_ratios: list[float] | None = None) -> Callable[[Any], dict[str, float]]:
    """`score(model)`: HFQ and the utility proxy on `rows`. With `holdout_ratios` (the holdout items'
    truth ratios under the starting model: ``hfq_reference="start"``) the holdout items are not
    scored again; the forget items' truth ratios are compared with those."""
    if holdout_ratios is not None:
        rows = {k: v for k, v in rows.items() if k != "holdout"}

    def score(model) -> dict[str, float]:
        summary = score_splits(model, tokenizer, rows, batch_size=batch_size, protocol=protocol)
        m = summary["metrics"]
        tr = dict(summary["truth_ratios"])
        if holdout_ratios is not None and tr.get("forget"):
            tr["holdout"] = list(holdout_ratios)
            ks = holdout_forget_quality(tr["forget"], tr["holdout"])
            m = {**m, "holdout_forget_quality": ks["pvalue"], "holdout_forget_quality_ks_statistic": ks["statistic"]}
        if m.get("holdout_forget_quality") is None or m.get("utility_proxy") is None:
            raise UnlearnError("scoring gave no holdout forget quality / utility proxy (check the data's splits)")
        terms = {k: m[k] for k in UTILITY_PROXY_KEYS}
        return {"hfq": m["holdout_forget_quality"], "ks_statistic": m["holdout_forget_quality_ks_statistic"],
                "distance": score_distance(tr["forget"], tr["holdout"]) if tr.get("holdout") else None,
                # truth ratio R = P(perturbed) / P(correct): a known answer has a small R, so -log R is familiarity
                "gap": familiarity_gap([-math.log(max(r, 1e-300)) for r in tr["forget"]],
                                       [-math.log(max(r, 1e-300)) for r in tr["holdout"]]) if tr.get("holdout") else None,
                "direction": forgetting_direction(tr["forget"], tr["holdout"])["verdict"] if tr.get("holdout") else None,
                "utility_proxy": m["utility_proxy"], "forget_truth_ratios": tr["forget"],
                "utility_terms": terms,
                **({"holdout_truth_ratios": tr["holdout"]} if holdout_ratios is None and tr.get("holdout") else {})}

    return score


def corpus_documents(cfg: TuneConfig) -> tuple[dict[str, Any], set[str]]:
    """The documents every corpus scoring uses: the first `score_items` of the forget and of the
    holdout corpus, and the first `utility_items` retain documents (held out of training: their
    texts are the second value). `UnlearnError` on overlapping corpora or too few retain documents."""
    forget, holdout, retain = (load_corpus(c) for c in (cfg.forget_corpus, cfg.holdout_corpus, cfg.retain_corpus))
    check_corpus_overlap(forget, holdout, other="holdout")
    check_corpus_overlap(forget, retain)
    if len(retain) <= cfg.utility_items:
        raise UnlearnError(f"--retain-corpus has {len(retain)} documents: the first --utility-items "
                           f"{cfg.utility_items} are held out of training for the utility proxy, so it needs more")
    held = retain.select(range(cfg.utility_items))
    docs = {"forget": forget.select(range(min(len(forget), cfg.score_items))),
            "holdout": holdout.select(range(min(len(holdout), cfg.score_items))), "retain": held}
    return docs, set(held["text"])


def corpus_max_length(cfg: TuneConfig) -> int:
    """Tokens per window: `cfg.max_length`, else the method's default ``max_length``."""
    if cfg.max_length is not None:
        return cfg.max_length
    _, config_cls = get_method(cfg.method)
    return next(f.default for f in fields(config_cls) if f.name == "max_length")


def make_corpus_scorer(docs: dict[str, Any], tokenizer, batch_size: int,
                       max_length: int) -> Callable[[Any], dict[str, float]]:
    """`score_corpus` on the windows of `docs` (chunked once): the callback's score function."""
    windows = {k: chunk_corpus(d, tokenizer, max_length)[0] for k, d in docs.items()}

    def score(model) -> dict[str, float]:
        s = score_corpus(model, tokenizer, windows, batch_size=batch_size)
        return {"hfq": s["hfq"], "ks_statistic": s["ks_statistic"], "utility_proxy": s["utility_proxy"],
                "distance": score_distance(s["forget_min_k"], s["holdout_min_k"]),
                # Min-K% Prob here is minus the mean of the lowest log-probabilities: higher is less familiar
                "gap": familiarity_gap([-x for x in s["forget_min_k"]], [-x for x in s["holdout_min_k"]]),
                "direction": forgetting_direction(s["forget_min_k"], s["holdout_min_k"])["verdict"],
                "forget_nll": s["mean_nll"]["forget"], "holdout_nll": s["mean_nll"]["holdout"],
                "retain_nll": s["mean_nll"]["retain"]}

    return score


# --------------------------------------------------------------------------------------------
# search space


# searched on a log scale. NPO down to 0.01: its gradient on a sequence fades as exp(β x the drop in
# its log-likelihood), and on SmolLM2 forget20 at β 0.1 it had died by step 100 (NPO term 2e-4) with
# the forget items' median truth ratio stuck at 0.69 (the retain model's: 0.83), while β 0.02 carried
# them to 0.94 by step 50 and past the retain model's level by step 75 (README, tofu_frontier session 20)
BETA_RANGE = {"npo": (0.01, 1.0), "simnpo": (0.5, 5.0)}
ALPHA_RANGE = (0.3, 3.0)
UTILITY_RULES = ("mean", "each")
HFQ_REFERENCES = ("start", "current")  # TuneConfig.hfq_reference
# RMU: α weighs an activation-matching term (WMDP: 1200 on Zephyr-7B); the adaptive steering scale s
# (c = s x each forget token's activation norm, `RMUConfig.steering_scale`) spans a target well inside
# the token's own norm to one that swamps it; the default point takes its geometric middle, 2
RMU_ALPHA_RANGE = (30.0, 3000.0)
RMU_SCALE_RANGE = (0.5, 8.0)


def alpha_range(cfg: TuneConfig) -> tuple[float, float]:
    """The α searched: `cfg.alpha_range`, else the method's (RMU's weighs activation matching, the
    others' a retain NLL / KL term)."""
    if cfg.alpha_range is not None:
        return tuple(cfg.alpha_range)
    return RMU_ALPHA_RANGE if cfg.method == "rmu" else ALPHA_RANGE


def beta_range(cfg: TuneConfig) -> tuple[float, float]:
    """The β searched: `cfg.beta_range`, else the method's `BETA_RANGE`."""
    return tuple(cfg.beta_range) if cfg.beta_range is not None else BETA_RANGE[cfg.method]


def lr_range(cfg: TuneConfig, mode: str) -> tuple[float, float]:
    """The learning rates searched in `mode` (RMU with full weights has its own range)."""
    if mode == "lora":
        return cfg.lr_lora
    return cfg.lr_rmu if cfg.method == "rmu" else cfg.lr_full


def suggest(trial, cfg: TuneConfig) -> dict[str, Any]:
    """One point of the search space (names are the run_unlearning / config fields)."""
    modes = _list(cfg.modes, ("lora", "full"), "modes")
    masks = _list(cfg.masks, MASK_CHOICES, "masks")
    mode = trial.suggest_categorical("mode", modes) if len(modes) > 1 else modes[0]
    lo, hi = lr_range(cfg, mode)
    p: dict[str, Any] = {"mode": mode, "learning_rate": trial.suggest_float(f"lr_{mode}", lo, hi, log=True)}
    # from about half the budget to all of it, in whole scoring intervals (a range Optuna can step)
    low = cfg.max_steps - cfg.eval_every * ((cfg.max_steps - math.ceil(cfg.max_steps / 2)) // cfg.eval_every)
    p["max_steps"] = trial.suggest_int("max_steps", low, cfg.max_steps, step=cfg.eval_every) \
        if cfg.max_steps > low else cfg.max_steps
    if cfg.method in BETA_RANGE:
        p["beta"] = trial.suggest_float("beta", *beta_range(cfg), log=True)
    p["alpha"] = trial.suggest_float("alpha", *alpha_range(cfg), log=True)
    if cfg.method == "rmu":
        p["steering_scale"] = trial.suggest_float("steering_scale", *RMU_SCALE_RANGE, log=True)
    mask = trial.suggest_categorical("mask", masks) if len(masks) > 1 else masks[0]
    p["mask"] = mask
    if mask != "none":
        p["mask_ratio"] = trial.suggest_float("mask_ratio", 0.2, 0.8)
    return p


def default_points(cfg: TuneConfig) -> list[dict[str, Any]]:
    """The trials a new study starts with (`cfg.default_trials`): one per searched mode at the
    library's defaults, as Optuna parameters: `unlearn`'s per-mode learning rate
    (`llm_unlearn.unlearn.MODE_DEFAULTS`), the method config's β and α, the whole step budget, and
    the first searched mask (ratio 0.5). Values outside a search range are clipped into it. The
    usual way to seed a TPE search with a known setting (``study.enqueue_trial``): the sampler then
    explores around it instead of starting from random points only."""
    _, config_cls = get_method(cfg.method)
    own = {f.name: f.default for f in fields(config_cls)}
    masks = _list(cfg.masks, MASK_CHOICES, "masks")
    points = []
    for mode in _list(cfg.modes, ("lora", "full"), "modes"):
        lo, hi = lr_range(cfg, mode)
        lr = unlearn_mod.mode_defaults(cfg.method, mode == "lora").get("learning_rate", own.get("learning_rate"))
        point: dict[str, Any] = {"mode": mode, f"lr_{mode}": _clip(lr, lo, hi), "max_steps": cfg.max_steps,
                                 "alpha": _clip(own.get("alpha", 1.0), *alpha_range(cfg)), "mask": masks[0]}
        if cfg.method in BETA_RANGE:
            point["beta"] = _clip(own.get("beta", beta_range(cfg)[0]), *beta_range(cfg))
        if cfg.method == "rmu":
            point["steering_scale"] = math.sqrt(RMU_SCALE_RANGE[0] * RMU_SCALE_RANGE[1])
        if masks[0] != "none":
            point["mask_ratio"] = 0.5
        points.append(point)
    return points


def trial_direction(rec: dict[str, Any]) -> str | None:
    """Which way a finished trial's forgetting went: its chosen step's `forgetting_direction` verdict.
    A trial that kept the untouched start while some later step fell under the utility floor went
    too far, not too little: ``"overshot"``."""
    hist = rec.get("history") or []
    chosen = next((h for h in hist if h["step"] == rec["best_step"]), None)
    if chosen is None or not chosen.get("direction"):
        return None
    if rec["best_step"] == 0 and any(not h["feasible"] for h in hist if h["step"] > 0):
        return "overshot"
    return chosen["direction"]


def guided_knob(cfg: TuneConfig) -> str:
    """The parameter `guided_point` moves: NPO's β (its push on a sequence fades as exp(β x the
    drop in its log-likelihood): a smaller β forgets further), else the learning rate."""
    return "beta" if cfg.method == "npo" else "learning_rate"


def guided_point(done: list[dict[str, Any]], cfg: TuneConfig) -> tuple[dict[str, Any], str] | None:
    """The next trial of a `cfg.guided` search, as Optuna parameters, and why; None when the last
    finished trial's forget items look like unseen ones (or carry no verdict), or when the bracket
    is empty: then TPE draws.

    The last trial's point with one knob (`guided_knob`) moved against its verdict: β down / lr up
    after ``short``, β up / lr down after ``overshot``. The new value is the geometric mean of the
    bracket that every finished trial of the same mode gives: for β, from the largest β that
    overshot (else the range's low end) to the smallest that stopped short (else the high end); for
    the learning rate the other way round."""
    last = done[-1]
    verdict = trial_direction(last)
    if verdict not in ("short", "overshot"):
        return None
    p, knob = last["params"], guided_knob(cfg)
    mode = p["mode"]
    lo, hi = beta_range(cfg) if knob == "beta" else lr_range(cfg, mode)
    # the verdict that puts a value on the lower side of the bracket
    below = "overshot" if knob == "beta" else "short"
    for rec in done:
        if rec["params"]["mode"] != mode or knob not in rec["params"]:
            continue
        v, d = rec["params"][knob], trial_direction(rec)
        if d == below:
            lo = max(lo, v)
        elif d in ("short", "overshot"):
            hi = min(hi, v)
    if not lo < hi * (1 - 1e-6):
        return None
    value = math.sqrt(lo * hi)
    point: dict[str, Any] = {"mode": mode, f"lr_{mode}": p["learning_rate"], "max_steps": p["max_steps"],
                             "alpha": p["alpha"], "mask": p["mask"]}
    for key in ("beta", "steering_scale", "mask_ratio"):
        if key in p:
            point[key] = p[key]
    point["beta" if knob == "beta" else f"lr_{mode}"] = value
    name = "beta" if knob == "beta" else "lr"
    return point, f"trial {last['number']} {verdict}: {name} {p[knob]:.3g} -> {value:.3g}"


def _clip(value: float, lo: float, hi: float) -> float:
    return float(min(max(value, lo), hi))


def sampler_seed(cfg: TuneConfig) -> int:
    """The TPE sampler's seed: `cfg.seed` mixed with the search (method, modes, masks), so two
    searches with the same `--seed` do not draw the same random start points."""
    return (cfg.seed * 1_000_003 + zlib.crc32(f"{cfg.method}|{cfg.modes}|{cfg.masks}".encode())) % (2 ** 32)


def _list(value: str, valid: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in valid]
    if not items or bad:
        raise UnlearnError(f"--{what}: expected a comma list of {', '.join(valid)}, got '{value}'")
    return items


def input_kind(cfg: TuneConfig) -> str:
    """``"qa"`` or ``"corpus"``; a one-line `UnlearnError` when the two kinds of input are mixed or
    a corpus search lacks its holdout or retain corpus."""
    kind = check_input_kinds(cfg.data, cfg.forget_split, cfg.retain_split, cfg.forget_corpus, cfg.retain_corpus)
    if kind == "qa":
        if cfg.holdout_corpus is not None:
            raise UnlearnError("corpus and QA inputs cannot be mixed: --holdout-corpus goes with --forget-corpus "
                               "(QA data takes its holdout items from --holdout-split or the data's holdoutXX)")
        return kind
    qa_only = [flag for flag, v in (("--holdout-split", cfg.holdout_split), ("--max-authors", cfg.max_authors),
                                    ("--retain-logs", cfg.retain_logs)) if v is not None]
    if qa_only:
        raise UnlearnError(f"corpus and QA inputs cannot be mixed: --forget-corpus was given with {', '.join(qa_only)}"
                           " (options of QA data)")
    if cfg.holdout_corpus is None:
        raise UnlearnError("tune on a corpus needs --holdout-corpus: documents of the forget corpus's kind that the "
                           "model never trained on (llm-unlearn data synth writes domain/holdout_corpus.jsonl)")
    if cfg.retain_corpus is None:
        raise UnlearnError("tune on a corpus needs --retain-corpus: its first --utility-items documents, held out "
                           "of training, give the utility proxy")
    return kind


def check_config(cfg: TuneConfig) -> str:
    """Check every option before anything loads; returns the kind of input (`input_kind`)."""
    if cfg.method not in TUNABLE_METHODS:
        raise UnlearnError(f"tune supports methods {', '.join(TUNABLE_METHODS)}, got '{cfg.method}'")
    if cfg.protocol not in PROTOCOLS:
        raise UnlearnError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got '{cfg.protocol}'")
    if cfg.utility_rule not in UTILITY_RULES:
        raise UnlearnError(f"--utility-rule must be one of {', '.join(UTILITY_RULES)}, got '{cfg.utility_rule}'")
    for name in ("trials", "max_steps", "eval_every", "score_items", "utility_items", "batch_size", "holdout_items"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UnlearnError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.patience < 0:
        raise UnlearnError(f"--patience must be >= 0, got {cfg.patience}")
    if not 0 <= cfg.patience_warmup <= 1:
        raise UnlearnError(f"--patience-warmup must be in [0, 1], got {cfg.patience_warmup}")
    if cfg.hfq_reference not in HFQ_REFERENCES:
        raise UnlearnError(f"--hfq-reference must be one of {', '.join(HFQ_REFERENCES)}, got '{cfg.hfq_reference}'")
    if not 0 <= cfg.hfq_level <= 1:
        raise UnlearnError(f"--hfq-level must be in [0, 1], got {cfg.hfq_level}")
    if not 0 < cfg.utility_floor <= 1:
        raise UnlearnError(f"--utility-floor must be in (0, 1], got {cfg.utility_floor}")
    if cfg.beta_range is not None and cfg.method not in BETA_RANGE:
        raise UnlearnError(f"--beta-range applies to {', '.join(BETA_RANGE)}, not {cfg.method}")
    for name in RANGE_FIELDS:
        if getattr(cfg, name) is None:
            continue
        lo, hi = getattr(cfg, name)
        if not 0 < lo <= hi:
            raise UnlearnError(f"--{name.replace('_', '-')}: expected 0 < LOW <= HIGH, got {lo} {hi}")
    if cfg.max_length is not None and cfg.max_length < 2:
        raise UnlearnError(f"--max-length must be >= 2, got {cfg.max_length}")
    _list(cfg.modes, ("lora", "full"), "modes")
    _list(cfg.masks, MASK_CHOICES, "masks")
    return input_kind(cfg)


# --------------------------------------------------------------------------------------------
# the search


# fields a resumed study may change: the budget, the final report and the console; every other
# field defines the search, and a resume with another value would mix two searches in one study
RESUME_FREE = ("trials", "progress", "final_eval", "retain_logs", "eval_max_items", "eval_max_new_tokens",
               "keep_full_models", "output", "guided")  # guided: how the next point is proposed, not the space
STATE_FILE = "tune_state.json"


def _search_fields(cfg: TuneConfig) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}, default=str))


def resume_mismatch(cfg: TuneConfig) -> list[str] | None:
    """What keeps `tune(cfg, resume=True)` from continuing the study in `cfg.output`: None when
    there is nothing to resume (no ``tune_state.json``: a new search starts), else the search
    fields whose values differ from the stored ones (empty: it resumes)."""
    state_file = Path(cfg.output) / STATE_FILE
    if not state_file.is_file():
        return None
    stored = json.loads(state_file.read_text()).get("config", {})
    now = _search_fields(cfg)
    # a field added after the stored search ran (absent there) ran at its default
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(TuneConfig) if f.default is not MISSING},
                                     default=str))
    return sorted(k for k in set(stored) | set(now) if stored.get(k, defaults.get(k)) != now.get(k))


def _resume_study(study, out: Path, own_storage: bool,
                  say: Callable[[str], None]) -> tuple[dict[int, dict], dict[int, str]]:
    """The finished trials of `study` that ran in `out` (their records, failures), after failing
    and re-enqueueing (same parameters) the ones a killed process left running there. With the
    output's own SQLite file (`own_storage`) every trial is the output's; in a shared study, those
    whose ``output`` attribute names it."""
    from optuna.trial import TrialState

    records: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if not own_storage and t.user_attrs.get("output") != str(out.resolve()):
            continue  # another machine's trial in a shared study
        run_dir = out / "trials" / f"trial_{t.number:03d}"
        if t.state == TrialState.COMPLETE and (run_dir / "record.json").is_file():
            rec = json.loads((run_dir / "record.json").read_text())
            rec["run_dir"] = str(run_dir)  # the output directory may have moved
            records[t.number] = rec
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:  # e.g. diverged: counts as a trial
            failures[t.number] = t.user_attrs["error"]
        elif t.state in (TrialState.RUNNING, TrialState.FAIL) and t.number not in retried:
            # killed (left running) or interrupted (Ctrl-C: failed without an error of its own)
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            shutil.rmtree(run_dir, ignore_errors=True)
            study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items() if k in ("default", "guided")}
                                | {"retry_of": t.number})
            say(f"trial {t.number} was interrupted: it runs again with the same parameters")
    return records, failures


def tune(cfg: TuneConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run the search; returns the ``tune.json`` summary (also written to `cfg.output`).

    `cfg.trials` is the number of finished trials (completed or failed) the output ends with. With
    `resume`, an output that holds an earlier search with the same search fields (see
    `resume_mismatch`) is continued: its finished trials count, a trial its killed process left
    running runs again with the same parameters, and the search time adds up. Without an earlier
    search in `cfg.output`, `resume` starts a new one."""
    import optuna

    kind = check_config(cfg)
    t0 = time.time()
    if kind == "qa":
        cfg = replace(cfg, forget_split=cfg.forget_split or "forget10")
        rows, _ = scoring_rows(cfg)  # fails early on data without a holdout set
        forget_name = cfg.forget_split
    else:
        docs, held_out = corpus_documents(cfg)  # fails early on unreadable or overlapping corpora
        forget_name = Path(str(cfg.forget_corpus)).stem
    inputs = [cfg.model, cfg.data, cfg.forget_corpus, cfg.retain_corpus, cfg.holdout_corpus]
    mismatch = resume_mismatch(cfg) if resume else None
    if mismatch:
        raise UnlearnError(f"--resume: {cfg.output} holds a search with other settings ({', '.join(mismatch)}); "
                           "pass the same settings, or --overwrite without --resume to start over")
    resuming = mismatch is not None
    if resuming:
        out = check_output(cfg.output, True, inputs)
        shutil.rmtree(out / "chosen", ignore_errors=True)  # chosen again from every finished trial
        stored_state = json.loads((out / STATE_FILE).read_text())
        elapsed_before = float(stored_state.get("elapsed_s", 0.0))
    else:
        out = prepare_output_dir(cfg.output, overwrite, inputs)
        stored_state, elapsed_before = {}, 0.0
    (out / "trials").mkdir(exist_ok=True)
    # the starting model's scores: the same model and subsets on a resume, so they are kept, not rescored
    start: dict[str, Any] | None = stored_state.get("start")

    def save_state() -> None:
        state = {"config": _search_fields(cfg), "elapsed_s": round(elapsed_before + time.time() - t0, 1)}
        if start is not None:
            state["start"] = start
        (out / STATE_FILE).write_text(json.dumps(state, indent=1, default=float) + "\n")

    save_state()
    storage = cfg.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = cfg.study_name or f"tune-{cfg.method}-{forget_name}"

    def say(msg: str) -> None:
        if cfg.progress:  # tqdm.write: a line printed while a trial's bar is drawn goes above the bar, not onto it
            tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout)
            sys.stdout.flush()

    start_cache = start_cache_path(cfg, rows) if kind == "qa" and start is None else None
    start_note = f"{STATE_FILE}"
    if start_cache is not None and start_cache.is_file():
        try:
            start = json.loads(start_cache.read_text())
            start_note = f"{start_cache} (an earlier search of this model on these items)"
        except (OSError, ValueError):
            start = None
    if start is None:  # the model is needed only to score the start
        model, tokenizer = unlearn_mod.load_target(cfg.model)
    else:
        model, tokenizer = None, load_tokenizer(resolve_model_path(cfg.model))
    if kind == "qa":
        scorer = make_scorer(rows, tokenizer, cfg.batch_size, cfg.protocol)
        retain_exclude = {r["question"] for r in rows["retain"]}
        data_args = {"data": cfg.data, "forget_split": cfg.forget_split, "retain_split": cfg.retain_split}
    else:
        scorer = make_corpus_scorer(docs, tokenizer, cfg.batch_size, corpus_max_length(cfg))
        retain_exclude = held_out
        data_args = {"data": None, "forget_corpus": cfg.forget_corpus, "retain_corpus": cfg.retain_corpus}
    if model is not None:
        start = scorer(model)
        save_state()
        del model
        if start_cache is not None:
            try:
                start_cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = start_cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(start, default=float) + "\n")
                tmp.replace(start_cache)
            except OSError as exc:  # a read-only cache costs the next search one scoring, nothing else
                logger.info("could not cache the start's scores in %s: %s", start_cache, exc)
    else:
        save_state()
        say(f"start: scores read from {start_note}, not recomputed")
    if kind == "qa" and cfg.hfq_reference == "start":
        if not start.get("holdout_truth_ratios"):
            raise UnlearnError(f"{out / STATE_FILE}: the start's scores have no holdout truth ratios (written by an "
                               "older version); start over with --overwrite")
        scorer = make_scorer(rows, tokenizer, cfg.batch_size, cfg.protocol, holdout_ratios=start["holdout_truth_ratios"])
    utility_min = cfg.utility_floor * start["utility_proxy"]
    term_min = None
    if cfg.utility_rule == "each" and start.get("utility_terms"):
        term_min = {k: cfg.utility_floor * v for k, v in start["utility_terms"].items()}
    if kind == "qa":
        say("HFQ: forget items vs " + ("the holdout items' truth ratios under the starting model (scored once)"
                                       if cfg.hfq_reference == "start" else "the holdout items under the scored model"))
    say(f"start: HFQ {start['hfq']:.3g}, utility proxy {start['utility_proxy']:.4f} (floor {utility_min:.4f}); "
        f"{cfg.trials} trials of <= {cfg.max_steps} steps, scored every {cfg.eval_every}")
    records: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    nll_before: dict = {}  # every trial starts from the same model: its before-NLL is scored once per mode

    def objective(trial) -> float:
        trial.set_user_attr("output", str(out.resolve()))  # whose trial it is (a shared study holds others')
        p = suggest(trial, cfg)
        run_dir = out / "trials" / f"trial_{trial.number:03d}"
        scores_log = out / "trials" / f"trial_{trial.number:03d}.scores.jsonl"
        scores_log.unlink(missing_ok=True)

        def on_record(rec: dict[str, Any], number: int = trial.number) -> None:
            with scores_log.open("a") as fh:  # each scored step as it happens (the record comes at the trial's end)
                fh.write(json.dumps(rec, default=str) + "\n")
            if rec["step"] > 0:
                say(f"  trial {number} step {rec['step']}: HFQ {rec['hfq']:.3g}, utility "
                    f"{rec['utility_proxy'] / start['utility_proxy']:.3f}x start{_weakest_term(rec, start)}"
                    f"{'' if rec['feasible'] else ' (under the floor)'}")

        cb = BestStepCallback(scorer, cfg.eval_every, utility_min, cfg.patience, initial=start, term_min=term_min,
                              warmup_steps=math.ceil(cfg.patience_warmup * p["max_steps"]), hfq_level=cfg.hfq_level,
                              on_record=on_record)
        overrides = {"learning_rate": p["learning_rate"], "max_steps": p["max_steps"], "alpha": p["alpha"],
                     "per_device_train_batch_size": cfg.batch_size, "seed": cfg.seed,
                     "logging_steps": cfg.eval_every, "protocol": cfg.protocol}
        for key in ("beta", "steering_scale"):
            if key in p:
                overrides[key] = p[key]
        if cfg.optim:
            overrides["optim"] = cfg.optim
        if cfg.max_length is not None:
            overrides["max_length"] = cfg.max_length

        def _run_trial():
            return unlearn_mod.run_unlearning(
                cfg.model, output=run_dir, method=cfg.method, **data_args, overrides=overrides,
                lora=p["mode"] == "lora", lora_r=cfg.lora_r,
                lora_alpha=2 * cfg.lora_r, mask_method=None if p["mask"] == "none" else p["mask"],
                mask_ratio=p.get("mask_ratio"), overwrite=True, score_hfq=False, callbacks=[cb],
                retain_exclude=retain_exclude, nll_max_retain=cfg.utility_items, quiet=True,
                nll_before_cache=nll_before,
            )

        t = time.time()
        try:
            _, manifest = _run_trial()
        except UnlearnError as exc:  # e.g. diverged: the trial fails, the search goes on
            failures[trial.number] = str(exc).splitlines()[0]
            trial.set_user_attr("error", failures[trial.number])
            save_state()
            say(f"trial {trial.number}: {_describe(p)} failed: {failures[trial.number]}")
            raise
        best = cb.best
        rec = {"number": trial.number, "params": p, "default_point": bool(trial.user_attrs.get("default")),
               "guided": trial.user_attrs.get("guided"),
               "feasible": best["feasible"], "hfq": best["hfq"], "ks_statistic": best["ks_statistic"],
               "distance": best.get("distance"), "direction": best.get("direction"), "utility_proxy": best["utility_proxy"], "utility_ratio": best["utility_proxy"] / start["utility_proxy"],
               "best_step": best["step"], "steps_trained": manifest["steps"], "stopped_early": cb.stopped_early,
               "history": cb.history, "run_dir": str(run_dir), "time_s": round(time.time() - t, 1),
               "nll": {k: manifest["nll"][k] for k in ("forget_before", "forget_after", "retain_before", "retain_after",
                                                        "before_reused")}}
        _tag_run(run_dir, {"tune": {k: rec[k] for k in ("number", "params", "hfq", "utility_proxy", "best_step")},
                           "restored_step": best["step"]})
        records[trial.number] = rec
        (run_dir / "record.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")  # read by a resume
        trial.set_user_attr("record", {k: v for k, v in rec.items() if k != "history"})
        save_state()
        # <= 0: feasible (Optuna's convention); the chosen step always is (the start is a candidate)
        trial.set_constraint("utility_floor", (utility_min - best["utility_proxy"]) if term_min is None
                             else (0.0 if best["feasible"] else 1.0))
        say(f"trial {trial.number}: {_describe(p)}{' (defaults)' if rec['default_point'] else ''}"
            f"{' (guided: ' + rec['guided'] + ')' if rec['guided'] else ''} -> HFQ {best['hfq']:.3g}"
            f"{_distance_note(best, start)} at step {best['step']}/{manifest['steps']}, utility "
            f"{rec['utility_ratio']:.3f}x start, forget items {best.get('direction') or 'n/a'} ({rec['time_s']:.0f} s)")
        if cfg.guided and len(records) + len(failures) < cfg.trials:
            enqueue_guided()
        return objective_value(best, start, cfg.hfq_level)

    def enqueue_guided() -> None:
        """The next trial of a guided search (`guided_point`), for this process or another machine
        on the study; none when the last trial looks unseen (TPE draws)."""
        nxt = guided_point([records[n] for n in sorted(records)], cfg)
        if nxt is not None:
            study.enqueue_trial(nxt[0], user_attrs={"guided": nxt[1]})

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by `objective`
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(cfg))
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", sampler=sampler,
                                    load_if_exists=True)
    except Exception as exc:  # a malformed URL, an unreachable database: one line
        raise UnlearnError(f"--storage {storage}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if resuming:
        records, failures = _resume_study(study, out, cfg.storage is None, say)
        # a sampler seeded as at the start would draw the start's random points again
        study.sampler = optuna.samplers.TPESampler(seed=(sampler_seed(cfg) + len(study.trials)) % 2 ** 32)
        say(f"resuming {study_name}: {len(records) + len(failures)} of {cfg.trials} trials finished")
    elif cfg.default_trials and not study.trials:  # a study other machines already work on has them
        for point in default_points(cfg)[:cfg.trials]:
            study.enqueue_trial(point, user_attrs={"default": True})
    remaining = cfg.trials - len(records) - len(failures)
    if cfg.guided and records and remaining > 0 and not any(
            t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        enqueue_guided()  # a resumed search goes on guided
    if remaining > 0:
        with warnings.catch_warnings():  # library deprecation notices are not for the user of this command
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", module="optuna")
            study.optimize(objective, n_trials=remaining, catch=(UnlearnError,))
    done = [records[n] for n in sorted(records)]
    if not done:
        raise UnlearnError("no trial finished (see the messages above)")
    chosen = max(done, key=lambda rec: step_key(rec, cfg.hfq_level))
    chosen_dir = out / "chosen"
    shutil.copytree(chosen["run_dir"], chosen_dir)
    for rec in done:
        if rec is not chosen and rec["params"]["mode"] == "full" and not cfg.keep_full_models:
            for f in Path(rec["run_dir"]).glob("*.safetensors"):
                f.unlink()
    say(f"chosen: trial {chosen['number']} ({_describe(chosen['params'])}), HFQ {chosen['hfq']:.3g}"
        f"{_distance_note(chosen, start)}, utility "
        f"{chosen['utility_ratio']:.3f}x start, step {chosen['best_step']}; copied to {chosen_dir}")
    if chosen.get("direction"):
        say(f"at the chosen step the forget items {describe_forgetting(chosen['direction'])}"
            + DIRECTION_HINTS.get(chosen["direction"], ""))
    search_s = elapsed_before + time.time() - t0

    report: dict[str, Any] = {}
    if kind == "corpus":
        if cfg.final_eval:
            report = final_corpus_report(cfg, chosen_dir, say)
        objective = ("maximise the corpus holdout forget quality (KS p-value, per-window Min-K% Prob of forget vs "
                     "holdout-corpus windows) subject to the held-out retain documents' geometric-mean token "
                     f"probability >= {cfg.utility_floor} x start ({utility_min:.4f})")
    else:
        if cfg.final_eval or cfg.retain_logs:
            report = final_report(cfg, chosen_dir, say)
        objective = (f"maximise holdout forget quality subject to utility proxy >= {cfg.utility_floor} x start "
                     f"({utility_min:.4f})" if term_min is None else
                     "maximise holdout forget quality subject to every utility term (probability and truth ratio on "
                     f"retain, real authors, world facts) >= {cfg.utility_floor} x its start value")
    summary = {
        "format": TUNE_FORMAT, "config": {k: v for k, v in asdict(cfg).items()}, "inputs": kind,
        "storage": storage, "study_name": study_name, "objective": objective,
        "start": start, "utility_min": utility_min, "chosen": {k: v for k, v in chosen.items() if k != "history"},
        "chosen_dir": str(chosen_dir), "trials": len(done), "failed_trials": failures,
        "search_s": round(search_s, 1),
        "final_report": report, "total_s": round(elapsed_before + time.time() - t0, 1),
        "resumed": resuming,
        "retain_model_used_for": "nothing but the final report" if cfg.retain_logs else "nothing",
    }
    (out / "trials.json").write_text(json.dumps({"format": TUNE_FORMAT, "start": start, "utility_min": utility_min,
                                                 "chosen": chosen["number"], "trials": done, "failed": failures},
                                                indent=1) + "\n")
    (out / "tune.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    plot_trials(done, chosen, start, utility_min, out / "trials.png", f"{cfg.method} on {forget_name}",
                corpus=kind == "corpus")
    return summary


def final_corpus_report(cfg: TuneConfig, chosen_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The chosen corpus run scored on every forget and holdout document (the search scored the
    first `score_items`) and the held-out retain documents. Multiple-choice accuracy (lm-eval) and
    verbatim memorisation are `llm-unlearn eval --lm-eval-tasks / --forget-corpus` on ``chosen/``."""
    docs, _ = corpus_documents(replace(cfg, score_items=10 ** 9))
    model, tokenizer = unlearn_mod.load_target(str(chosen_dir))
    say("scoring the chosen run on every forget and holdout document")
    windows = {k: chunk_corpus(d, tokenizer, corpus_max_length(cfg))[0] for k, d in docs.items()}
    s = score_corpus(model, tokenizer, windows, batch_size=cfg.batch_size)
    report = {"corpus_forget_quality": s["hfq"], "ks_statistic": s["ks_statistic"], "floor": s["floor"],
              "utility_proxy": s["utility_proxy"], "mean_nll": s["mean_nll"], "mean_min_k": s["mean_min_k"],
              "windows": s["windows"], "documents": {k: len(d) for k, d in docs.items()}}
    say(f"chosen run: corpus forget quality {_fmt(s['hfq'])} (all {len(docs['forget'])} forget vs "
        f"{len(docs['holdout'])} holdout documents), held-out retain token probability {_fmt(s['utility_proxy'])}")
    return report


def final_report(cfg: TuneConfig, chosen_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The chosen run's full evaluation; with `cfg.retain_logs` (opened here, after the search,
    for the first time) its true forget quality. An unreadable retain log is reported, not fatal:
    the search result stands without it."""
    report: dict[str, Any] = {}
    retain = None
    if cfg.retain_logs:
        try:
            retain = eval_logs.read_logs(cfg.retain_logs)
        except (UnlearnError, OSError) as exc:
            report["retain_logs_error"] = f"{cfg.retain_logs}: {exc}"
            say(f"note: cannot read the retain logs for the final report ({report['retain_logs_error']})")
    model, tokenizer = unlearn_mod.load_target(str(chosen_dir))
    say("evaluating the chosen run")
    try:
        result = evaluate_model(model, tokenizer, cfg.data, forget_split=cfg.forget_split, retain_logs=retain,
                                protocol=cfg.protocol,
                                max_items=cfg.eval_max_items, max_new_tokens=cfg.eval_max_new_tokens,
                                holdout_split=cfg.holdout_split, max_authors=cfg.max_authors, progress=False,
                                model_name=str(chosen_dir))
    except UnlearnError as exc:  # e.g. retain logs of other forget items
        report["retain_logs_error"] = str(exc)
        say(f"note: {exc}; evaluating without the retain logs")
        result = evaluate_model(model, tokenizer, cfg.data, forget_split=cfg.forget_split, retain_logs=None,
                                protocol=cfg.protocol,
                                max_items=cfg.eval_max_items, max_new_tokens=cfg.eval_max_new_tokens,
                                holdout_split=cfg.holdout_split, max_authors=cfg.max_authors, progress=False,
                                model_name=str(chosen_dir))
    write_eval(chosen_dir / "eval", result)
    m = result["summary"]["metrics"]
    report.update({k: m.get(k) for k in ("holdout_forget_quality", "forget_quality", "model_utility", "utility_proxy",
                                         "mia_auc_loss", "mia_auc_min_k", "forget_truth_ratio")})
    report["eval_dir"] = str(chosen_dir / "eval")
    fq = report.get("forget_quality")
    say(f"chosen run: HFQ {_fmt(report['holdout_forget_quality'])}, model utility {_fmt(report['model_utility'])}"
        + (f", true forget quality {_fmt(fq)} (retain logs, never seen by the search)" if fq is not None else ""))
    return report


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _describe(p: dict[str, Any]) -> str:
    parts = [p["mode"], f"lr {p['learning_rate']:.2g}", f"{p['max_steps']} steps"]
    parts += [f"{k.replace('steering_scale', 'scale')} {p[k]:.2g}" for k in ("beta", "alpha", "steering_scale") if k in p]
    if p.get("mask", "none") != "none":
        parts.append(f"{p['mask']} {p['mask_ratio']:.2f}")
    return ", ".join(parts)


def _tag_run(run_dir: Path, fields: dict[str, Any]) -> None:
    path = run_dir / "run.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def plot_trials(records: list[dict], chosen: dict, start: dict, utility_min: float, path: Path, title: str,
                corpus: bool = False) -> Path:
    """HFQ (log) vs utility proxy of every scored step (small) and every trial's chosen step (large);
    the chosen trial and the starting model marked; the utility floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in records:
        hist = rec["history"]
        ax.scatter([h["utility_proxy"] for h in hist], [max(h["hfq"], 1e-30) for h in hist], s=10, alpha=0.35,
                   color="tab:blue")
        ax.scatter(rec["utility_proxy"], max(rec["hfq"], 1e-30), s=45, color="tab:blue", edgecolors="black")
    ax.scatter(chosen["utility_proxy"], max(chosen["hfq"], 1e-30), s=220, marker="*", color="gold",
               edgecolors="black", zorder=3, label=f"chosen (trial {chosen['number']})")
    ax.scatter(start["utility_proxy"], max(start["hfq"], 1e-30), s=90, marker="X", color="black", label="start")
    ax.axvline(utility_min, color="red", ls="--", lw=1, label="utility floor")
    ax.set_yscale("log")
    ax.set_xlabel("utility proxy (held-out retain documents: geometric-mean token probability)" if corpus
                  else "utility proxy (retain held out + real authors + world facts)")
    ax.set_ylabel("holdout forget quality (KS p-value, log)")
    ax.set_title(f"llm-unlearn tune: {title}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["BestStepCallback", "TuneConfig", "corpus_documents", "final_corpus_report", "final_report",
           "guided_knob", "guided_point", "input_kind", "make_corpus_scorer", "make_scorer", "plot_trials", "default_points", "trial_direction", "sampler_seed", "scoring_rows", "step_key", "familiarity_gap", "suggest", "tune"]
