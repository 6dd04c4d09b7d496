"""The `llm-unlearn` command: subcommands, data synth, and bad input as one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_unlearn.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("data", "models", "finetune", "unlearn", "mask", "eval", "score", "report", "s3t", "push", "demo"):
        assert name in SUBCOMMANDS and f"    {name}" in out


def test_data_synth_writes_splits_and_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--authors", "5", "--qa-per-author", "4", "--seed", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "full.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and set(rows[0]) == {"question", "answer"}
    assert (out / "forget10_perturbed.jsonl").is_file() and (out / "holdout10.jsonl").is_file()
    capsys.readouterr()
    assert main(["data", "synth", "--authors", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert main(["data", "synth", "--authors", "5", "--qa-per-author", "2", "--out", str(out), "--overwrite"]) == 0
    assert len((out / "full.jsonl").read_text().splitlines()) == 10
    assert main(["data", "synth", "--authors", "1", "--out", str(tmp_path / "x")]) == 2


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_field_names_file_and_field(tmp_path, capsys):
    (tmp_path / "full.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    assert main(["finetune", "--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "full.jsonl" in err and "'answer'" in err


def test_unknown_split_lists_valid_ones(synthetic_dir, tmp_path, capsys):
    assert main(["finetune", "--data", str(synthetic_dir), "--split", "retain42", "--output", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "unknown split 'retain42'" in err and "retain90" in err and "forget10" in err


def test_finetune_refuses_existing_output(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["finetune", "--data", str(synthetic_dir), "--output", str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (out / "keep.txt").is_file()


def test_models_commands(tmp_path, capsys):
    assert main(["models", "fetch", "gpt-17", "--cache-dir", str(tmp_path)]) == 2
    assert "smollm2-135m-instruct" in _one_line_error(capsys)
    assert main(["models", "info", "smollm2", "--cache-dir", str(tmp_path)]) == 2
    assert "llm-unlearn models fetch smollm2-135m-instruct" in _one_line_error(capsys)
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "not fetched" in capsys.readouterr().out


def test_subprocess_error_has_no_traceback(tmp_path):
    (tmp_path / "forget10.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "llm_unlearn.cli", "data", "show", "--data", str(tmp_path),
                           "--split", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # the last line: other libraries may log import notices before it (bitsandbytes on CPU does)
    assert proc.stderr.strip().splitlines()[-1] == f"error: unknown split 'nope' in {tmp_path}; valid splits: forget10"
