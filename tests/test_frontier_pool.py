"""`benchmarks/tofu_frontier.py --rank-pool`: the Spearman over all frontier runs pools earlier result
files on the same models (the same runs directory), each run once, this invocation's copy first."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_unlearn.tune import TuneConfig, beta_range

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tofu_frontier  # noqa: E402


def _row(run, fq, hfq, hfq_start=None):
    return {"run": run, "forget_quality": fq, "holdout_forget_quality": hfq, "hfq_start": hfq_start}


def _write(path, runs_dir, rows):
    path.write_text(json.dumps({"runs_dir": str(runs_dir), "rows": rows}))
    return str(path)


def test_pooled_agreement_counts_each_run_once_on_the_same_models(tmp_path):
    runs_dir = tmp_path / "cache" / "runs_abc"
    runs_dir.mkdir(parents=True)
    same = _write(tmp_path / "a.json", runs_dir, [
        _row("retain", 1.0, 0.9), _row("target", 1e-5, 1e-5), _row("old_a", 0.02, 0.01),
        _row("old_b", 0.3, 0.5), _row("mine", 0.9, 0.0001)])  # an older copy of "mine": replaced
    other = _write(tmp_path / "b.json", tmp_path / "cache" / "runs_other", [_row("foreign", 0.5, 1e-9)])
    rows = [_row("retain", 1.0, 0.9), _row("target", 1e-5, 1e-5, 1e-5), _row("mine", 0.6, 0.7, 0.8)]

    pooled = tofu_frontier.pooled_agreement(rows, runs_dir, [same, other])

    assert pooled["files"] == ["a.json"]  # another runs directory: other models, not pooled
    assert pooled["runs"]["runs"] == ["mine", "old_a", "old_b", "target"]  # retain left out, "mine" once
    assert pooled["runs"]["spearman"] == pytest.approx(1.0)  # this invocation's "mine" (HFQ 0.7, FQ 0.6)
    assert pooled["runs_anchored"]["n"] == 2 and pooled["runs_anchored"]["spearman"] is None  # < 3 runs
    # the target line of the benchmark reads the pooled figure when there is one
    targets = tofu_frontier.frontier_targets(rows, {"runs": {"spearman": -1.0, "n": 2}, "pooled": pooled})
    spearman = next(t for t in targets if t["target"].startswith("HFQ ranks runs"))
    assert spearman["measured"] == pytest.approx(1.0) and spearman["n"] == 4 and spearman["pass"] is True


def test_tune_beta_range_reaches_the_npo_rows_only():
    """`--tune-beta-range` is on NPO's scale: SimNPO (another scale) and GradDiff (no β) keep the
    library's ranges, so one invocation can tune all four rows."""
    args = SimpleNamespace(tune_beta_range=[0.02, 0.05])
    got = {name: tofu_frontier.tuned_beta_range(method, args) for name, (method, _) in tofu_frontier.TUNED.items()}
    assert got == {"npo_rt": (0.02, 0.05), "npo_rt_wagle": (0.02, 0.05), "simnpo": None, "graddiff": None}
    assert beta_range(TuneConfig(model="m", data="d", output="o", method="simnpo", beta_range=got["simnpo"])) == (0.5, 5.0)
    assert tofu_frontier.tuned_beta_range("npo", SimpleNamespace(tune_beta_range=None)) is None


def test_chosen_direction_read_or_recomputed():
    """The tuned table's direction column: the tuner's record, or for older rows the chosen step's
    forget truth ratios against the start's holdout (anchored reference) recomputed."""
    hold = [0.7 + 0.002 * i for i in range(80)]
    old_step = {"step": 50, "hfq": 1e-9, "forget_truth_ratios": [0.3 + 0.002 * i for i in range(80)]}
    trials = {"start": {"holdout_truth_ratios": hold},
              "trials": [{"number": 0, "history": [{"step": 0}, old_step]},
                         {"number": 1, "history": [{"step": 25, "direction": "overshot"}]}]}
    assert tofu_frontier.chosen_direction(trials, {"number": 0, "best_step": 50}) == "short"
    old_step["forget_truth_ratios"] = [1.2 + 0.002 * i for i in range(80)]
    assert tofu_frontier.chosen_direction(trials, {"number": 0, "best_step": 50}) == "overshot"
    old_step["holdout_truth_ratios"] = old_step["forget_truth_ratios"]  # a moving reference, logged per step
    assert tofu_frontier.chosen_direction(trials, {"number": 0, "best_step": 50}) == "alike"
    assert tofu_frontier.chosen_direction(trials, {"number": 1, "best_step": 25}) == "overshot"
    assert tofu_frontier.chosen_direction(trials, {"number": 1, "best_step": 99}) is None


def test_hfq_holdout_sets_joins_an_earlier_reports_rows(tmp_path):
    """`hfq_holdout_sets.py --with-rows`: an earlier report's rows join for the runs not scored again
    (weights gone); a run scored in both is compared, not duplicated; another holdout layout is refused."""
    import hfq_holdout_sets

    cols = ["forget_quality", "own spread 240", "anchored spread 240"]
    old = [{"run": "target", "forget_quality": 2e-5, "own spread 240": 1e-6, "anchored spread 240": 1e-6},
           {"run": "gone", "forget_quality": 0.3, "own spread 240": 0.2, "anchored spread 240": 0.25}]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"rows": old}))
    mine = [{"run": "target", "forget_quality": 2e-5, "own spread 240": 1.1e-6, "anchored spread 240": 1e-6},
            {"run": "new", "forget_quality": 0.05, "own spread 240": 0.01, "anchored spread 240": 0.02}]

    rows, agreement = hfq_holdout_sets.earlier_rows(str(path), mine, cols)

    assert [r["run"] for r in rows] == ["gone"] and rows[0]["from"] == str(path)
    assert agreement == {"target": pytest.approx(0.1)}  # the rebuilt target read 10 % off on one column
    assert hfq_holdout_sets.earlier_rows(None, mine, cols) == ([], {})
    with pytest.raises(ValueError, match="rows without 'own all 400'"):
        hfq_holdout_sets.earlier_rows(str(path), mine, [*cols, "own all 400"])


def test_a_worker_mixing_finetuning_with_other_tasks_is_refused(tmp_path, capsys):
    """`--worker ft:target,eval:target` once finetuned and skipped the evaluation without a word; an
    ft worker ends after finetuning (the evaluations need both models), so the mix is refused up front."""
    code = tofu_frontier.main(["--data", str(tmp_path / "none"), "--cache", str(tmp_path / "cache"),
                               "--worker", "ft:target,eval:target"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --worker ft:target,eval:target: ft:ROLE tasks run in a worker of their own; "
                   "run eval:target in the next worker"]
    assert not (tmp_path / "cache").exists()


def test_tune_lr_range_pins_the_default_trial_to_a_recorded_point(tmp_path):
    """`--tune-lr-range X X` with fixed β / α ranges and one trial: the one (default) trial is the
    recorded trial's point, in every tuned mode, which is how a tuned row whose weights are gone is rerun."""
    from llm_unlearn.tune import default_points

    args = tofu_frontier.build_parser().parse_args([
        "--tuned", "npo_rt", "--tune-trials", "1", "--tune-steps", "40", "--tune-modes", "lora,full",
        "--tune-lr-range", "2.024e-5", "2.024e-5", "--tune-beta-range", "0.2037", "0.2037",
        "--tune-alpha-range", "1.3996", "1.3996"])
    args.retain_split = "retain90"
    cfg = tofu_frontier.tune_config("npo_rt", tmp_path / "target", tmp_path / "data", args, tmp_path / "out",
                                    tmp_path / "retain.json", seed=0)
    assert cfg.lr_lora == cfg.lr_full == (2.024e-5, 2.024e-5)
    points = default_points(cfg)
    assert [(p["mode"], p[f"lr_{p['mode']}"], p["beta"], p["alpha"], p["max_steps"]) for p in points] == [
        ("lora", 2.024e-5, 0.2037, 1.3996, 40), ("full", 2.024e-5, 0.2037, 1.3996, 40)]
    unpinned = tofu_frontier.build_parser().parse_args(["--tuned", "npo_rt", "--tune-modes", "lora"])
    unpinned.retain_split = "retain90"
    assert tofu_frontier.tune_config("npo_rt", tmp_path, tmp_path, unpinned, tmp_path, tmp_path, 0).lr_lora == (1e-4, 3e-3)
