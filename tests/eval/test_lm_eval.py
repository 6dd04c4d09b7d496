"""lm-eval scoring on the offline synthetic domain (llm_unlearn.eval.lm_eval_tasks) and MUSE
verbatim memorisation (llm_unlearn.eval.memorisation)."""

from __future__ import annotations

import pytest

from llm_unlearn.data.domain import generate_domain, write_domain
from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.lm_eval_tasks import lm_eval_summary, run_lm_eval
from llm_unlearn.eval.memorisation import corpus_memorisation, verbatim_memorisation

TASKS = "synth_domain,synth_general"


@pytest.fixture(scope="module")
def domain_dir(tmp_path_factory):
    return write_domain(generate_domain(6, seed=0), tmp_path_factory.mktemp("domain"))


def test_domain_fixture_layout(domain_dir):
    rows = generate_domain(6, seed=0)
    assert len(rows["domain_mcq"]) == 6 * 6 and len(rows["forget_corpus"]) == 6
    for q in rows["domain_mcq"] + rows["general_mcq"]:
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4 and 0 <= q["answer"] < 4
    # every domain answer is stated in its device's document
    docs = {d["device"]: d["text"] for d in rows["forget_corpus"]}
    assert all(q["choices"][q["answer"]] in docs[q["device"]] for q in rows["domain_mcq"])
    assert (domain_dir / "tasks" / "synth_domain.yaml").is_file()
    # the held-out documents: as many further devices, written the same way, none of the forget ones
    assert len(rows["holdout_corpus"]) == 6 and not {d["device"] for d in rows["holdout_corpus"]} & set(docs)
    assert (domain_dir / "holdout_corpus.jsonl").is_file()


def test_several_documents_per_device_each_state_every_fact_in_their_own_order():
    one, four = generate_domain(8, seed=0), generate_domain(8, seed=0, documents=4, mentions=1)
    assert len(one["forget_corpus"]) == 8 and len(four["forget_corpus"]) == 4 * 8 == len(four["holdout_corpus"])
    assert len(four["domain_mcq"]) == len(one["domain_mcq"])  # one question per fact, however many documents
    by_device: dict[str, list[str]] = {}
    for d in four["forget_corpus"]:
        by_device.setdefault(d["device"], []).append(d["text"])
    assert all(len(texts) == 4 for texts in by_device.values())
    for q in four["domain_mcq"]:  # every document of a device states each of its facts
        assert all(q["choices"][q["answer"]] in t for t in by_device[q["device"]])
    for texts in by_device.values():
        assert len(set(texts)) == 4 and len({t.split(".")[0] for t in texts}) > 1  # own order and wording
        assert all(t.count(".") == 6 for t in texts)  # mentions=1: six facts, each once
    with pytest.raises(ValueError, match="documents"):
        generate_domain(4, documents=0)


@pytest.mark.parametrize("n_devices", [4, 8, 24])
def test_choices_are_balanced_so_a_question_blind_scorer_gets_chance(n_devices):
    """Whatever a scorer prefers among the choices (shorter, longer, first in order: what an
    untrained model's summed log-likelihood does), if it ignores the question it scores 25 %."""
    rules = {"shortest": lambda c: min(c, key=lambda s: (len(s), s)),
             "longest": lambda c: max(c, key=lambda s: (len(s), s)),
             "first": min, "last": max}
    rows = generate_domain(n_devices, seed=1)
    for part in ("domain_mcq", "general_mcq"):
        for name, rule in rules.items():
            acc = sum(q["choices"].index(rule(q["choices"])) == q["answer"] for q in rows[part]) / len(rows[part])
            assert acc == pytest.approx(0.25), (part, name)


def test_lm_eval_returns_accuracy_on_tiny_model(tiny_model, tiny_tokenizer, domain_dir):
    res = run_lm_eval(tiny_model, tiny_tokenizer, TASKS, include=domain_dir / "tasks", batch_size=16)
    assert set(res) == {"synth_domain", "synth_general"}
    for task, n in (("synth_domain", 36), ("synth_general", len(generate_domain(1)["general_mcq"]))):
        assert 0.0 <= res[task]["acc"] <= 1.0 and res[task]["n"] == n
        assert res[task]["chance"] == pytest.approx(0.25)
        assert res[task]["acc_stderr"] > 0


def test_unknown_task_is_a_clear_error(tiny_model, tiny_tokenizer, domain_dir):
    with pytest.raises(UnlearnError, match="unknown lm-eval task.*no_such_task"):
        run_lm_eval(tiny_model, tiny_tokenizer, "synth_domain,no_such_task", include=domain_dir / "tasks")


def test_lm_eval_summary_is_pure():
    results = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
                     "acc_norm_stderr,none": "N/A"}}
    samples = {"t": [{"arguments": [0, 1, 2, 3]}, {"arguments": [0, 1]}]}
    out = lm_eval_summary(results, samples)["t"]
    assert out == {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25, "acc_norm_stderr": None,
                   "chance": pytest.approx(0.375), "n": 2}


def test_verbatim_memorisation_metric():
    out = verbatim_memorisation(["the cat sat on the mat", "nothing alike here"],
                                ["the cat sat on the mat", "a dog ran far away"])
    assert out["per_item"][0] == pytest.approx(1.0) and out["per_item"][1] == pytest.approx(0.0)
    assert out["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        verbatim_memorisation(["a"], [])


def test_corpus_memorisation_runs_and_skips_short_docs(tiny_model, tiny_tokenizer):
    texts = ["The Veltrax condenser is cooled with argon at forty bar. " * 5, "too short"]
    out = corpus_memorisation(tiny_model, tiny_tokenizer, texts, prefix_tokens=8, continuation_tokens=8)
    assert out["documents"] == 1 and out["skipped"] == 1 and 0.0 <= out["mean"] <= 1.0
    with pytest.raises(UnlearnError, match="no document"):
        corpus_memorisation(tiny_model, tiny_tokenizer, ["short"], prefix_tokens=8, continuation_tokens=8)


@pytest.mark.slow
def test_finetuned_model_beats_chance_and_rmu_brings_it_down(tiny_model, tiny_tokenizer, domain_dir, tmp_path):
    """The tiny model learns the domain (beats chance), then RMU on the domain corpus (general
    corpus retained) brings domain accuracy back down while general accuracy holds up. RMU's
    target is adaptive (s x each token's own norm): a fixed c = 100 moved the domain accuracy by 0
    to 0.06 on one host and by more on another."""
    from llm_unlearn.finetune import finetune_on_corpus
    from llm_unlearn.unlearn import run_unlearning

    model = finetune_on_corpus(tiny_model, tiny_tokenizer, [domain_dir / "forget_corpus.jsonl",
                                                            domain_dir / "retain_corpus.jsonl"],
                               epochs=60, lr=5e-3, batch_size=8, max_length=128, progress=False)
    before = run_lm_eval(model, tiny_tokenizer, TASKS, include=domain_dir / "tasks", batch_size=16)
    dom = before["synth_domain"]
    assert dom["acc"] > dom["chance"] + 2 * dom["acc_stderr"], before
    texts = [d["text"] for d in generate_domain(6, 0)["forget_corpus"]]
    mem_before = corpus_memorisation(model, tiny_tokenizer, texts, prefix_tokens=16, continuation_tokens=16)
    _, manifest = run_unlearning(model, None, tmp_path / "rmu", "rmu", tokenizer=tiny_tokenizer,
                                 forget_corpus=domain_dir / "forget_corpus.jsonl",
                                 retain_corpus=domain_dir / "retain_corpus.jsonl",
                                 overrides={"max_steps": 80, "per_device_train_batch_size": 4, "max_length": 128,
                                            "steering_scale": 4.0, "alpha": 10.0, "learning_rate": 1e-2, "update_params": "all",
                                            "logging_steps": 100})
    assert manifest["chunking"]["forget"]["dropped_tokens"] == 0
    after = run_lm_eval(model, tiny_tokenizer, TASKS, include=domain_dir / "tasks", batch_size=16)
    assert after["synth_domain"]["acc"] <= dom["acc"] - 0.1, (before, after)
    assert manifest["nll"]["forget_after"] > 2 * manifest["nll"]["forget_before"]
    mem_after = corpus_memorisation(model, tiny_tokenizer, texts, prefix_tokens=16, continuation_tokens=16)
    assert mem_after["mean"] < mem_before["mean"]


def _corpus_run(tmp_path):
    import json

    from llm_unlearn.runinfo import write_manifest

    run = tmp_path / "rmu_run"
    run.mkdir()
    write_manifest(run, kind="unlearn", method="rmu", model="tiny", data=None, forget_corpus="f.jsonl",
                   forget_split=None, forget_items=4, hyperparameters={"steering_coeff": 6.5})
    (run / "eval").mkdir()
    summary = {"lm_eval": {"synth_domain": {"acc": 0.375, "acc_stderr": 0.05, "chance": 0.25, "n": 24},
                           "synth_general": {"acc": 0.9, "acc_stderr": 0.04, "chance": 0.25, "n": 32}},
               "verbatim_memorisation": {"mean": 0.123, "documents": 4}}
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return run


def test_lm_eval_in_report_and_model_card(tmp_path, tiny_model, tiny_tokenizer):
    from llm_unlearn.eval.lm_eval_tasks import lm_eval_markdown
    from llm_unlearn.eval.report import build_report
    from llm_unlearn.hub.card import build_model_card, collect_run

    run = _corpus_run(tmp_path)
    tiny_model.save_pretrained(run)
    tiny_tokenizer.save_pretrained(run)
    assert lm_eval_markdown([("x", {"metrics": {}})]) == []
    md = build_report([run], tmp_path / "rep")["markdown"].read_text()
    assert "synth_domain acc (chance)" in md and "| rmu_run | 37.5 ± 5.0 (25.0) | 90.0 ± 4.0 (25.0) | 0.123 |" in md
    card = str(build_model_card(collect_run(run), "org/tiny-rmu"))
    assert "37.5 ± 5.0 (25.0)" in card and "verbatim" in card
