"""Corpus unlearning through the `llm-unlearn` command: data synth's domain fixture, unlearn and
mask with --forget-corpus, eval with --lm-eval-tasks and verbatim memorisation, bad input."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["data", "synth", "--authors", "4", "--qa-per-author", "4", "--domain-devices", "4",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer):
    from llm_unlearn.models import build_tiny_model

    d = tmp_path_factory.mktemp("tiny")
    build_tiny_model(tiny_tokenizer, seed=0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_synth_writes_domain(synth):
    dom = synth / "domain"
    for name in ("forget_corpus", "holdout_corpus", "retain_corpus", "domain_mcq", "general_mcq"):
        assert (dom / f"{name}.jsonl").is_file()
    assert len((dom / "domain_mcq.jsonl").read_text().splitlines()) == 4 * 6
    assert "output_type: multiple_choice" in (dom / "tasks" / "synth_domain.yaml").read_text()


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_unlearn_on_corpus(synth, tiny_dir, tmp_path, method, capsys):
    dom = synth / "domain"
    out = tmp_path / method
    assert main(["unlearn", "--model", str(tiny_dir), "--method", method, "--forget-corpus",
                 str(dom / "forget_corpus.jsonl"), "--retain-corpus", str(dom / "retain_corpus.jsonl"),
                 "--max-steps", "2", "--max-length", "32", "--output", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["forget_corpus"].endswith("forget_corpus.jsonl") and run["forget_split"] is None
    ch = run["chunking"]["forget"]
    assert ch["documents"] == 4 and ch["windows"] > 4 and ch["dropped_tokens"] == 0  # 32-token windows
    assert run["nll"]["forget_after"] is not None and run["steps"] == 2
    assert "forget NLL" in capsys.readouterr().out


def test_unlearn_max_windows_per_doc_counts_truncation(synth, tiny_dir, tmp_path):
    dom = synth / "domain"
    out = tmp_path / "ga"
    assert main(["unlearn", "--model", str(tiny_dir), "--method", "grad_ascent", "--forget-corpus",
                 str(dom / "forget_corpus.jsonl"), "--max-windows-per-doc", "1", "--max-steps", "1",
                 "--max-length", "32", "--output", str(out)]) == 0
    ch = json.loads((out / "run.json").read_text())["chunking"]["forget"]
    assert ch["windows"] == 4 and ch["truncated_documents"] == 4 and ch["dropped_tokens"] > 0


def test_mixing_corpus_and_qa_is_refused(synth, tiny_dir, tmp_path, capsys):
    dom = synth / "domain"
    out = tmp_path / "mixed"
    assert main(["unlearn", "--model", str(tiny_dir), "--method", "npo", "--data", str(synth),
                 "--forget-corpus", str(dom / "forget_corpus.jsonl"), "--output", str(out)]) == 2
    assert "cannot be mixed" in _error(capsys)
    assert main(["unlearn", "--model", str(tiny_dir), "--method", "npo", "--data", str(synth),
                 "--retain-corpus", str(dom / "retain_corpus.jsonl"), "--output", str(out)]) == 2
    assert "--retain-corpus needs --forget-corpus" in _error(capsys)
    # a QA split file given as a corpus
    assert main(["unlearn", "--model", str(tiny_dir), "--method", "npo", "--forget-corpus",
                 str(synth / "forget10.jsonl"), "--retain-corpus", str(dom / "retain_corpus.jsonl"),
                 "--output", str(out)]) == 2
    assert "looks like QA data" in _error(capsys)
    assert not out.exists()


def test_mask_on_corpus(synth, tiny_dir, tmp_path):
    from llm_unlearn.masks import load_mask

    dom = synth / "domain"
    out = tmp_path / "m.safetensors"
    assert main(["mask", "--model", str(tiny_dir), "--forget-corpus", str(dom / "forget_corpus.jsonl"),
                 "--retain-corpus", str(dom / "retain_corpus.jsonl"), "--ratio", "0.5", "--max-length", "32",
                 "--output", str(out)]) == 0
    mask = load_mask(out)
    assert mask.meta["forget_corpus"].endswith("forget_corpus.jsonl")
    assert mask.density() == pytest.approx(0.5, abs=0.01)


def test_eval_lm_eval_and_memorisation(synth, tiny_dir, tmp_path, capsys):
    dom = synth / "domain"
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_dir), "--lm-eval-tasks", "synth_domain,synth_general",
                 "--lm-eval-include", str(dom / "tasks"), "--forget-corpus", str(dom / "forget_corpus.jsonl"),
                 "--memorisation-prefix", "8", "--memorisation-continuation", "8", "--output", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["lm_eval"]["synth_domain"]["n"] == 24 and 0 <= s["lm_eval"]["synth_domain"]["acc"] <= 1
    assert s["lm_eval"]["synth_general"]["chance"] == pytest.approx(0.25)
    assert s["verbatim_memorisation"]["documents"] == 4
    printed = capsys.readouterr().out
    assert "lm-eval synth_domain" in printed and "verbatim memorisation" in printed
    assert main(["eval", "--model", str(tiny_dir), "--lm-eval-tasks", "synth_domain", "--lm-eval-include",
                 str(dom / "tasks"), "--lm-eval-limit", "5", "--forget-corpus", str(dom / "forget_corpus.jsonl"),
                 "--memorisation-prefix", "8", "--memorisation-continuation", "8", "--memorisation-max-docs", "2",
                 "--output", str(tmp_path / "limited")]) == 0
    s = json.loads((tmp_path / "limited" / "summary.json").read_text())
    assert s["lm_eval"]["synth_domain"]["n"] == 5 and s["verbatim_memorisation"]["documents"] == 2
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_dir), "--output", str(tmp_path / "e2")]) == 2
    assert "nothing to evaluate" in _error(capsys)


def test_eval_lm_eval_console_is_quiet_unless_verbose(synth, tiny_dir, tmp_path, capfd, monkeypatch):
    """lm-eval's bars, log lines and the stderr of its `git describe` (outside a git checkout:
    "fatal: not a git repository") stay off the default console; --verbose shows them."""
    monkeypatch.chdir(tmp_path)  # not a git checkout
    dom = synth / "domain"
    argv = ["eval", "--model", str(tiny_dir), "--lm-eval-tasks", "synth_domain", "--lm-eval-include",
            str(dom / "tasks"), "--lm-eval-limit", "4"]
    assert main([*argv, "--output", str(tmp_path / "quiet")]) == 0
    out, err = capfd.readouterr()
    assert "lm-eval synth_domain" in out
    assert err.strip() == "", err
    assert main(["--verbose", *argv, "--output", str(tmp_path / "verbose")]) == 0
    out, err = capfd.readouterr()
    assert "Running loglikelihood requests" in err and "lm-eval synth_domain" in out


def test_synth_too_many_devices_writes_nothing(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--authors", "2", "--qa-per-author", "2", "--domain-devices", "200",
                 "--out", str(out)]) == 2
    assert "--domain-devices: at most 280 devices in all, got 200 + 200 held out" in _error(capsys)
    assert not out.exists()


def test_synth_domain_documents(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--authors", "2", "--qa-per-author", "2", "--domain-devices", "4",
                 "--domain-documents", "3", "--out", str(out)]) == 0
    docs = [json.loads(line) for line in (out / "domain" / "forget_corpus.jsonl").read_text().splitlines()]
    assert len(docs) == 3 * 4 and {sum(d["device"] == x["device"] for d in docs) for x in docs} == {3}
    assert len((out / "domain" / "domain_mcq.jsonl").read_text().splitlines()) == 4 * 6  # one per fact
    bad = tmp_path / "bad"
    assert main(["data", "synth", "--authors", "2", "--qa-per-author", "2", "--domain-documents", "0",
                 "--out", str(bad)]) == 2
    assert "--domain-documents" in _error(capsys) and not bad.exists()
