"""Attacks on unlearning (llm_unlearn.eval.attacks) on tiny models: the A / B split, relearning,
bitsandbytes quantization, CKA, recovery, and the `attack` / `eval --attacks` commands."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval import metrics as M
from llm_unlearn.eval.attacks import (
    AttackConfig,
    attack_model,
    author_ids,
    build_plan,
    hidden_representations,
    item_values,
    layer_cka,
    parse_attacks,
    quantized_models,
    relearn,
    split_by_author,
    summarise,
)
from llm_unlearn.models import load_model, load_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def two_author_data(synthetic_dir, tmp_path_factory):
    """The synthetic source plus ``forget20_perturbed``: the forget10 author and the
    retain_perturbed author (10 QA each), so relearning has two authors to split."""
    out = tmp_path_factory.mktemp("two_authors")
    for p in synthetic_dir.iterdir():
        shutil.copy2(p, out / p.name)
    rows = [*(out / "retain_perturbed.jsonl").read_text().splitlines(),
            *(out / "forget10_perturbed.jsonl").read_text().splitlines()]
    (out / "forget20_perturbed.jsonl").write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def target(target_dir):
    return load_model(str(target_dir)), load_tokenizer(str(target_dir))


# --- the A / B split -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ab_split_never_puts_one_author_in_both_halves(seed):
    rng = random.Random(seed)
    rows = [{"author": f"a{rng.randrange(7)}", "question": str(i)} for i in range(60)]
    authors = author_ids(rows, qa_per_author=20)
    a, b = split_by_author(authors, seed=seed)
    assert sorted(a + b) == list(range(60))
    assert not {authors[i] for i in a} & {authors[i] for i in b}
    assert a and b


def test_ab_split_by_blocks_keeps_each_author_whole():
    authors = author_ids([{"question": str(i)} for i in range(100)], qa_per_author=20)
    a, b = split_by_author(authors, seed=3)
    blocks_a, blocks_b = {i // 20 for i in a}, {i // 20 for i in b}
    assert not blocks_a & blocks_b and len(blocks_a) == 3 and len(blocks_b) == 2
    with pytest.raises(UnlearnError, match="at least 2 authors"):
        split_by_author(author_ids([{"question": "q"}] * 5, qa_per_author=20))


def test_plan_splits_the_forget_set_by_author(two_author_data):
    plan = build_plan(two_author_data, "forget20", AttackConfig())
    assert len(plan.a_idx) == len(plan.b_idx) == 10
    assert {i // 10 for i in plan.a_idx} != {i // 10 for i in plan.b_idx}
    assert plan.paraphrase_questions[0] != plan.rows[0]["question"]
    assert plan.fewshot_questions[0].count("Question:") == 4 and plan.fewshot_questions[0].endswith(plan.rows[0]["question"])


# --- recovery and CKA as pure functions ----------------------------------------------------


def test_recovery_scale():
    assert M.recovery(0.1, 0.1, 0.9) == 0.0
    assert M.recovery(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert M.recovery(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert np.isnan(M.recovery(0.5, 0.3, 0.3))


def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert M.linear_cka(x, x) == pytest.approx(1.0)
    assert M.linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)
    assert M.linear_cka(x, rng.normal(size=(200, 16))) < 0.3
    assert M.linear_cka(x[:10], x[:10] @ q) == pytest.approx(1.0)  # n < d: through the Gram matrices


def test_cka_of_a_model_with_itself_is_one_and_with_another_init_lower(synthetic_dir, tiny_tokenizer):
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import build_tiny_model

    rows = load_tofu("forget10_perturbed", synthetic_dir).to_list()
    m0, m1 = build_tiny_model(tiny_tokenizer, seed=0), build_tiny_model(tiny_tokenizer, seed=1)
    r0 = hidden_representations(m0, tiny_tokenizer, rows)
    same = layer_cka(r0, hidden_representations(m0, tiny_tokenizer, rows))
    other = layer_cka(r0, hidden_representations(m1, tiny_tokenizer, rows))
    assert len(same) == m0.config.num_hidden_layers + 1
    assert np.allclose(same, 1.0, atol=1e-6)
    # token-level CKA: a repeated token is one identical row in either model, so unrelated models share
    # that structure and stay well above 0; "clearly lower" here is a tenth or more below 1
    assert np.mean(other) < 0.9 and max(other) < 0.95


def test_cka_compares_answer_tokens_by_default(synthetic_dir, tiny_tokenizer):
    """Default CKA positions are the answer tokens: as many rows as answer tokens (capped), fewer
    than with every position, and a bad positions name is one UnlearnError."""
    from llm_unlearn.data.qa import encode_qa
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import build_tiny_model

    rows = load_tofu("forget10_perturbed", synthetic_dir).to_list()
    m0 = build_tiny_model(tiny_tokenizer, seed=0)
    encs = [encode_qa(tiny_tokenizer, r["question"], r["answer"]) for r in rows]
    n_answer = sum(sum(1 for t in e["labels"] if t != -100) for e in encs)
    n_all = sum(len(e["input_ids"]) for e in encs)
    answer = hidden_representations(m0, tiny_tokenizer, rows, max_tokens=100_000)
    every = hidden_representations(m0, tiny_tokenizer, rows, max_tokens=100_000, positions="all")
    assert answer[0].shape[0] == n_answer < n_all == every[0].shape[0]
    assert hidden_representations(m0, tiny_tokenizer, rows, max_tokens=7)[0].shape[0] == 7
    with pytest.raises(UnlearnError, match="positions"):
        hidden_representations(m0, tiny_tokenizer, rows, positions="question")
    with pytest.raises(UnlearnError, match="cka_positions"):
        AttackConfig(cka_positions="question")


def test_cka_shift_puts_the_unlearned_model_on_the_retain_models_scale():
    from llm_unlearn.eval.attacks import cka_shift

    cka = {"unlearned_vs_target": {"mean": 0.9}, "target_vs_retain": {"mean": 0.8}}
    assert cka_shift(cka) == pytest.approx(0.5)
    assert cka_shift({"unlearned_vs_target": {"mean": 1.0}, "target_vs_retain": {"mean": 0.8}}) == 0.0
    assert cka_shift({"unlearned_vs_target": {"mean": 0.9}}) is None
    assert cka_shift({"unlearned_vs_target": {"mean": 0.9}, "target_vs_retain": {"mean": 1.0}}) is None


# --- relearning and quantization -----------------------------------------------------------


def test_relearning_the_target_on_a_recovers_its_own_b_values(target, tiny_model, two_author_data):
    """The target relearned on A keeps its B values: on the scale where a random model (which
    knows nothing) is 0 and the target is 1, the relearned target sits at ~1."""
    model, tok = target
    cfg = AttackConfig(attacks=("relearn",), relearn_steps=(10,), max_new_tokens=24)
    plan = build_plan(two_author_data, "forget20", cfg)
    results = {"unlearned": attack_model(tiny_model, tok, plan, progress=False),
               "target": attack_model(model, tok, plan, progress=False)}
    entry = summarise(plan, results)["attacks"]["relearn_10"]
    assert entry["items"] == "B" and entry["n_items"] == 10
    assert entry["target"]["before"]["probability"] > entry["unlearned"]["before"]["probability"] + 0.2
    for metric in ("probability", "rougeL_recall"):
        assert entry["target_recovery"][metric] == pytest.approx(1.0, abs=0.1)


def test_relearning_trains_on_a(retain_dir, two_author_data):
    """Relearning really finetunes: a model that never saw the forget set gains probability on A."""
    model, tok = load_model(str(retain_dir)), load_tokenizer(str(retain_dir))
    plan = build_plan(two_author_data, "forget20", AttackConfig(attacks=("relearn",), max_new_tokens=2))
    rows_a = [plan.rows[i] for i in plan.a_idx]
    before = np.mean(item_values(model, tok, rows_a, plan.config)["probability"])
    (step, relearned), = list(relearn(model, tok, rows_a, steps=[20], lr=3e-3, batch_size=4))
    after = np.mean(item_values(relearned, tok, rows_a, plan.config)["probability"])
    assert step == 20 and after > before + 0.1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), load_model(str(retain_dir)).parameters()))


def test_quantizing_the_target_in_8bit_keeps_forget_probability(target, synthetic_dir):
    pytest.importorskip("bitsandbytes")
    model, tok = target
    cfg = AttackConfig(attacks=("quantize",), max_new_tokens=2)
    rows = build_plan(synthetic_dir, "forget10", cfg).rows
    base = np.array(item_values(model, tok, rows, cfg)["probability"])
    got = {mode: np.array(item_values(q, tok, rows, cfg)["probability"])
           for mode, q in quantized_models(model, ["int8", "nf4"])}
    assert abs(got["int8"].mean() - base.mean()) < 0.02
    assert np.abs(got["int8"] - base).max() < 0.05
    assert not np.allclose(got["nf4"], base, atol=1e-4)  # 4-bit really reloaded quantised


# --- the commands --------------------------------------------------------------------------


def test_cli_attack_names_match_the_library():
    from llm_unlearn.cli.attack_cmd import ATTACK_NAMES, QUANT_MODE_NAMES
    from llm_unlearn.eval.attacks import ATTACKS, QUANT_MODES

    assert ATTACK_NAMES == ATTACKS and QUANT_MODE_NAMES == QUANT_MODES


def test_bad_attack_name_or_split_is_a_one_line_error(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.cli import main

    with pytest.raises(UnlearnError, match="unknown attack 'bogus'; valid attacks: relearn"):
        parse_attacks("relearn,bogus")
    base = ["attack", "--model", str(target_dir), "--data", str(synthetic_dir), "--device", "cpu"]
    for extra, expected in ((["--attacks", "relearn,bogus"], "unknown attack 'bogus'"),
                            (["--forget-split", "forget77"], "unknown split 'forget77_perturbed'"),
                            (["--quant-modes", "int3"], "unknown quantization mode(s) int3")):
        out = tmp_path / f"out{len(extra[1])}"
        capsys.readouterr()
        assert main([*base, *extra, "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
        assert not out.exists()
    # relearning needs two authors; forget10 of the tiny synthetic set has one
    assert main([*base, "--attacks", "relearn", "--output", str(tmp_path / "one")]) == 2
    assert "at least 2 authors" in capsys.readouterr().err


@pytest.mark.slow
def test_attack_cli_writes_every_attacked_value(target_dir, retain_dir, two_author_data, tmp_path):
    from llm_unlearn.cli import main

    out = tmp_path / "att"
    assert main(["attack", "--model", str(retain_dir), "--data", str(two_author_data), "--forget-split", "forget20",
                 "--target-model", str(target_dir), "--retain-model", str(retain_dir), "--relearn-steps", "2,3",
                 "--max-new-tokens", "4", "--device", "cpu", "--attacks", "all", "--quant-modes", "nf4",
                 "--output", str(out)]) == 0
    summary = json.loads((out / "attacks.json").read_text())
    assert list(summary["attacks"]) == ["relearn_2", "relearn_3", "quantize_nf4", "paraphrase", "fewshot"]
    entry = summary["attacks"]["quantize_nf4"]
    for role in ("unlearned", "target", "retain"):
        assert set(entry[role]["after"]) == {"probability", "rougeL_recall", "truth_ratio"}
    assert set(entry["recovery"]) == {"probability", "rougeL_recall"}
    assert set(summary["cka"]) == {"unlearned_vs_target", "unlearned_vs_retain", "target_vs_retain"}
    assert summary["cka"]["unlearned_vs_retain"]["mean"] == pytest.approx(1.0)  # the retain model attacked as itself
    items = json.loads((out / "attacks_per_item.json").read_text())
    assert len(items["values"]["target"]["relearn_3"]["probability"]) == len(items["B"]) == 10
    assert len(items["values"]["unlearned"]["paraphrase"]["generation"]) == 20


def test_eval_attacks_keep_every_attacked_value(target_dir, retain_dir, two_author_data, tmp_path):
    """`eval --attacks`: the attack summary goes into summary.json and every attacked per-item value
    into per_item.json, beside the evaluation."""
    from llm_unlearn.cli import main
    from llm_unlearn.eval.attacks import find_attack_summary

    ev = tmp_path / "ev"
    assert main(["eval", "--model", str(retain_dir), "--data", str(two_author_data), "--forget-split", "forget20",
                 "--target-model", str(target_dir), "--attacks", "paraphrase", "--max-items", "20",
                 "--max-new-tokens", "4", "--device", "cpu", "--output", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    entry = summary["attacks"]["attacks"]["paraphrase"]
    assert entry["n_items"] == 20 and set(entry) >= {"unlearned", "target", "recovery", "target_recovery"}
    per_item = json.loads((ev / "per_item.json").read_text())
    values = per_item["attacks"]["values"]
    assert len(values["unlearned"]["paraphrase"]["probability"]) == len(values["target"]["baseline"]["rougeL_recall"]) == 20
    assert find_attack_summary(ev)["attacks"]["paraphrase"]["n_items"] == 20
    assert summary["metrics"]["forget_probability"] is not None  # the evaluation itself is unchanged
