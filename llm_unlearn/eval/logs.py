"""Per-item evaluation logs: our format, open-unlearning's ``TOFU_EVAL.json`` and TOFU's legacy
``eval_log*.json`` files, read into one structure, and every aggregate computed from them.

Aggregates follow TOFU's ``aggregate_eval_stat.py`` exactly (see `llm_unlearn.eval.metrics`):
the published numbers of the reference logs in ``shared/data/tofu/reference_logs`` (model
utility 0.6227 for llama2-7b full, 0.6137 for retain90, forget quality 1.834e-21 full vs
retain90) are reproduced by `compute_summary`.

Our per-item file (``per_item.json``, written by `llm_unlearn.eval.evaluator.write_eval`)::

    {"format": "llm-unlearn-eval-items/1", "forget_split": "forget10", "data": SRC,
     "splits": {"forget": {"source_split": "forget10_perturbed", "items": [ITEM, ...]},
                "retain": ..., "real_authors": ..., "world_facts": ..., "holdout": ...}}

    ITEM = {"index", "question", "answer",
            "gt_loss", "gt_loss_sum", "gt_num_tokens",                 # mean / summed NLL, tokens
            "paraphrased_loss", "paraphrased_loss_sum", "paraphrased_num_tokens",  # forget/retain
            "perturbed_loss": [..], "perturbed_loss_sum": [..], "perturbed_num_tokens": [..],
            "generation", "rougeL_recall",
            "mia": {"loss", "zlib", "min_k", "min_k_plus_plus"}}        # forget / holdout only
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval import metrics as M

ITEMS_FORMAT = "llm-unlearn-eval-items/1"
SUMMARY_FORMAT = "llm-unlearn-eval-summary/1"
EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts")
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
PRIVLEAK_ATTACK = "min_k"  # as MUSE / open-unlearning

LEGACY_FILES = {
    "forget": "eval_log_forget.json",
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
}
OU_PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}

DEFINITIONS = {
    "probability": "forget/retain: mean over items of exp(-mean answer-token NLL); real authors / world "
                   "facts: mean of P(true)/(P(true)+sum P(perturbed)), P = exp(-mean answer NLL)",
    "rougeL_recall": "mean ROUGE-L recall (rouge_score, Porter stemming) of the greedy generation vs the answer",
    "truth_ratio": "per item R = exp(L_correct - mean_j L_perturbed_j) = geometric-mean P(perturbed) / "
                   "P(correct), correct = paraphrased answer (forget, retain) or the answer (real authors, "
                   "world facts); forget score mean(min(R, 1/R)), others mean(max(0, 1-R))",
    "forget_quality": "p-value of the two-sample KS test (scipy ks_2samp, two-sided) between this model's and "
                      "the retain model's per-item forget truth ratios R",
    "forget_quality_floor": "smallest p-value the KS test can give with these item counts (complete "
                            "separation); a forget_quality at the floor is a bound, not a measurement",
    "holdout_forget_quality": "retain-free: p-value of the two-sample KS test between this model's per-item truth "
                              "ratios R on the forget items and on holdout items about entities it never trained "
                              "on (1 = treats both alike, as a model that never saw the forget data)",
    "utility_proxy": "generation-free model utility: harmonic mean of {probability, truth_ratio} x {retain, "
                     "real_authors, world_facts} (what `llm-unlearn tune` constrains)",
    "model_utility": "harmonic mean of {probability, rougeL_recall, truth_ratio} x {retain, real_authors, "
                     "world_facts}",
    "mia_auc": "ROC AUC, forget (label 0) vs holdout (label 1) items, loss-like scores; 1 = forget items look "
               "seen, 0.5 = indistinguishable. loss: mean answer NLL; zlib: NLL / zlib bytes of the answer; "
               "min_k: -mean of the lowest 40% token log-probs; min_k_plus_plus: same on log-probs "
               "standardised by the model's next-token mean and std",
    "privleak": "MUSE PrivLeak % from the min_k AUC: ((1-AUC) - (1-AUC_retain)) / (1-AUC_retain) * 100; "
                "0 = like the retain model, -100 = forget set fully recognisable",
}


@dataclass
class SplitLog:
    """Per-item values of one evaluation split; any field may be missing (None)."""

    name: str
    index: list[str]
    source_split: str | None = None
    questions: list[str] | None = None
    answers: list[str] | None = None
    gt_loss: np.ndarray | None = None
    paraphrased_loss: np.ndarray | None = None
    perturbed_loss: list[list[float]] | None = None
    generations: list[str] | None = None
    rougeL_recall: np.ndarray | None = None
    truth_ratio: np.ndarray | None = None  # given directly (open-unlearning); else computed
    probability: np.ndarray | None = None  # given directly (open-unlearning ra/wf normalised)
    mia: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def correct_loss(self) -> np.ndarray | None:
        """The "correct" side of the truth ratio: paraphrase if there is one, else the answer."""
        return self.paraphrased_loss if self.paraphrased_loss is not None else self.gt_loss


@dataclass
class EvalLogs:
    """All splits of one model's evaluation, whatever format they were read from."""

    splits: dict[str, SplitLog]
    fmt: str
    path: str | None = None
    forget_split: str | None = None
    mia_auc_given: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # the protocol the items were evaluated under (`llm_unlearn.data.protocol`): recorded in our
    # logs (logs from before protocols existed: "native"); open-unlearning's and TOFU's own
    # evaluators follow their own protocol
    protocol: str | None = None

    @property
    def evaluator(self) -> str:
        return self.fmt


# ------------------------------------------------------------------------------------------
# readers


def _sorted_keys(d: dict) -> list[str]:
    return sorted(d, key=lambda k: (int(k) if str(k).lstrip("-").isdigit() else math.inf, str(k)))


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UnlearnError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _legacy_split(name: str, d: dict, where: str) -> SplitLog:
    if "avg_gt_loss" not in d:
        raise UnlearnError(f"{where}: not a TOFU eval log (no 'avg_gt_loss' key)")
    keys = _sorted_keys(d["avg_gt_loss"])

    def col(key):
        if key not in d:
            return None
        return [d[key][k] for k in keys]

    gens = col("generated_text")
    s = SplitLog(name=name, index=[str(k) for k in keys])
    s.gt_loss = np.asarray(col("avg_gt_loss"), dtype=np.float64)
    # TOFU's aggregate uses avg_paraphrased_loss as the truth ratio's "correct" side on every
    # split (on real authors / world facts it is the answer's loss from the perturbation pass)
    if "avg_paraphrased_loss" in d:
        s.paraphrased_loss = np.asarray(col("avg_paraphrased_loss"), dtype=np.float64)
    if "average_perturb_loss" in d:
        s.perturbed_loss = [list(map(float, r)) for r in col("average_perturb_loss")]
    if "rougeL_recall" in d:
        s.rougeL_recall = np.asarray(col("rougeL_recall"), dtype=np.float64)
    if gens is not None:
        s.generations = [g[1] if isinstance(g, list) and len(g) > 1 else str(g) for g in gens]
        s.answers = [g[2] if isinstance(g, list) and len(g) > 2 else None for g in gens]
    return s


def read_legacy(path: str | Path) -> EvalLogs:
    """TOFU's per-split files (``eval_log_forget.json`` …) in a directory, or one
    ``eval_log_aggregated.json`` holding them under their file names."""
    p = Path(path)
    if p.is_file():
        data = _load_json(p)
        per_file = {f: data[f] for f in LEGACY_FILES.values() if f in data}
    else:
        per_file = {f: _load_json(p / f) for f in LEGACY_FILES.values() if (p / f).is_file()}
    if not per_file:
        raise UnlearnError(f"{p}: no TOFU eval logs ({', '.join(LEGACY_FILES.values())})")
    splits = {name: _legacy_split(name, per_file[f], str(p / f)) for name, f in LEGACY_FILES.items() if f in per_file}
    return EvalLogs(splits=splits, fmt="tofu-legacy", path=str(p), protocol="tofu-legacy")


def read_ours(path: str | Path) -> EvalLogs:
    """Our ``per_item.json`` (see the module docstring)."""
    p = Path(path)
    return logs_from_items(_load_json(p), str(p))


def logs_from_items(data: dict[str, Any], path: str | None = None) -> EvalLogs:
    """`EvalLogs` from our per-item document (the dict written as ``per_item.json``)."""
    if not isinstance(data, dict) or data.get("format") != ITEMS_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UnlearnError(f"{path or 'per-item logs'}: expected format '{ITEMS_FORMAT}', got {got!r}")
    splits = {}
    for name, sd in data.get("splits", {}).items():
        items = sd.get("items", [])
        s = SplitLog(name=name, index=[str(it.get("index", i)) for i, it in enumerate(items)],
                     source_split=sd.get("source_split"))

        def col(key, items=items):
            vals = [it.get(key) for it in items]
            return None if not vals or any(v is None for v in vals) else vals

        s.questions, s.answers, s.generations = col("question"), col("answer"), col("generation")
        for key in ("gt_loss", "paraphrased_loss", "rougeL_recall"):
            v = col(key)
            if v is not None:
                setattr(s, key, np.asarray(v, dtype=np.float64))
        s.perturbed_loss = col("perturbed_loss")
        mia = col("mia")
        if mia is not None:
            s.mia = {a: np.asarray([m[a] for m in mia], dtype=np.float64) for a in MIA_ATTACKS if all(a in m for m in mia)}
        splits[name] = s
    protocol = (data.get("protocol") or {}).get("name", "native")
    return EvalLogs(splits=splits, fmt="llm-unlearn", path=path, forget_split=data.get("forget_split"),
                    extra={"data": data.get("data"), "mia_reason": data.get("mia_not_available")}, protocol=protocol)


def _find_metrics(obj: Any, wanted: set[str], found: dict[str, dict]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                lk = str(k).lower()
                if lk in wanted and lk not in found and ("value_by_index" in v or "agg_value" in v):
                    found[lk] = v
                _find_metrics(v, wanted, found)


def _vbi(metric: dict | None, key: str) -> dict[str, Any] | None:
    if not metric or not isinstance(metric.get("value_by_index"), dict):
        return None
    out = {}
    for k, v in metric["value_by_index"].items():
        if isinstance(v, dict) and v.get(key) is not None:
            out[str(k)] = v[key]
    return out or None


def read_open_unlearning(path: str | Path) -> EvalLogs:
    """open-unlearning's ``TOFU_EVAL.json`` (metric name -> {agg_value, value_by_index})."""
    p = Path(path)
    data = _load_json(p)
    wanted = set()
    for pre in OU_PREFIX.values():
        wanted |= {f"{pre}_q_a_prob", f"{pre}_q_a_para_prob", f"{pre}_q_a_pert_prob", f"{pre}_q_a_rouge",
                   f"{pre}_truth_ratio", f"{pre}_q_a_prob_normalised"}
    wanted |= {f"mia_{a}" for a in MIA_ATTACKS}
    found: dict[str, dict] = {}
    _find_metrics(data, wanted, found)
    if not found:
        raise UnlearnError(f"{p}: no open-unlearning TOFU metrics (forget_truth_ratio, forget_Q_A_Prob, ...)")
    splits = {}
    for name, pre in OU_PREFIX.items():
        cols = {
            "gt": _vbi(found.get(f"{pre}_q_a_prob"), "avg_loss"),
            "para": _vbi(found.get(f"{pre}_q_a_para_prob"), "avg_loss"),
            "pert": _vbi(found.get(f"{pre}_q_a_pert_prob"), "avg_loss"),
            "rouge": _vbi(found.get(f"{pre}_q_a_rouge"), "rougeL_recall"),
            "gen": _vbi(found.get(f"{pre}_q_a_rouge"), "generation"),
            "tr": _vbi(found.get(f"{pre}_truth_ratio"), "score"),
            "prob": _vbi(found.get(f"{pre}_q_a_prob_normalised"), "prob"),
        }
        present = {k: v for k, v in cols.items() if v is not None}
        if not present:
            continue
        # items = those every present column has (open-unlearning marks broken items None)
        keys = set.intersection(*(set(v) for v in present.values()))
        keys = _sorted_keys(dict.fromkeys(keys))
        s = SplitLog(name=name, index=keys)

        def arr(c, keys=keys, present=present):
            return None if c not in present else np.asarray([float(present[c][k]) for k in keys])

        s.gt_loss, s.paraphrased_loss = arr("gt"), arr("para")
        if "pert" in present:
            s.perturbed_loss = [list(map(float, np.atleast_1d(present["pert"][k]))) for k in keys]
        s.rougeL_recall, s.truth_ratio, s.probability = arr("rouge"), arr("tr"), arr("prob")
        if "gen" in present:
            s.generations = [str(present["gen"][k]) for k in keys]
        splits[name] = s
    logs = EvalLogs(splits=splits, fmt="open-unlearning", path=str(p), protocol="open-unlearning")
    for a in MIA_ATTACKS:
        m = found.get(f"mia_{a}")
        if not m:
            continue
        for side in ("forget", "holdout"):
            scores = _vbi(m.get(side) if isinstance(m.get(side), dict) else None, "score")
            if scores:
                keys = _sorted_keys(scores)
                split = logs.splits.setdefault(side, SplitLog(name=side, index=keys))
                if len(split.index) == len(keys):
                    split.mia[a] = np.asarray([float(scores[k]) for k in keys])
        auc = m.get("auc", m.get("agg_value"))
        if isinstance(auc, (int, float)):
            logs.mia_auc_given[a] = float(auc)
    return logs


def read_logs(path: str | Path) -> EvalLogs:
    """Read per-item logs in any supported format, detected from the path:

    * a run directory (``RUN/eval/per_item.json``), an eval directory or ``per_item.json`` (ours);
    * a directory with TOFU's ``eval_log_forget.json`` … or an ``eval_log_aggregated.json`` (legacy);
    * open-unlearning's ``TOFU_EVAL.json`` (or a directory containing it).
    """
    p = Path(path)
    if not p.exists():
        raise UnlearnError(f"logs not found: {p}")
    if p.is_dir():
        for cand in (p / "per_item.json", p / "eval" / "per_item.json"):
            if cand.is_file():
                return read_ours(cand)
        if any((p / f).is_file() for f in LEGACY_FILES.values()):
            return read_legacy(p)
        if (p / "TOFU_EVAL.json").is_file():
            return read_open_unlearning(p / "TOFU_EVAL.json")
        raise UnlearnError(f"{p}: no per_item.json, TOFU eval_log*.json or TOFU_EVAL.json in this directory")
    data = _load_json(p)
    if isinstance(data, dict) and data.get("format") == ITEMS_FORMAT:
        return read_ours(p)
    if isinstance(data, dict) and any(f in data for f in LEGACY_FILES.values()):
        return read_legacy(p)
    if isinstance(data, dict) and "avg_gt_loss" in data:
        name = next((n for n, f in LEGACY_FILES.items() if f == p.name), "forget")
        return EvalLogs(splits={name: _legacy_split(name, data, str(p))}, fmt="tofu-legacy", path=str(p),
                        protocol="tofu-legacy")
    return read_open_unlearning(p)


# ------------------------------------------------------------------------------------------
# aggregates


def split_truth_ratios(s: SplitLog) -> np.ndarray | None:
    if s.truth_ratio is not None:
        return s.truth_ratio
    if s.correct_loss() is None or s.perturbed_loss is None:
        return None
    return M.truth_ratios(s.correct_loss(), s.perturbed_loss)


def split_aggregates(s: SplitLog) -> tuple[dict[str, float | None], dict[str, str]]:
    """probability, rougeL_recall and truth_ratio of one split (None + reason when missing)."""
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    utility_style = s.name in ("real_authors", "world_facts")
    if s.probability is not None:
        out["probability"] = float(np.mean(s.probability))
    elif s.gt_loss is None:
        out["probability"], why["probability"] = None, "no answer losses in the logs"
    elif utility_style:
        if s.perturbed_loss is None:
            out["probability"], why["probability"] = None, "no perturbed-answer losses in the logs"
        else:
            out["probability"] = M.normalised_probability(s.gt_loss, s.perturbed_loss)[1]
    else:
        out["probability"] = M.probability(s.gt_loss)[1]
    if s.rougeL_recall is not None:
        out["rougeL_recall"] = float(np.mean(s.rougeL_recall))
    else:
        out["rougeL_recall"], why["rougeL_recall"] = None, "no generations / ROUGE in the logs"
    tr = split_truth_ratios(s)
    if tr is None:
        out["truth_ratio"], why["truth_ratio"] = None, "no paraphrased / perturbed losses in the logs"
    elif s.name == "forget":
        out["truth_ratio"] = M.forget_truth_ratio_score(tr)
    else:
        out["truth_ratio"] = M.utility_truth_ratio_score(tr)
    return out, why


def take_items(s: SplitLog, idx: np.ndarray) -> SplitLog:
    """The split restricted to (or resampled at) the item positions `idx`."""
    def arr(x):
        return None if x is None else np.asarray(x)[idx]

    def lst(x):
        return None if x is None else [x[i] for i in idx]

    return SplitLog(name=s.name, index=lst(s.index), source_split=s.source_split, questions=lst(s.questions),
                    answers=lst(s.answers), gt_loss=arr(s.gt_loss), paraphrased_loss=arr(s.paraphrased_loss),
                    perturbed_loss=lst(s.perturbed_loss), generations=lst(s.generations),
                    rougeL_recall=arr(s.rougeL_recall), truth_ratio=arr(s.truth_ratio),
                    probability=arr(s.probability), mia={k: np.asarray(v)[idx] for k, v in s.mia.items()})


def _utility_of(splits: dict[str, SplitLog]) -> float:
    values: dict[str, float | None] = {}
    for name in M.UTILITY_SPLITS:
        for measure, v in split_aggregates(splits[name])[0].items():
            values[f"{name}_{measure}"] = v
    return M.model_utility(values)


def utility_bootstrap(logs: EvalLogs, reference: EvalLogs | None = None, n_boot: int = 1000, level: float = 0.9,
                      seed: int = 0) -> dict[str, Any]:
    """How far model utility moves when the evaluated items are resampled: `n_boot` bootstrap
    resamples of the items of each utility split (retain, real authors, world facts), model
    utility recomputed on each. With `reference` (logs of the same items: another model, e.g. the
    target), the resamples are *paired* (the same items for both models) and the ratio
    MU(logs) / MU(reference) gets its interval too: the noise of a "≥ 0.95 × the target's" claim.
    On a few dozen items model utility is often decided by a handful of generations (the harmonic
    mean follows its smallest term, e.g. ROUGE-L on real authors). Returns the point values and
    the central `level` intervals."""
    for lg in (logs, reference):
        if lg is None:
            continue
        missing = [n for n in M.UTILITY_SPLITS if n not in lg.splits]
        if missing:
            raise UnlearnError(f"{lg.path or 'logs'}: no {', '.join(missing)} split for model utility")
    if reference is not None:
        for n in M.UTILITY_SPLITS:
            if list(reference.splits[n].index) != list(logs.splits[n].index):
                raise UnlearnError(f"paired bootstrap needs the same {n} items in both logs")
    rng = np.random.default_rng(seed)
    mu, ratio = [], []
    for _ in range(n_boot):
        idx = {n: rng.integers(0, len(logs.splits[n]), len(logs.splits[n])) for n in M.UTILITY_SPLITS}
        a = _utility_of({n: take_items(logs.splits[n], idx[n]) for n in M.UTILITY_SPLITS})
        mu.append(a)
        if reference is not None:
            b = _utility_of({n: take_items(reference.splits[n], idx[n]) for n in M.UTILITY_SPLITS})
            ratio.append(a / b if b > 0 else float("nan"))
    q = [(1 - level) / 2, (1 + level) / 2]
    out: dict[str, Any] = {"model_utility": _utility_of(logs.splits), "n_boot": n_boot, "level": level,
                           "model_utility_interval": [float(v) for v in np.quantile(mu, q)],
                           "items": {n: len(logs.splits[n]) for n in M.UTILITY_SPLITS}}
    if reference is not None:
        ref = _utility_of(reference.splits)
        r = np.asarray(ratio, dtype=float)
        out.update(reference_model_utility=ref, ratio=out["model_utility"] / ref if ref > 0 else None,
                   ratio_interval=[float(v) for v in np.nanquantile(r, q)])
    return out


def check_retain_reference(logs: EvalLogs, retain: EvalLogs) -> None:
    """Refuse a retain reference evaluated on other forget items (split or count)."""
    if "forget" not in logs.splits:
        raise UnlearnError(f"{logs.path or 'logs'} have no forget-split logs")
    check_retain_for(retain, logs.forget_split, len(logs.splits["forget"]), logs.splits["forget"].questions,
                     needs_truth_ratios=False)


def check_retain_for(retain: EvalLogs, forget_split: str | None, n_items: int, questions: list[str] | None,
                     needs_truth_ratios: bool = True) -> None:
    """Refuse, before an evaluation runs, a retain reference it could not be compared with: another
    forget split, another number of items (``--max-items``), other questions, or (with
    `needs_truth_ratios`) logs without the forget truth ratios forget quality is computed from."""
    where = retain.path or "retain logs"
    if "forget" not in retain.splits:
        raise UnlearnError(f"retain reference {where} has no forget-split logs")
    if forget_split and retain.forget_split and forget_split != retain.forget_split:
        raise UnlearnError(f"retain reference {where} was evaluated on {retain.forget_split}, "
                           f"this model on {forget_split}; evaluate both on the same forget split")
    m = len(retain.splits["forget"])
    if n_items != m:
        raise UnlearnError(f"retain reference {where} has {m} forget items, this model has {n_items}; "
                           "evaluate both on the same forget split and --max-items")
    q2 = retain.splits["forget"].questions
    if questions is not None and q2 is not None and list(questions) != list(q2):
        raise UnlearnError(f"retain reference {where} was evaluated on different forget questions "
                           "(same count, other items); use the same data source and forget split")
    if needs_truth_ratios and split_truth_ratios(retain.splits["forget"]) is None:
        raise UnlearnError(f"retain reference {where} has no forget truth ratios (paraphrased and perturbed "
                           "losses): forget quality cannot be computed from it")


def mixed_protocols(protocol: str | None, retain: EvalLogs) -> str | None:
    """Why a model evaluated under `protocol` and these retain logs are not comparable, or None.
    Two truth-ratio or MIA distributions computed under different prompts, tokenisations or
    evaluators differ for reasons other than forgetting. Each evaluator has its protocol
    (open-unlearning's TOFU_EVAL.json: open-unlearning; TOFU's eval_log*.json: tofu-legacy), so
    our logs under ``--protocol open-unlearning`` may be scored against open-unlearning's."""
    if protocol and retain.protocol and protocol != retain.protocol:
        return (f"retain logs {retain.path or ''} were evaluated under protocol '{retain.protocol}' "
                f"({retain.evaluator} evaluator), this model under '{protocol}'")
    return None


def check_same_protocol(protocol: str | None, retain: EvalLogs, allow_mixed: bool = False) -> str | None:
    """Refuse (`UnlearnError`, one line) retain logs of another protocol unless `allow_mixed`;
    returns the mismatch (None when there is none)."""
    why = mixed_protocols(protocol, retain)
    if why and not allow_mixed:
        raise UnlearnError(f"{why}; forget quality and privleak would compare distributions under different "
                           "prompts (evaluate both with the same --protocol, or pass --allow-mixed-protocols)")
    return why


def mia_aucs(logs: EvalLogs) -> tuple[dict[str, float | None], str | None]:
    """AUC per attack (forget vs holdout), or (all None, reason)."""
    f, h = logs.splits.get("forget"), logs.splits.get("holdout")
    out: dict[str, float | None] = {}
    for a in MIA_ATTACKS:
        if f is not None and h is not None and a in f.mia and a in h.mia:
            out[a] = M.mia_auc(f.mia[a], h.mia[a])
        else:
            out[a] = logs.mia_auc_given.get(a)
    if all(v is None for v in out.values()):
        reason = logs.extra.get("mia_reason") or "the logs have no holdout-split membership scores"
        return out, reason
    return out, None


def compute_summary(logs: EvalLogs, retain_logs: EvalLogs | None = None,
                    allow_mixed_protocols: bool = False) -> dict[str, Any]:
    """Every aggregate from per-item logs: ``{"metrics": {...}, "not_available": {key: reason},
    "n_items": {split: n}, "definitions": {...}}``. Metric keys:

    forget_quality, forget_quality_floor, forget_quality_ks_statistic, holdout_forget_quality,
    holdout_forget_quality_ks_statistic (retain-free), model_utility,
    ``{forget,retain,real_authors,world_facts}_{probability,rougeL_recall,truth_ratio}``,
    ``mia_auc_{loss,zlib,min_k,min_k_plus_plus}``, privleak (None when not computable).

    Retain logs of another protocol are refused (`check_same_protocol`) unless
    `allow_mixed_protocols`; then ``"mixed_protocols"`` in the result says how they differ."""
    mixed = None
    if retain_logs is not None:
        mixed = check_same_protocol(logs.protocol, retain_logs, allow_mixed_protocols)
    m: dict[str, float | None] = {}
    na: dict[str, str] = {}
    for name in EVAL_SPLITS:
        s = logs.splits.get(name)
        for measure in M.UTILITY_MEASURES:
            key = f"{name}_{measure}"
            if s is None:
                m[key], na[key] = None, f"no {name} split in the logs"
        if s is not None:
            vals, why = split_aggregates(s)
            for measure, v in vals.items():
                m[f"{name}_{measure}"] = v
                if measure in why:
                    na[f"{name}_{measure}"] = why[measure]
    try:
        m["model_utility"] = M.model_utility(m)
    except KeyError as exc:
        m["model_utility"], na["model_utility"] = None, str(exc.args[0])
    try:
        m["utility_proxy"] = M.utility_proxy(m)
    except KeyError as exc:
        m["utility_proxy"], na["utility_proxy"] = None, str(exc.args[0])

    m["forget_quality"] = m["forget_quality_floor"] = m["forget_quality_ks_statistic"] = None
    forget = logs.splits.get("forget")
    ours_tr = split_truth_ratios(forget) if forget is not None else None
    if retain_logs is None:
        na["forget_quality"] = "no retain-model logs given (--retain-logs)"
    elif ours_tr is None:
        na["forget_quality"] = "no forget truth ratios in the logs"
    else:
        check_retain_reference(logs, retain_logs)
        ret_tr = split_truth_ratios(retain_logs.splits["forget"])
        if ret_tr is None:
            na["forget_quality"] = "the retain logs have no forget truth ratios"
        else:
            fq = M.forget_quality(ours_tr, ret_tr)
            m["forget_quality"], m["forget_quality_floor"] = fq["pvalue"], fq["floor"]
            m["forget_quality_ks_statistic"] = fq["statistic"]
    if m["forget_quality"] is None:
        na["forget_quality_ks_statistic"] = na["forget_quality"]
        if ours_tr is not None:  # what the floor would be against a retain reference of the same size
            m["forget_quality_floor"] = M.ks_floor_pvalue(len(ours_tr), len(ours_tr))
        else:
            na["forget_quality_floor"] = na["forget_quality"]

    m["holdout_forget_quality"] = m["holdout_forget_quality_ks_statistic"] = None
    direction = None  # which way the forget items differ from the holdout's (`forgetting_direction`)
    hold = logs.splits.get("holdout")
    hold_tr = split_truth_ratios(hold) if hold is not None else None
    if hold is None:
        na["holdout_forget_quality"] = logs.extra.get("mia_reason") or "no holdout split in the logs"
    elif hold_tr is None:
        na["holdout_forget_quality"] = "the holdout items have no paraphrased / perturbed answers (no truth ratios)"
    elif ours_tr is None:
        na["holdout_forget_quality"] = "no forget truth ratios in the logs"
    else:
        hfq = M.holdout_forget_quality(ours_tr, hold_tr)
        m["holdout_forget_quality"], m["holdout_forget_quality_ks_statistic"] = hfq["pvalue"], hfq["statistic"]
        direction = M.forgetting_direction(ours_tr, hold_tr)
    if m["holdout_forget_quality"] is None:
        na["holdout_forget_quality_ks_statistic"] = na["holdout_forget_quality"]

    aucs, why = mia_aucs(logs)
    for a, v in aucs.items():
        m[f"mia_auc_{a}"] = v
        if v is None:
            na[f"mia_auc_{a}"] = why or "no scores for this attack in the logs"
    m["privleak"] = None
    if aucs.get(PRIVLEAK_ATTACK) is None:
        na["privleak"] = na[f"mia_auc_{PRIVLEAK_ATTACK}"]
    elif retain_logs is None:
        na["privleak"] = "no retain-model logs given (--retain-logs)"
    else:
        ref = mia_aucs(retain_logs)[0].get(PRIVLEAK_ATTACK)
        if ref is None:
            na["privleak"] = "the retain logs have no holdout membership scores"
        elif ref >= 1.0:
            na["privleak"] = "the retain model's MIA AUC is 1 (privleak divides by 1 - AUC_retain)"
        else:
            m["privleak"] = M.privleak(aucs[PRIVLEAK_ATTACK], ref)
    return {
        "metrics": m,
        "not_available": na,
        "forgetting_direction": direction,
        "n_items": {name: len(s) for name, s in logs.splits.items()},
        "definitions": DEFINITIONS,
        "logs": {"format": logs.fmt, "path": logs.path, "protocol": logs.protocol},
        "mixed_protocols": mixed,
        "retain_logs": None if retain_logs is None else {
            "format": retain_logs.fmt, "path": retain_logs.path, "protocol": retain_logs.protocol,
            "n_forget_items": len(retain_logs.splits["forget"]) if "forget" in retain_logs.splits else 0},
    }


def forgetting_note(d: dict[str, Any] | None) -> str:
    """``"the forget items ..."``: which way they differ from the holdout items (a `forgetting_direction`
    result, what the two-sided HFQ does not say), for printing; '' without a holdout comparison."""
    if not d:
        return ""
    return (f"the forget items {M.describe_forgetting(d['verdict'])} (median truth ratio {d['forget_median']:.3f} "
            f"vs the holdout's {d['holdout_median']:.3f})")


def retain_free_note(key: str) -> str:
    """What a retain-free score is compared with, for printing beside it ('' for other keys)."""
    if key == "holdout_forget_quality":
        return "retain-free: forget vs holdout items; near 1 = the forget items look unseen"
    if key.startswith("mia_auc_"):
        return "retain-free reference 0.5 = forget items look like unseen holdout items"
    return ""


def format_value(v: float | None, key: str = "") -> str:
    """4 significant digits; 'n/a' for missing values."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if "forget_quality" in key and "statistic" not in key:
        return f"{v:.4g}" if v >= 1e-3 else f"{v:.3e}"
    return f"{v:.4g}"
