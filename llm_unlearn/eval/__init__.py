"""TOFU evaluation: metrics as pure functions (`metrics`), per-item log readers and aggregates
(`logs`), the model evaluator (`evaluator`, on several processes `sharded`), loading a saved run for
evaluation (`loading`) and Markdown/HTML reports (`report`)."""

from llm_unlearn.eval.attacks import AttackConfig, find_attack_summary, run_attacks, write_attacks
from llm_unlearn.eval.evaluator import (
    evaluate_items,
    evaluate_model,
    generate_answers,
    load_eval_rows,
    score_answers,
    score_splits,
    write_eval,
)
from llm_unlearn.eval.loading import load_for_eval
from llm_unlearn.eval.logs import EvalLogs, SplitLog, compute_summary, read_logs
from llm_unlearn.eval.metrics import (
    forget_quality,
    forget_truth_ratio_score,
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
    "evaluate_sharded", "find_attack_summary", "forget_quality", "forget_truth_ratio_score", "generate_answers",
    "holdout_forget_quality", "ks_floor_pvalue", "load_eval_rows", "load_for_eval", "load_run", "mia_auc",
    "model_utility", "normalised_probability", "privleak", "probability", "read_logs", "rouge_l_recall",
    "run_attacks", "score_answers", "score_splits", "spearman", "truth_ratios", "utility_proxy",
    "utility_truth_ratio_score", "write_attacks", "write_eval",
]
