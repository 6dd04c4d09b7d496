"""The evaluator on the tiny model: per-item NLL against model(...).loss, batch invariance, MIA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from llm_unlearn.data.qa import encode_qa
from llm_unlearn.data.tofu import load_tofu
from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.evaluator import evaluate_model, generate_answers, score_answers, write_eval
from llm_unlearn.eval.logs import read_logs

# float32 forward passes of differently padded batches agree to ~1e-6; we allow 1e-5 (absolute, nats)
BATCH_ATOL = 1e-5


def _direct_loss(model, tok, question, answer) -> float:
    enc = encode_qa(tok, question, answer)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]]))
    return float(out.loss)


@pytest.fixture(scope="module")
def tiny_eval(synthetic_dir, tiny_tokenizer):
    from llm_unlearn.models import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, seed=0)
    res = {bs: evaluate_model(model, tiny_tokenizer, str(synthetic_dir), max_items=4, batch_size=bs,
                              max_new_tokens=6, progress=False) for bs in (1, 8)}
    return model, res


def test_per_item_nll_equals_direct_model_loss(tiny_eval, synthetic_dir, tiny_tokenizer):
    model, res = tiny_eval
    items = res[8]["per_item"]["splits"]["forget"]["items"]
    rows = load_tofu("forget10_perturbed", synthetic_dir, max_items=4).to_list()
    for item, row in zip(items, rows):
        assert item["gt_loss"] == pytest.approx(_direct_loss(model, tiny_tokenizer, row["question"], row["answer"]), abs=1e-5)
        assert item["paraphrased_loss"] == pytest.approx(
            _direct_loss(model, tiny_tokenizer, row["question"], row["paraphrased_answer"]), abs=1e-5)
        for j, p in enumerate(row["perturbed_answer"]):
            assert item["perturbed_loss"][j] == pytest.approx(_direct_loss(model, tiny_tokenizer, row["question"], p), abs=1e-5)
        assert item["gt_loss_sum"] == pytest.approx(item["gt_loss"] * item["gt_num_tokens"], rel=1e-5)
    ra = res[8]["per_item"]["splits"]["real_authors"]["items"][0]
    assert "paraphrased_loss" not in ra and len(ra["perturbed_loss"]) == 3


def test_batch_size_1_and_8_give_the_same_values(tiny_eval):
    _, res = tiny_eval
    for split, block in res[1]["per_item"]["splits"].items():
        other = res[8]["per_item"]["splits"][split]["items"]
        for a, b in zip(block["items"], other):
            for key in ("gt_loss", "paraphrased_loss"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], abs=BATCH_ATOL)
            if "perturbed_loss" in a:
                np.testing.assert_allclose(a["perturbed_loss"], b["perturbed_loss"], atol=BATCH_ATOL)
            assert a.get("gt_num_tokens") == b.get("gt_num_tokens")
            if "mia" in a:
                for attack, v in a["mia"].items():
                    # Min-K%++ divides by σ of log p, near 0 on a random tiny model: relative noise
                    assert v == pytest.approx(b["mia"][attack], abs=1e-4, rel=2e-4), attack


def test_summary_states_what_it_computed(tiny_eval):
    _, res = tiny_eval
    s = res[8]["summary"]
    # max_items 4 caps the generated splits; the holdout (scored only) is all of holdout10 (10 < holdout_size(4))
    assert s["n_items"] == {"forget": 4, "retain": 4, "real_authors": 4, "world_facts": 4, "holdout": 10}
    assert s["source_splits"]["forget"] == "forget10_perturbed" and s["source_splits"]["holdout"] == "holdout10"
    assert s["metrics"]["forget_quality"] is None and "retain" in s["not_available"]["forget_quality"]
    assert s["metrics"]["forget_quality_floor"] == pytest.approx(2 / 70)  # exact KS, n = m = 4
    assert 0.0 <= s["metrics"]["mia_auc_min_k"] <= 1.0
    assert {"forget_quality", "model_utility", "truth_ratio", "privleak"} <= set(s["definitions"])
    assert s["settings"]["max_new_tokens"] == 6


def test_generation_is_greedy_and_bounded(synthetic_dir, tiny_model, tiny_tokenizer):
    qs = [r["question"] for r in load_tofu("forget10", synthetic_dir, max_items=3)]
    a = generate_answers(tiny_model, tiny_tokenizer, qs, batch_size=3, max_new_tokens=5)
    b = generate_answers(tiny_model, tiny_tokenizer, qs, batch_size=3, max_new_tokens=5)
    assert a == b and len(a) == 3
    for g in a:
        assert len(tiny_tokenizer(g, add_special_tokens=False)["input_ids"]) <= 8


def test_token_stats_for_min_k_plus_plus(tiny_model, tiny_tokenizer):
    rec = score_answers(tiny_model, tiny_tokenizer, [("Who?", "Someone.")], token_stats=True)[0]
    assert len(rec["logprobs"]) == len(rec["mu"]) == len(rec["var"]) == rec["num_tokens"]
    assert -np.mean(rec["logprobs"]) == pytest.approx(rec["loss"], rel=1e-5)
    assert all(v > -1e-6 for v in rec["var"])


def test_mia_scores_follow_the_protocol():
    from llm_unlearn.data.protocol import get_protocol
    from llm_unlearn.eval.evaluator import _mia_scores

    # 4 answer tokens, the last one EOS; k = 0.4 -> the lowest int(0.4·n) (at least 1)
    rec = {"loss": 1.6, "logprobs": [-1.0, -2.0, -0.5, -3.0], "mu": [-1.0, -1.0, -1.0, -1.0],
           "var": [4.0, 1e-9, 1.0, 1.0]}
    native = _mia_scores("Someone.", rec, 0.4, get_protocol("native"))
    ou = _mia_scores("Someone.", rec, 0.4, get_protocol("open-unlearning"))
    assert native["min_k"] == pytest.approx(3.0)  # EOS included: its -3 is the lowest
    assert ou["min_k"] == pytest.approx(2.0)  # EOS dropped (open-unlearning): lowest of -1, -2, -0.5
    # Min-K%++: z = (lp - mu) / sqrt(max(var, 1e-6)); token 2 has var 1e-9 -> sigma 1e-3, z = -1000
    assert ou["min_k_plus_plus"] == pytest.approx(1000.0)
    assert native["loss"] == ou["loss"] == 1.6  # LOSS on all tokens either way


def test_without_holdout_split_mia_is_na(synthetic_dir, tiny_model, tiny_tokenizer, tmp_path):
    src = tmp_path / "nohold"
    shutil.copytree(synthetic_dir, src)
    for p in src.glob("holdout*"):
        p.unlink()
    res = evaluate_model(tiny_model, tiny_tokenizer, str(src), max_items=2, max_new_tokens=2, progress=False)
    s = res["summary"]
    assert s["metrics"]["mia_auc_loss"] is None and "holdout10" in s["not_available"]["mia_auc_loss"]
    assert s["metrics"]["privleak"] is None


def test_retain_logs_give_forget_quality_and_privleak(tiny_eval, tmp_path, synthetic_dir, tiny_model, tiny_tokenizer):
    _, res = tiny_eval
    ret = write_eval(tmp_path / "retain_eval", res[8])
    other = evaluate_model(tiny_model, tiny_tokenizer, str(synthetic_dir), retain_logs=ret, max_items=4,
                           max_new_tokens=2, progress=False)["summary"]["metrics"]
    assert 0.0 < other["forget_quality"] <= 1.0 and other["privleak"] is not None
    same = read_logs(ret)
    from llm_unlearn.eval.logs import compute_summary

    assert compute_summary(same, same)["metrics"]["forget_quality"] == 1.0


def test_mixed_protocols_refused_unless_allowed(tiny_eval, tmp_path, capsys):
    import json

    from llm_unlearn.cli import main
    from llm_unlearn.eval.logs import compute_summary

    _, res = tiny_eval
    native = write_eval(tmp_path / "native", res[8])
    assert res[8]["per_item"]["protocol"]["name"] == "native"
    assert res[8]["summary"]["template"]["protocol"] == "native"
    # the same items relabelled as another protocol's logs
    items = json.loads((native / "per_item.json").read_text())
    items["protocol"] = {"name": "open-unlearning"}
    other = tmp_path / "ou"
    other.mkdir()
    (other / "per_item.json").write_text(json.dumps(items))
    with pytest.raises(UnlearnError, match="protocol 'open-unlearning'.*this model under 'native'.*--allow-mixed"):
        compute_summary(read_logs(native), read_logs(other))
    mixed = compute_summary(read_logs(native), read_logs(other), allow_mixed_protocols=True)
    assert mixed["mixed_protocols"] and mixed["metrics"]["forget_quality"] == 1.0
    assert compute_summary(read_logs(native), read_logs(native))["mixed_protocols"] is None
    # score: one line, exit 2; then allowed with the flag, and said so
    rc = main(["score", "--logs", str(native), "--retain-logs", str(other)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1
    assert main(["score", "--logs", str(native), "--retain-logs", str(other), "--allow-mixed-protocols"]) == 0
    assert "note: mixed protocols" in capsys.readouterr().out


def test_eval_cli_writes_summary_and_items(saved_tiny, synthetic_dir, tmp_path, capsys):
    import json

    from llm_unlearn.cli import main

    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(saved_tiny), "--data", str(synthetic_dir), "--max-items", "2",
               "--max-new-tokens", "2", "--device", "cpu", "--output", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_items"]["forget"] == 2 and "forget_quality" in summary["not_available"]
    assert read_logs(out).splits["forget"].gt_loss.shape == (2,)
    assert "model_utility" in capsys.readouterr().out
    rc = main(["eval", "--model", str(saved_tiny), "--data", str(synthetic_dir), "--forget-split", "forget99",
               "--output", str(tmp_path / "bad")])
    assert rc == 2


def test_prompt_shared_scoring_equals_whole_sequences(synthetic_dir, tiny_model, tiny_tokenizer):
    """Answer variants of one question run the prompt once (KV cache): same NLL, token counts and
    Min-K%++ stats as scoring each whole sequence, for a plain and a PEFT-wrapped model, with
    chunks smaller than the group."""
    from peft import LoraConfig, get_peft_model

    from llm_unlearn.eval.evaluator import supports_prefix_cache

    rows = load_tofu("forget10_perturbed", synthetic_dir, max_items=2).to_list()
    pairs = [(r["question"], a) for r in rows for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]]
    pairs.append(("A question asked once?", "Its only answer."))
    peft = get_peft_model(build_tiny(tiny_tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
    for model in (tiny_model, peft):
        assert supports_prefix_cache(model)
        for stats in (False, True):
            shared = score_answers(model, tiny_tokenizer, pairs, batch_size=3, token_stats=stats, share_prompt=True)
            whole = score_answers(model, tiny_tokenizer, pairs, batch_size=1, token_stats=stats, share_prompt=False)
            for a, b in zip(shared, whole):
                assert a["num_tokens"] == b["num_tokens"]
                assert a["loss"] == pytest.approx(b["loss"], abs=BATCH_ATOL)
                if stats:
                    np.testing.assert_allclose(a["mu"], b["mu"], atol=1e-4)
                    np.testing.assert_allclose(a["var"], b["var"], atol=1e-4)
    for (q, a), rec in zip(pairs[:3], score_answers(tiny_model, tiny_tokenizer, pairs[:3], share_prompt=True)):
        assert rec["loss"] == pytest.approx(_direct_loss(tiny_model, tiny_tokenizer, q, a), abs=1e-5)


def test_batched_generation_keeps_the_input_order(synthetic_dir, tiny_model, tiny_tokenizer):
    qs = [r["question"] for r in load_tofu("retain90", synthetic_dir, max_items=5)]
    qs.append("Short?")
    one_by_one = [generate_answers(tiny_model, tiny_tokenizer, [q], batch_size=1, max_new_tokens=4)[0] for q in qs]
    assert generate_answers(tiny_model, tiny_tokenizer, qs, batch_size=6, max_new_tokens=4) == one_by_one


def build_tiny(tok):
    from llm_unlearn.models import build_tiny_model

    return build_tiny_model(tok, seed=3)
