"""TOFU evaluation: metrics as pure functions (`metrics`), per-item log readers and aggregates
(`logs`), retain-free scores on corpora (`corpus_scores`), the model evaluator (`evaluator`, on several processes `sharded`), loading a saved run for
evaluation (`loading`) and Markdown/HTML reports (`report`)."""

from llm_unlearn.eval.attacks import AttackConfig, find_attack_summary, run_attacks, write_attacks
from llm_unlearn.eval.corpus_scores import score_corpus, window_scores
from llm_unlearn.eval.evaluator import (
    evaluate_items,
    evaluate_model,
    generate_answers,
    load_eval_rows,
    score_answers,
    score_splits,
    write_eval,
)
from llm_unlearn.eval.lm_eval_tasks import lm_eval_summary, run_lm_eval
from llm_unlearn.eval.loading import load_for_eval
from llm_unlearn.eval.logs import EvalLogs, SplitLog, compute_summary, read_logs
from llm_unlearn.eval.memorisation import corpus_memorisation, verbatim_memorisation
from llm_unlearn.eval.metrics import (
    corpus_forget_quality,
    corpus_utility_proxy,
    forget_quality,
    forget_truth_ratio_score,
    forgetting_direction,
    holdout_forget_quality,
    ks_floor_pvalue,
    mia_auc,
    model_utility,
    normalised_probability,
    privleak,
    probability,
    rouge_l_recall,
    spearman,
    truth_ratios,
    utility_proxy,
    utility_truth_ratio_score,
)
from llm_unlearn.eval.report import build_report, load_run
from llm_unlearn.eval.sharded import evaluate_sharded

__all__ = [
    "AttackConfig", "EvalLogs", "SplitLog", "build_report", "compute_summary", "evaluate_items", "evaluate_model",
    "evaluate_sharded", "find_attack_summary", "forget_quality", "forget_truth_ratio_score", "forgetting_direction", "generate_answers",
    "holdout_forget_quality", "ks_floor_pvalue", "load_eval_rows", "load_for_eval", "load_run", "mia_auc",
    "model_utility", "normalised_probability", "privleak", "probability", "read_logs", "rouge_l_recall",
    "run_attacks", "score_answers", "score_splits", "spearman", "truth_ratios", "utility_proxy",
    "utility_truth_ratio_score", "write_attacks", "write_eval",
    "corpus_memorisation", "lm_eval_summary", "run_lm_eval", "verbatim_memorisation",
    "corpus_forget_quality", "corpus_utility_proxy", "score_corpus", "window_scores",
]
