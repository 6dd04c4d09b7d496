"""`llm-unlearn tune`: the best-step callback, and a 3-trial search on the tiny model that never opens
the retain logs before its final report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import ks_2samp

from llm_unlearn.eval import metrics as M
from llm_unlearn.tune import BestStepCallback, objective_value, score_distance, step_key
from llm_unlearn.unlearn import MODE_DEFAULTS


def test_step_key_prefers_feasible_then_hfq_then_smaller_statistic():
    a = {"feasible": True, "hfq": 0.2, "ks_statistic": 0.3, "utility_proxy": 0.5}
    b = {**a, "ks_statistic": 0.2}
    c = {**a, "feasible": False, "hfq": 0.9}
    assert step_key(b) > step_key(a) > step_key(c)


def test_step_key_sees_forgetting_while_the_sets_are_still_separated():
    """Forget and holdout scores completely apart: the KS p-value and statistic sit at their floor
    and 1 at every step, so only the distance between the two samples shows a step moving the forget
    scores towards the holdout ones. Without it the untouched start (highest utility) won every tie
    (SmolLM2 corpus tuning, session 12: every trial restored step 0)."""
    holdout = [-4.0 + 0.1 * i for i in range(10)]
    forget_start = [-1.0 + 0.1 * i for i in range(10)]
    forget_later = [x - 1.5 for x in forget_start]  # moved towards the holdout scores, still apart
    recs = []
    for forget, util in ((forget_start, 1.0), (forget_later, 0.99)):
        ks = ks_2samp(forget, holdout)
        recs.append({"feasible": True, "hfq": float(ks.pvalue), "ks_statistic": float(ks.statistic),
                     "distance": score_distance(forget, holdout), "utility_proxy": util})
    start, later = recs
    assert start["hfq"] == later["hfq"] and start["ks_statistic"] == later["ks_statistic"] == 1.0
    assert later["distance"] == pytest.approx(start["distance"] - 1.5)
    assert step_key(later) > step_key(start)
    assert objective_value(later, start) > objective_value(start, start)
    # a step that overshoots (forget scores now far below the holdout ones) is worse again
    overshoot = {**later, "distance": start["distance"] + 1.0}
    assert step_key(overshoot) < step_key(start)


def test_hfq_level_prefers_the_step_that_forgets_most_once_unseen():
    """A trial's scorings: the start (memorised), a step where forget and holdout scores cross
    (highest HFQ), a later one that forgot more (HFQ lower, still above 0.1), one far past it (HFQ
    at 0.02), and one past the utility floor. Level 1 (the default) keeps the crossing; 0.1 the
    most forgetting still above the level; 0 the most forgetting the utility floor allows. Optuna's
    value orders the steps the same way."""
    start = {"feasible": True, "hfq": 1e-5, "ks_statistic": 0.9, "distance": 2.0, "gap": 2.0, "utility_proxy": 1.0}
    cross = {"feasible": True, "hfq": 0.9, "ks_statistic": 0.1, "distance": 0.2, "gap": 0.1, "utility_proxy": 0.99}
    later = {"feasible": True, "hfq": 0.4, "ks_statistic": 0.2, "distance": 0.4, "gap": -0.3, "utility_proxy": 0.98}
    far = {"feasible": True, "hfq": 0.02, "ks_statistic": 0.5, "distance": 1.5, "gap": -1.5, "utility_proxy": 0.96}
    broken = {"feasible": False, "hfq": 0.5, "ks_statistic": 0.2, "distance": 0.5, "gap": -3.0, "utility_proxy": 0.5}
    steps = [start, cross, later, far, broken]
    for level, best in ((1.0, cross), (0.1, later), (0.0, far)):
        assert max(steps, key=lambda r, lv=level: step_key(r, lv)) is best, level
        assert max(steps[:4], key=lambda r, lv=level: objective_value(r, start, lv)) is best, level
        assert step_key(broken, level) < step_key(start, level)
    assert step_key(cross) == step_key(cross, 1.0)  # the default is the highest-HFQ rule
    # without a gap (an older scorer) a step above the level falls back to the HFQ order
    assert step_key({**later, "gap": None}, 0.1) < step_key(later, 0.1)


def test_each_rule_refuses_a_step_whose_one_term_fell():
    """The harmonic-mean proxy barely registers an 18 % drop of one large term (retain probability
    0.62 -> 0.51, as tuned NPO on SmolLM2) next to small gains elsewhere; the "each" rule (every term
    >= floor x its start) refuses the step."""
    from llm_unlearn.eval.metrics import utility_proxy

    start = {"retain_probability": 0.62, "retain_truth_ratio": 0.37, "real_authors_probability": 0.30,
             "real_authors_truth_ratio": 0.39, "world_facts_probability": 0.29, "world_facts_truth_ratio": 0.40}
    later = {**start, "retain_probability": 0.51, "retain_truth_ratio": 0.39, "world_facts_truth_ratio": 0.42}
    assert utility_proxy(later) > 0.99 * utility_proxy(start)  # the mean rule sees less than 1 % of it
    point = {"hfq": 0.5, "ks_statistic": 0.2, "utility_proxy": utility_proxy(later), "utility_terms": later}
    model = torch.nn.Linear(2, 2)
    for term_min, feasible in ((None, True), ({k: 0.95 * v for k, v in start.items()}, False)):
        cb = BestStepCallback(lambda m: dict(point), every=1, utility_min=0.95 * utility_proxy(start), term_min=term_min)
        cb._record(1, model)
        assert cb.history[-1]["feasible"] is feasible and cb.history[-1]["utility_terms"] == later


def _scripted_scorer(scripted: dict[int, tuple[float, float, float]]):
    """A score function for `BestStepCallback` called every 2 steps: step -> (HFQ, KS statistic,
    utility proxy) from `scripted`; `seen[step]` keeps the trainable weights it was called with."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    state = {"step": 0}

    def score(model):
        state["step"] += 2
        seen[state["step"]] = {n.replace(".default", ""): p.detach().clone()
                               for n, p in model.named_parameters() if p.requires_grad}
        hfq, d, util = scripted[state["step"]]
        return {"hfq": hfq, "ks_statistic": d, "utility_proxy": util}

    return score, seen


def test_callback_stops_at_and_restores_the_best_step(target_dir, synthetic_dir, tmp_path):
    """Scripted scores: the best is step 2; steps 4 and 6 are worse (and step 4 breaks the utility floor),
    so with patience 2 training stops at step 6 and the saved adapter holds the step-2 weights."""
    from safetensors.torch import load_file

    from llm_unlearn.unlearn import run_unlearning

    scripted = {2: (0.5, 0.3, 1.0), 4: (0.9, 0.1, 0.1), 6: (0.1, 0.6, 1.0), 8: (0.99, 0.0, 1.0)}
    score, seen = _scripted_scorer(scripted)

    cb = BestStepCallback(score, every=2, utility_min=0.95, patience=2,
                          initial={"hfq": 1e-3, "ks_statistic": 0.9, "utility_proxy": 1.0})
    out, manifest = run_unlearning(str(target_dir), synthetic_dir, tmp_path / "run", "npo", lora=True,
                                   overrides={"max_steps": 10, "learning_rate": 5e-3, "disable_tqdm": True},
                                   callbacks=[cb], score_hfq=False)
    assert manifest["steps"] == 6 and cb.stopped_early
    assert [h["step"] for h in cb.history] == [0, 2, 4, 6] and cb.best["step"] == 2
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert set(saved) == set(seen[2])
    assert all(torch.equal(saved[k], seen[2][k]) for k in saved)
    assert any(not torch.equal(seen[2][k], seen[6][k]) for k in saved)  # the weights did move after step 2


def test_callback_patience_waits_for_the_warmup(target_dir, synthetic_dir, tmp_path):
    """The same scripted dip as above (steps 4 and 6 worse than step 2), with a warm-up of 8 steps:
    patience does not stop the run at step 6, so the recovery at step 8 is found and restored."""
    from safetensors.torch import load_file

    from llm_unlearn.unlearn import run_unlearning

    scripted = {2: (0.5, 0.3, 1.0), 4: (0.9, 0.1, 0.1), 6: (0.1, 0.6, 1.0), 8: (0.99, 0.0, 1.0), 10: (0.2, 0.5, 1.0)}
    score, seen = _scripted_scorer(scripted)

    cb = BestStepCallback(score, every=2, utility_min=0.95, patience=2, warmup_steps=8,
                          initial={"hfq": 1e-3, "ks_statistic": 0.9, "utility_proxy": 1.0})
    out, manifest = run_unlearning(str(target_dir), synthetic_dir, tmp_path / "run", "npo", lora=True,
                                   overrides={"max_steps": 10, "learning_rate": 5e-3, "disable_tqdm": True},
                                   callbacks=[cb], score_hfq=False)
    assert manifest["steps"] == 10 and not cb.stopped_early
    assert [h["step"] for h in cb.history] == [0, 2, 4, 6, 8, 10] and cb.best["step"] == 8
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.equal(saved[k], seen[8][k]) for k in saved)


def test_patience_warmup_is_checked():
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.tune import TuneConfig, check_config

    with pytest.raises(UnlearnError, match="--patience-warmup"):
        check_config(TuneConfig(model="tiny", output="x", data="d", patience_warmup=1.5))


def test_tune_three_trials_never_opens_the_retain_logs(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    import llm_unlearn.eval.logs as logs_mod
    import llm_unlearn.unlearn as unlearn_mod
    from llm_unlearn.cli import main

    events: list[str] = []
    real_read, orig_run = logs_mod.read_logs, unlearn_mod.run_unlearning

    def spy_run(*a, **k):
        events.append("trial")
        return orig_run(*a, **k)

    def spy_read(path):
        events.append(f"read:{path}")
        return real_read(path)

    monkeypatch.setattr(unlearn_mod, "run_unlearning", spy_run)
    monkeypatch.setattr(logs_mod, "read_logs", spy_read)
    unreadable = tmp_path / "no_such_dir" / "retain_eval"
    out = tmp_path / "tune"
    rc = main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
               "--method", "npo", "--trials", "3", "--max-steps", "4", "--eval-every", "2", "--modes", "lora",
               "--retain-logs", str(unreadable), "--eval-max-items", "4", "--eval-max-new-tokens", "4"])
    assert rc == 0, capsys.readouterr().err
    assert events[:3] == ["trial"] * 3 and events[3:] == [f"read:{unreadable}"]
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials["trials"]) == 3
    # a new study starts at the library's LoRA defaults (unlearn's per-mode lr, NPO's beta), then TPE samples
    first = trials["trials"][0]
    assert first["default_point"] and [t["default_point"] for t in trials["trials"][1:]] == [False, False]
    assert first["params"]["learning_rate"] == pytest.approx(MODE_DEFAULTS["lora"]["learning_rate"])
    assert first["params"]["max_steps"] == 4 and first["params"]["beta"] == pytest.approx(0.1)
    assert all(t["history"][0]["step"] == 0 and t["best_step"] in [h["step"] for h in t["history"]]
               for t in trials["trials"])
    # every trial starts from the same model: the before-NLL is scored by the first and reused
    assert [t["nll"]["before_reused"] for t in trials["trials"]] == [False, True, True]
    assert len({(t["nll"]["forget_before"], t["nll"]["retain_before"]) for t in trials["trials"]}) == 1
    summary = json.loads((out / "tune.json").read_text())
    assert "retain_logs_error" in summary["final_report"]
    assert summary["start"]["gap"] > 0  # the target knows its forget answers better than the holdout ones
    assert summary["chosen"]["utility_proxy"] >= summary["utility_min"]
    assert (out / "trials.png").is_file() and (out / "study.db").is_file()
    # the chosen run loads like any unlearn output and carries its evaluation
    from llm_unlearn.models import load_model

    assert load_model(str(out / "chosen")) is not None
    assert json.loads((out / "chosen" / "run.json").read_text())["restored_step"] == summary["chosen"]["best_step"]
    assert (out / "chosen" / "eval" / "summary.json").is_file()
    # each scored step is logged as it happens (a killed trial leaves what it scored) and reported
    for t in trials["trials"]:
        logged = [json.loads(line) for line in (out / "trials" / f"trial_{t['number']:03d}.scores.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged] == [h["step"] for h in t["history"]]
        assert [r["hfq"] for r in logged] == [h["hfq"] for h in t["history"]]
    printed = capsys.readouterr().out
    assert "trial 0 step 2: HFQ" in printed and "lowest term" in printed
    # every scored step says which way its forget items differ from unseen ones; the start's stop short
    assert all(h["direction"] in M.FORGETTING_VERDICTS for t in trials["trials"] for h in t["history"])
    assert trials["trials"][0]["history"][0]["direction"] == "short"
    chosen = next(t for t in trials["trials"] if t["number"] == trials["chosen"])
    assert summary["chosen"]["direction"] == chosen["direction"] == next(h["direction"] for h in chosen["history"] if h["step"] == chosen["best_step"])
    assert f"at the chosen step the forget items {M.describe_forgetting(chosen['direction'])}" in printed


def test_tune_bad_input_exits_2(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "t"),
                 "--method", "idk_dpo"]) == 2
    assert "error: tune supports methods" in capsys.readouterr().err
    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "t"),
                 "--modes", "lora,qlora"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("storage", ["notaurl://x"])
def test_tune_bad_storage(target_dir, synthetic_dir, tmp_path, capsys, storage):
    from llm_unlearn.cli import main

    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "t"),
                 "--storage", storage, "--trials", "1", "--max-steps", "2", "--eval-every", "2"]) == 2
    assert "error: --storage" in capsys.readouterr().err


def test_a_failed_trial_does_not_stop_the_search(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    import llm_unlearn.unlearn as unlearn_mod
    from llm_unlearn.errors import DivergenceError
    from llm_unlearn.tune import TuneConfig, tune

    orig_run, calls = unlearn_mod.run_unlearning, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise DivergenceError("loss is nan at step 3; try a lower learning_rate")
        return orig_run(*a, **k)

    monkeypatch.setattr(unlearn_mod, "run_unlearning", flaky)
    summary = tune(TuneConfig(model=str(target_dir), data=str(synthetic_dir), output=str(tmp_path / "t"), trials=2,
                              max_steps=2, eval_every=2, modes="lora", final_eval=False))
    assert summary["failed_trials"] == {0: "loss is nan at step 3; try a lower learning_rate"}
    assert summary["trials"] == 1 and summary["chosen"]["number"] == 1
    assert "trial 0" in capsys.readouterr().out


def test_resume_continues_a_killed_search(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    """A search killed in its second trial resumes from its own study: the finished trial is kept
    as it was (not run again), the interrupted one runs again with the same parameters, the failed
    one still counts against the budget, and only the missing trials are run. Other search settings
    are refused."""
    import llm_unlearn.unlearn as unlearn_mod
    from llm_unlearn.cli import main
    from llm_unlearn.errors import DivergenceError
    from llm_unlearn.tune import TuneConfig, tune

    orig_run, calls = unlearn_mod.run_unlearning, []

    def killed_in_third(*a, **k):
        calls.append(Path(k["output"]).name)
        if len(calls) == 2:
            raise DivergenceError("loss is nan at step 1")
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies inside its third trial
        return orig_run(*a, **k)

    out = tmp_path / "t"
    args = ["--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out), "--method", "npo",
            "--max-steps", "2", "--eval-every", "2", "--modes", "lora", "--no-final-eval"]
    monkeypatch.setattr(unlearn_mod, "run_unlearning", killed_in_third)
    with pytest.raises(KeyboardInterrupt):
        tune(TuneConfig(model=str(target_dir), data=str(synthetic_dir), output=str(out), method="npo", trials=4,
                        max_steps=2, eval_every=2, modes="lora", final_eval=False, progress=False))
    capsys.readouterr()
    first = json.loads((out / "trials" / "trial_000" / "record.json").read_text())
    assert not (out / "trials.json").exists()

    import optuna

    study = optuna.load_study(study_name="tune-npo-forget10", storage=f"sqlite:///{out / 'study.db'}")
    interrupted = study.trials[2].params

    # other search settings: refused, nothing touched
    assert main(["tune", *args, "--trials", "4", "--resume", "--lr-lora", "1e-4", "1e-3"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: --resume") and "lr_lora" in err
    assert (out / "trials" / "trial_000" / "record.json").is_file()

    spy_calls: list[str] = []

    def spy(*a, **k):
        spy_calls.append(Path(k["output"]).name)
        return orig_run(*a, **k)

    import llm_unlearn.tune as tune_mod

    scorings, real_score = [], tune_mod.score_splits

    def counting_score(*a, **k):
        scorings.append(1)
        return real_score(*a, **k)

    monkeypatch.setattr(tune_mod, "score_splits", counting_score)
    monkeypatch.setattr(unlearn_mod, "run_unlearning", spy)
    assert main(["tune", *args, "--trials", "4", "--resume"]) == 0, capsys.readouterr().err
    # the starting model's scores come from the state file: only the two trials' steps are scored
    assert len(scorings) == 2
    assert json.loads((out / "tune.json").read_text())["start"] == json.loads((out / "tune_state.json").read_text())["start"]
    assert "trial 2 was interrupted" in capsys.readouterr().out
    assert spy_calls == ["trial_003", "trial_004"]  # the retry of trial 2, then one new trial; trial 0 not rerun
    trials = json.loads((out / "trials.json").read_text())
    assert [t["number"] for t in trials["trials"]] == [0, 3, 4]
    assert trials["failed"] == {"1": "loss is nan at step 1"}
    assert trials["trials"][0] == {**first, "run_dir": str(out / "trials" / "trial_000")}
    study = optuna.load_study(study_name="tune-npo-forget10", storage=f"sqlite:///{out / 'study.db'}")
    assert study.trials[3].params == interrupted and study.trials[3].user_attrs["retry_of"] == 2
    assert study.trials[4].params not in [t.params for t in study.trials[:4]]  # new points, not the start's again
    summary = json.loads((out / "tune.json").read_text())
    assert summary["resumed"] and summary["trials"] == 3 and (out / "chosen" / "run.json").is_file()

    # a larger budget later: only the extra trial runs
    spy_calls.clear()
    assert main(["tune", *args, "--trials", "5", "--resume"]) == 0
    assert spy_calls == ["trial_005"]


# --------------------------------------------------------------------------------------------
# corpora


@pytest.fixture(scope="module")
def domain_target(tmp_path_factory, tiny_tokenizer):
    """The synthetic domain (8 devices, 8 held-out devices) and a tiny model finetuned on its
    forget and retain corpora."""
    from llm_unlearn.data.domain import generate_domain, write_domain
    from llm_unlearn.finetune import finetune_on_corpus
    from llm_unlearn.models import build_tiny_model

    dom = write_domain(generate_domain(8, seed=0), tmp_path_factory.mktemp("domain"))
    model = build_tiny_model(tiny_tokenizer, seed=0)
    finetune_on_corpus(model, tiny_tokenizer, [dom / "forget_corpus.jsonl", dom / "retain_corpus.jsonl"],
                       epochs=20, lr=5e-3, batch_size=8, max_length=64, progress=False)
    target = tmp_path_factory.mktemp("domain_target")
    model.save_pretrained(target)
    tiny_tokenizer.save_pretrained(target)
    return dom, target


def _corpus_argv(dom, target, out) -> list[str]:
    return ["tune", "--model", str(target), "--forget-corpus", str(dom / "forget_corpus.jsonl"),
            "--retain-corpus", str(dom / "retain_corpus.jsonl"), "--holdout-corpus", str(dom / "holdout_corpus.jsonl"),
            "--output", str(out)]


def test_tune_on_corpus(domain_target, tmp_path, monkeypatch, capsys):
    """Two trials on the domain corpus, scored by the retain-free corpus forget quality (KS p-value of
    per-window Min-K% scores, forget vs held-out documents) and the held-out retain documents'
    token probability; the held-out retain documents never reach training."""
    import llm_unlearn.unlearn as unlearn_mod
    from llm_unlearn.cli import main
    from llm_unlearn.data.corpus import load_corpus
    from llm_unlearn.models import load_model

    dom, target = domain_target
    calls: list[dict] = []
    orig_run = unlearn_mod.run_unlearning

    def spy_run(*a, **k):
        calls.append(k)
        return orig_run(*a, **k)

    monkeypatch.setattr(unlearn_mod, "run_unlearning", spy_run)
    out = tmp_path / "tune"
    rc = main([*_corpus_argv(dom, target, out), "--trials", "2", "--max-steps", "6", "--eval-every", "3",
               "--patience", "0", "--modes", "full", "--lr-full", "1e-3", "3e-3", "--max-length", "64",
               "--utility-items", "8", "--utility-floor", "0.5", "--score-items", "6"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "tune.json").read_text())
    assert summary["inputs"] == "corpus" and "Min-K% Prob" in summary["objective"]
    # the finetuned model tells its training documents from held-out ones: forget quality near the floor
    assert summary["start"]["hfq"] < 1e-6
    assert summary["start"]["gap"] > 0  # ... and finds its forget documents more familiar (Min-K%) than them
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 2 and len(calls) == 2
    for t in trials:  # unlearning moved the forget windows' NLL up; every scoring step was recorded
        assert [h["step"] for h in t["history"]] == list(range(0, t["params"]["max_steps"] + 1, 3))
        assert t["history"][-1]["forget_nll"] > t["history"][0]["forget_nll"]
        assert all("gap" in h and h["direction"] in M.FORGETTING_VERDICTS for h in t["history"])
    # the chosen step forgot more than the start: a higher HFQ, or (both at the KS floor, as on some
    # hosts' numerics) forget and holdout scores closer together
    chosen, start = summary["chosen"], summary["start"]
    assert chosen["hfq"] > start["hfq"] or (chosen["hfq"] == start["hfq"] and (
        chosen["ks_statistic"], chosen["distance"]) < (start["ks_statistic"], start["distance"]))
    assert summary["chosen"]["utility_proxy"] >= summary["utility_min"]
    # the first --utility-items retain documents are held out of every trial's training
    held = set(load_corpus(dom / "retain_corpus.jsonl")["text"][:8])
    assert all(k["retain_exclude"] == held and k["data"] is None and k["forget_corpus"] for k in calls)
    run = json.loads((out / "chosen" / "run.json").read_text())
    assert run["retain_documents"] == 36 - 8 and run["chunking"]["max_length"] == 64
    report = summary["final_report"]
    assert report["documents"] == {"forget": 8, "holdout": 8, "retain": 8}  # all of them, not --score-items 6
    assert report["floor"] <= report["corpus_forget_quality"] <= 1 and report["windows"]["forget"] > 8
    assert load_model(str(out / "chosen")) is not None


@pytest.mark.parametrize("extra, message", [
    (["--data", "DATA"], "corpus and QA inputs cannot be mixed: --forget-corpus was given with --data"),
    (["--forget-split", "forget10"], "cannot be mixed: --forget-corpus was given with --forget-split"),
    (["--retain-logs", "x"], "cannot be mixed: --forget-corpus was given with --retain-logs"),
    (["--holdout-split", "holdout10"], "cannot be mixed: --forget-corpus was given with --holdout-split"),
    (["--max-length", "1"], "--max-length must be >= 2"),
])
def test_tune_corpus_bad_input_exits_2(domain_target, synthetic_dir, tmp_path, capsys, extra, message):
    from llm_unlearn.cli import main

    dom, target = domain_target
    out = tmp_path / "t"
    extra = [str(synthetic_dir) if a == "DATA" else a for a in extra]
    assert main([*_corpus_argv(dom, target, out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_tune_corpus_needs_its_holdout_and_retain_corpora(domain_target, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    dom, target = domain_target
    out = tmp_path / "t"
    base = ["tune", "--model", str(target), "--output", str(out), "--forget-corpus", str(dom / "forget_corpus.jsonl")]
    cases = [
        ([*base, "--retain-corpus", str(dom / "retain_corpus.jsonl")], "needs --holdout-corpus"),
        ([*base, "--holdout-corpus", str(dom / "holdout_corpus.jsonl")], "needs --retain-corpus"),
        ([*base, "--retain-corpus", str(dom / "retain_corpus.jsonl"), "--holdout-corpus",
          str(dom / "forget_corpus.jsonl")], "forget and holdout corpora overlap"),
        ([*base, "--retain-corpus", str(dom / "retain_corpus.jsonl"), "--holdout-corpus",
          str(dom / "holdout_corpus.jsonl"), "--utility-items", "36"], "held out of training"),
        (["tune", "--model", str(target), "--output", str(out), "--data", str(synthetic_dir), "--holdout-corpus",
          str(dom / "holdout_corpus.jsonl")], "--holdout-corpus goes with --forget-corpus"),
        (["tune", "--model", str(target), "--output", str(out), "--data", str(synthetic_dir), "--retain-corpus",
          str(dom / "retain_corpus.jsonl")], "--retain-corpus needs --forget-corpus"),
        (["tune", "--model", str(target), "--output", str(out)], "no forget data"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (argv, err)
    assert not out.exists()


def test_default_points_and_sampler_seed():
    from llm_unlearn.tune import TuneConfig, default_points, sampler_seed

    cfg = TuneConfig(model="m", output="o", data="d", method="npo", modes="lora,full", masks="wagle,none",
                     max_steps=30, lr_full=(3e-6, 5e-5))
    lora, full = default_points(cfg)
    assert (lora["mode"], full["mode"]) == ("lora", "full")
    assert lora["lr_lora"] == pytest.approx(MODE_DEFAULTS["lora"]["learning_rate"])
    assert full["lr_full"] == pytest.approx(5e-5)  # unlearn's 1e-4, clipped into the searched range
    assert lora["mask"] == "wagle" and lora["mask_ratio"] == 0.5 and lora["max_steps"] == 30
    assert default_points(TuneConfig(model="m", output="o", method="simnpo", modes="full"))[0]["beta"] == 2.5
    assert "beta" not in default_points(TuneConfig(model="m", output="o", method="grad_diff", modes="full"))[0]
    # RMU: its own lr (5e-5, within the RMU range, not the full-weight one) and alpha (1200); the adaptive
    # steering scale at the middle of its range
    rmu = default_points(TuneConfig(model="m", output="o", method="rmu", modes="full"))[0]
    assert rmu["lr_full"] == pytest.approx(5e-5) and rmu["alpha"] == 1200.0 and rmu["steering_scale"] == pytest.approx(2.0)
    # the same --seed gives different searches different random start points, and the same search the same
    seeds = {sampler_seed(TuneConfig(model="m", output="o", method=m, masks=k)) for m in ("npo", "simnpo", "grad_diff")
             for k in ("none", "wagle")}
    assert len(seeds) == 6
    assert sampler_seed(cfg) == sampler_seed(TuneConfig(**{**cfg.__dict__}))


def test_tune_each_rule_end_to_end(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    out = tmp_path / "tune_each"
    rc = main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
               "--method", "npo", "--trials", "2", "--max-steps", "4", "--eval-every", "2", "--modes", "lora",
               "--utility-rule", "each", "--no-final-eval", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "tune.json").read_text())
    assert "every utility term" in summary["objective"]
    start = summary["start"]["utility_terms"]
    assert len(start) == 6
    trials = json.loads((out / "trials.json").read_text())["trials"]
    for t in trials:
        for h in t["history"]:
            assert h["feasible"] == all(h["utility_terms"][k] >= 0.95 * v for k, v in start.items())
    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "x"),
                 "--utility-rule", "median"]) == 2
    assert "--utility-rule must be one of mean, each" in capsys.readouterr().err


def test_tune_rmu_on_corpus_searches_the_adaptive_steering_scale(domain_target, tmp_path, capsys):
    """RMU is tunable: each trial's steering scale reaches the trainer (recorded in its run)."""
    from llm_unlearn.cli import main

    dom, target = domain_target
    out = tmp_path / "tune_rmu"
    rc = main([*_corpus_argv(dom, target, out), "--method", "rmu", "--trials", "2", "--max-steps", "2",
               "--eval-every", "2", "--modes", "full", "--max-length", "64", "--utility-items", "8",
               "--score-items", "6", "--no-final-eval"])
    assert rc == 0, capsys.readouterr().err
    trials = json.loads((out / "trials.json").read_text())["trials"]
    scales = [t["params"]["steering_scale"] for t in trials]
    assert scales[0] == pytest.approx(2.0) and len(set(scales)) == 2
    for t in trials:
        run = json.loads((Path(t["run_dir"]) / "run.json").read_text())
        assert run["hyperparameters"]["steering_scale"] == pytest.approx(t["params"]["steering_scale"])
        assert 1e-5 <= t["params"]["learning_rate"] <= 1e-3


def test_hfq_reference_start_scores_the_holdout_once(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    """Default reference: the holdout items are scored on the starting model only; every later HFQ
    is the KS p-value of that step's forget truth ratios against the start's holdout ones. With
    ``current`` the holdout items are rescored at every step (and their ratios move)."""
    import llm_unlearn.tune as tune_mod
    from llm_unlearn.cli import main
    from llm_unlearn.eval.metrics import holdout_forget_quality

    splits_scored: list[set[str]] = []
    real = tune_mod.score_splits

    def spy(model, tokenizer, rows, **kw):
        splits_scored.append(set(rows))
        return real(model, tokenizer, rows, **kw)

    monkeypatch.setattr(tune_mod, "score_splits", spy)
    histories = {}
    for ref in ("start", "current"):
        splits_scored.clear()
        monkeypatch.setenv("LLM_UNLEARN_TUNE_START_CACHE", str(tmp_path / f"cache_{ref}"))  # each scores its start
        out = tmp_path / ref
        rc = main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
                   "--method", "npo", "--trials", "1", "--max-steps", "4", "--eval-every", "2", "--modes", "lora",
                   "--no-final-eval", "--hfq-reference", ref])
        assert rc == 0, capsys.readouterr().err
        with_holdout = ["holdout" in s for s in splits_scored]
        assert len(splits_scored) == 3  # the start, steps 2 and 4
        assert with_holdout == ([True, False, False] if ref == "start" else [True, True, True])
        trials = json.loads((out / "trials.json").read_text())
        start, history = trials["start"], trials["trials"][0]["history"]
        histories[ref] = history
        assert len(start["holdout_truth_ratios"]) > 0
        if ref == "start":
            for h in history[1:]:
                expected = holdout_forget_quality(h["forget_truth_ratios"], start["holdout_truth_ratios"])
                assert h["hfq"] == pytest.approx(expected["pvalue"])
                assert h["ks_statistic"] == pytest.approx(expected["statistic"])
                assert "holdout_truth_ratios" not in h  # the same list every time: kept once, in the start
        else:
            assert history[-1]["holdout_truth_ratios"] != start["holdout_truth_ratios"]  # the holdout moved
        assert "HFQ: forget items vs" in capsys.readouterr().out
    # the training is the same: the two searches differ only in what the forget ratios are compared with
    assert histories["start"][-1]["forget_truth_ratios"] == pytest.approx(histories["current"][-1]["forget_truth_ratios"])


def test_hfq_reference_is_checked(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    rc = main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "t"),
               "--hfq-reference", "retain"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --hfq-reference must be one of start, current")


def test_holdout_items_apart_from_the_forget_items(synthetic_dir):
    """`--holdout-items`: the holdout side of HFQ may hold more items than the forget side (with the
    start reference they are scored once), from the holdout split or from the authors outside a
    `--max-authors` subset."""
    import llm_unlearn.unlearn as unlearn_mod
    from llm_unlearn.data.tofu import load_tofu

    n_hold = len(load_tofu("holdout10", synthetic_dir))
    rows, _ = unlearn_mod.hfq_rows(synthetic_dir, "forget10", 3, holdout_items=n_hold)
    assert len(rows["forget"]) == 3 and len(rows["holdout"]) == n_hold > 3
    rows, _ = unlearn_mod.hfq_rows(synthetic_dir, "forget10", 3)
    assert len(rows["holdout"]) == 3
    default, _ = unlearn_mod.hfq_rows(synthetic_dir, "forget10", 2, max_authors=2)
    wide, _ = unlearn_mod.hfq_rows(synthetic_dir, "forget10", 2, max_authors=2, holdout_items=5)
    assert len(default["holdout"]) == 2 and len(wide["holdout"]) == 5
    assert not {r["question"] for r in wide["holdout"]} & {r["question"] for r in wide["forget"]}


def test_beta_and_alpha_range(target_dir, synthetic_dir, tmp_path, capsys):
    """`--beta-range` (and `--alpha-range`) replaces the method's β (α) range: the default point is clipped into it and every
    sampled β lies in it; bad ranges and methods without β are one-line errors."""
    import optuna

    from llm_unlearn.cli import main
    from llm_unlearn.tune import TuneConfig, default_points, suggest

    cfg = TuneConfig(model="m", output="o", method="npo", modes="lora", beta_range=(0.01, 0.03))
    assert default_points(cfg)[0]["beta"] == pytest.approx(0.03)  # NPO's default 0.1, clipped
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        assert 0.01 <= suggest(study.ask(), cfg)["beta"] <= 0.03
    base = ["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(tmp_path / "t")]
    assert main([*base, "--beta-range", "0.5", "0.1"]) == 2
    assert "error: --beta-range: expected 0 < LOW <= HIGH" in capsys.readouterr().err
    assert main([*base, "--method", "grad_diff", "--beta-range", "0.1", "0.2"]) == 2
    assert "error: --beta-range applies to npo, simnpo, not grad_diff" in capsys.readouterr().err
    # --alpha-range likewise, for every method (the retain term's weight; LOW = HIGH fixes it)
    fixed = TuneConfig(model="m", output="o", method="grad_diff", modes="lora", alpha_range=(3.0, 3.0))
    assert default_points(fixed)[0]["alpha"] == pytest.approx(3.0)  # the config's 1.0, clipped
    assert suggest(study.ask(), fixed)["alpha"] == pytest.approx(3.0)
    assert main([*base, "--alpha-range", "0", "1"]) == 2
    assert "error: --alpha-range: expected 0 < LOW <= HIGH" in capsys.readouterr().err


def test_start_scores_are_cached_across_searches(target_dir, synthetic_dir, tmp_path, monkeypatch, capsys):
    """A second search of the same model on the same items (another output, method or budget) reads
    the starting model's scores from the cache instead of scoring them again; other items are
    another key."""
    import llm_unlearn.tune as tune_mod
    from llm_unlearn.cli import main

    calls: list[int] = []
    real = tune_mod.score_splits

    def spy(model, tokenizer, rows, **kw):
        calls.append(1)
        return real(model, tokenizer, rows, **kw)

    monkeypatch.setattr(tune_mod, "score_splits", spy)
    starts = []
    for name, extra in (("a", []), ("b", ["--method", "simnpo"]), ("c", ["--score-items", "3"])):
        calls.clear()
        out = tmp_path / name
        assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
                     "--trials", "1", "--max-steps", "2", "--eval-every", "2", "--modes", "lora", "--no-final-eval",
                     *extra]) == 0, capsys.readouterr().err
        starts.append(json.loads((out / "trials.json").read_text())["start"])
        printed = capsys.readouterr().out
        assert len(calls) == (1 if name == "b" else 2), name  # b: only step 2 scored
        assert ("an earlier search of this model on these items" in printed) == (name == "b")
    assert starts[1] == starts[0] and starts[2] != starts[0]
    assert len(list((tmp_path / "tune_start_cache").glob("*.json"))) == 2


def _rec(number, mode, lr, verdict, beta=None, best_step=10, infeasible_later=False):
    params = {"mode": mode, "learning_rate": lr, "max_steps": 20, "alpha": 1.0, "mask": "none"}
    if beta is not None:
        params["beta"] = beta
    hist = [{"step": 0, "direction": "short", "feasible": True},
            {"step": 10, "direction": verdict, "feasible": True},
            {"step": 20, "direction": verdict, "feasible": not infeasible_later}]
    return {"number": number, "params": params, "best_step": best_step, "history": hist}


def test_guided_point_bisects_against_the_direction():
    """`--guided`: after a trial that stopped short, NPO's β goes down (other methods: the lr up);
    after one that overshot, the other way; bisected (log scale) between the closest trials of each
    verdict; an 'alike' trial, or an empty bracket, leaves the next draw to TPE."""
    from llm_unlearn.tune import TuneConfig, guided_point, trial_direction

    npo = TuneConfig(model="m", output="o", method="npo", modes="lora", beta_range=(0.01, 1.0))
    done = [_rec(0, "lora", 2e-3, "short", beta=0.1)]
    point, why = guided_point(done, npo)
    assert point["beta"] == pytest.approx(math.sqrt(0.01 * 0.1)) and point["lr_lora"] == 2e-3
    assert point["max_steps"] == 20 and point["mode"] == "lora" and why.startswith("trial 0 short: beta 0.1 ->")
    done.append(_rec(1, "lora", 2e-3, "overshot", beta=point["beta"]))
    point, _ = guided_point(done, npo)
    assert point["beta"] == pytest.approx(math.sqrt(math.sqrt(0.01 * 0.1) * 0.1))  # between the two
    done.append(_rec(2, "lora", 2e-3, "alike", beta=point["beta"]))
    assert guided_point(done, npo) is None  # looks unseen: TPE explores from here
    # other methods move the learning rate: up after short, down after overshooting
    gd = TuneConfig(model="m", output="o", method="grad_diff", modes="lora", lr_lora=(1e-4, 4e-3))
    up, _ = guided_point([_rec(0, "lora", 1e-3, "short")], gd)
    assert up["lr_lora"] == pytest.approx(math.sqrt(1e-3 * 4e-3))
    # a trial that kept the start while a later step fell under the utility floor went too far
    collapsed = _rec(0, "lora", 1e-3, "short", best_step=0, infeasible_later=True)
    assert trial_direction(collapsed) == "overshot"
    down, why = guided_point([collapsed], gd)
    assert down["lr_lora"] == pytest.approx(math.sqrt(1e-4 * 1e-3)) and "overshot" in why
    assert guided_point([_rec(0, "lora", 4e-3, "short")], gd) is None  # already at the range's top


def test_guided_search_end_to_end(target_dir, synthetic_dir, tmp_path, capsys):
    """A 2-trial guided search on the tiny model: a learning rate too small to move it leaves the
    first trial short of unseen items, so the second runs at the same point with a smaller β."""
    from llm_unlearn.cli import main

    out = tmp_path / "guided"
    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
                 "--method", "npo", "--trials", "2", "--max-steps", "4", "--eval-every", "2", "--modes", "lora",
                 "--lr-lora", "1e-7", "1e-7", "--beta-range", "0.05", "0.5", "--guided", "--no-final-eval"]) == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["history"][-1]["direction"] for t in trials] == ["short", "short"]
    assert trials[0]["default_point"] and not trials[0]["guided"]
    assert trials[1]["guided"] == f"trial 0 short: beta 0.1 -> {math.sqrt(0.05 * 0.1):.3g}"
    assert trials[1]["params"]["beta"] == pytest.approx(math.sqrt(0.05 * 0.1))
    assert trials[1]["params"]["learning_rate"] == trials[0]["params"]["learning_rate"]
    assert "(guided: trial 0 short" in capsys.readouterr().out
    # a finished search resumed with a larger budget goes on guided, bracketed by both trials
    assert main(["tune", "--model", str(target_dir), "--data", str(synthetic_dir), "--output", str(out),
                 "--method", "npo", "--trials", "3", "--max-steps", "4", "--eval-every", "2", "--modes", "lora",
                 "--lr-lora", "1e-7", "1e-7", "--beta-range", "0.05", "0.5", "--guided", "--no-final-eval",
                 "--resume"]) == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and trials[2]["guided"].startswith("trial 1 short")
    assert trials[2]["params"]["beta"] == pytest.approx(math.sqrt(0.05 * math.sqrt(0.05 * 0.1)))
