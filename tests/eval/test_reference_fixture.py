"""open-unlearning's own evaluation of SmolLM2-135M-Instruct on the first 40 forget10 items
(shared/data/tofu/reference_logs/open-unlearning_smollm2, its README says how it was made):
`score` reproduces its summary, and our evaluator its per-item numbers (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOL = 5e-4  # float32 differences between transformers versions


@pytest.fixture(scope="module")
def fixture_dir(shared_tofu) -> Path:
    path = shared_tofu / "reference_logs" / "open-unlearning_smollm2"
    if not (path / "TOFU_EVAL.json").is_file():
        pytest.skip(f"open-unlearning SmolLM2 fixture not found under {path}")
    return path


def test_score_reproduces_tofu_summary(fixture_dir, capsys):
    from llm_unlearn.cli import main
    from llm_unlearn.eval.logs import compute_summary, read_logs

    ref = json.loads((fixture_dir / "TOFU_SUMMARY.json").read_text())
    m = compute_summary(read_logs(fixture_dir / "TOFU_EVAL.json"))["metrics"]
    ours = {"forget_Q_A_Prob": m["forget_probability"], "forget_Q_A_ROUGE": m["forget_rougeL_recall"],
            "forget_truth_ratio": m["forget_truth_ratio"]}
    for key, value in ref.items():
        assert f"{ours[key]:.4g}" == f"{value:.4g}", key
    assert main(["score", "--logs", str(fixture_dir / "TOFU_EVAL.json")]) == 0
    out = capsys.readouterr().out
    for key in ("forget_probability", "forget_rougeL_recall", "forget_truth_ratio"):
        line = next(ln for ln in out.splitlines() if ln.startswith(key + " "))
        assert line.split()[1] == f"{m[key]:.4g}"


@pytest.mark.slow
def test_smollm2_matches_open_unlearning_item_by_item(fixture_dir, shared_tofu):
    import torch

    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval.evaluator import evaluate_items
    from llm_unlearn.eval.logs import ITEMS_FORMAT, logs_from_items, read_logs
    from llm_unlearn.eval.parity import compare_split
    from llm_unlearn.models import cache_dir, load_model, load_tokenizer, resolve_model_path

    if not (cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file():
        pytest.skip("SmolLM2 not fetched (llm-unlearn models fetch smollm2-135m-instruct)")
    torch.set_num_threads(1)
    model = load_model("smollm2", dtype="float32")
    tok = load_tokenizer(resolve_model_path("smollm2"))
    rows = load_tofu("forget10_perturbed", shared_tofu, max_items=40).to_list()
    items = evaluate_items(model, tok, {"forget": rows}, batch_size=8, max_new_tokens=200, progress=False,
                           generation_batch_size=32)
    ours = logs_from_items({"format": ITEMS_FORMAT, "forget_split": "forget10",
                            "splits": {"forget": {"source_split": "forget10_perturbed", "items": items["forget"]}}})
    cmp = compare_split(ours, read_logs(fixture_dir / "TOFU_EVAL.json"))
    assert cmp["n_items"] == 40
    for key in ("answer_loss", "paraphrased_loss", "perturbed_loss", "truth_ratio"):
        assert cmp[key]["max_abs"] <= TOL, (key, cmp[key])
    assert cmp["generations_equal"] >= 1
    assert cmp["rouge_equal_where_generations_equal"], cmp


def test_open_unlearning_protocol_tokenises_as_its_code_on_smollm2(fixture_dir, shared_tofu):
    """`--protocol open-unlearning` on the fixture items equals open-unlearning's
    apply_chat_template(tokenize=True) path (system prompt, date, EOS only if absent)."""
    from llm_unlearn.data.protocol import get_protocol
    from llm_unlearn.data.qa import IGNORE_INDEX, encode_qa
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import cache_dir, load_tokenizer, resolve_model_path

    if not (cache_dir() / "models" / "smollm2-135m-instruct" / "tokenizer.json").is_file():
        pytest.skip("SmolLM2 not fetched (llm-unlearn models fetch smollm2-135m-instruct)")
    tok = load_tokenizer(resolve_model_path("smollm2"))
    ou = get_protocol("open-unlearning")
    for row in load_tofu("forget10_perturbed", shared_tofu, max_items=40).to_list():
        for answer in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]:
            chat = [{"role": "system", "content": ou.system_prompt}, {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": answer}]
            conv = tok.apply_chat_template(chat, tokenize=True, date_string=ou.date_string)
            prompt = tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True,
                                             date_string=ou.date_string)
            conv, prompt = [list(x if isinstance(x, list) else x["input_ids"]) for x in (conv, prompt)]
            if conv[-1] != tok.eos_token_id:
                conv.append(tok.eos_token_id)
            enc = encode_qa(tok, row["question"], answer, ou.max_length, ou)
            assert enc["input_ids"] == conv
            assert enc["labels"] == [IGNORE_INDEX] * len(prompt) + conv[len(prompt):]
