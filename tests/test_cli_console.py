"""The first minutes with the command: answers that need no torch, --version, a quiet console
(one bar per stage, Trainer log dicts in trainer_log.jsonl, --verbose restores them), errors that
suggest what exists."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest

from llm_unlearn.cli import SUBCOMMANDS, build_parser, main
from llm_unlearn.errors import UnlearnError

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")

_PROBE = """
import contextlib, io, json, sys
from llm_unlearn.cli import SUBCOMMANDS, main
argvs = json.loads(sys.argv[1])
codes = []
for argv in argvs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
heavy = sorted(m for m in sys.argv[2].split(",") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _probe(argvs: list[list[str]]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argvs), ",".join(HEAVY)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_version_import_no_torch():
    helps = [["--help"], ["--version"], *[[name, "--help"] for name in SUBCOMMANDS],
             ["s3t", "delete", "--help"], ["data", "synth", "--help"], ["models", "fetch", "--help"]]
    result = _probe(helps)
    assert result["codes"] == [0] * len(helps)
    assert result["heavy"] == []


def test_argument_and_data_errors_import_no_torch(synthetic_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    data = str(synthetic_dir)
    errors = [
        ["finetune"],  # missing --data / --output: argparse
        ["unlearn", "--model", "m", "--data", data, "--method", "nope", "--output", str(tmp_path / "o")],
        ["finetune", "--data", data, "--split", "retain42", "--output", str(tmp_path / "o")],
        ["finetune", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
        ["unlearn", "--model", "m", "--data", data, "--method", "npo", "--forget-split", "forget11",
         "--output", str(tmp_path / "o")],
        ["eval", "--model", "m", "--data", data, "--forget-split", "forget07", "--output", str(tmp_path / "o")],
        ["mask", "--model", "m", "--data", data, "--forget-split", "forget3", "--output", str(tmp_path / "o")],
        ["s3t", "train", "--data", data, "--split", "ful", "--output", str(tmp_path / "o")],
        ["finetune", "--data", data, "--output", str(busy)],
        ["data", "show", "--data", data, "--split", "nope"],
    ]
    result = _probe(errors)
    assert result["codes"] == [2] * len(errors)
    assert result["heavy"] == []
    assert (busy / "keep.txt").is_file() and not (tmp_path / "o").exists()


def test_version_names_the_stack(capsys):
    import llm_unlearn

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == f"llm-unlearn {llm_unlearn.__version__}"
    for dist in ("torch", "transformers", "peft", "trl"):
        assert f"{dist} {version(dist)}" in second


def test_verbose_is_accepted_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["--verbose", "data", "show", "--data", "d"]).verbose is True
    assert parser.parse_args(["data", "show", "--data", "d", "--verbose"]).verbose is True
    assert parser.parse_args(["s3t", "status", "run", "-v"]).verbose is True
    args = parser.parse_args(["data", "show", "--data", "d"])
    assert args.verbose is False and args.debug is False
    assert parser.parse_args(["--debug", "report", "r", "--output", "o"]).debug is True


def test_parser_choices_match_the_library():
    from llm_unlearn import masks, trainers
    from llm_unlearn.cli import choices

    assert list(choices.UNLEARN_METHODS) == list(trainers.METHODS)
    assert tuple(choices.MASK_METHODS) == tuple(masks.METHODS)
    assert tuple(choices.MASK_SCOPES) == tuple(masks.SCOPES)
    assert tuple(choices.MASK_GRANULARITIES) == tuple(masks.GRANULARITIES)
    assert choices.MASK_DEFAULT_GAMMA == masks.DEFAULT_GAMMA


# -- errors that suggest ------------------------------------------------------------------------
def test_unknown_split_lists_the_splits_and_the_closest(synthetic_dir, capsys):
    assert main(["s3t", "train", "--data", str(synthetic_dir), "--split", "retian90", "--output", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown split 'retian90'") and "\n" not in err
    assert "valid splits: forget01, " in err and "world_facts_perturbed" in err
    assert err.endswith("?)") and "(did you mean retain90 or " in err  # the closest first


def test_match_that_finds_nothing_lists_close_names(tmp_path):
    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.plan import make_plan

    names = ["Wendell Farquhar", "Tamsin Vasquez", "Dorian Ravensworth", "Wendy Farley"]
    ids = [f"full:{i}" for i in range(8)]
    plan = make_plan(ids, 2, 2, 1, num_layers=2, method="cyclic", seed=0)
    where = plan.slice_of()
    rows = [{"sample_id": s, "question": f"Where was {names[i % 4]} born?", "answer": "In a city by the sea.",
             "shard": where[s][0], "slice": where[s][1]} for i, s in enumerate(ids)]
    ledger = DeletionLedger.create(tmp_path, rows, plan.sequences, {"package_version": "test"})
    with pytest.raises(UnlearnError) as exc:
        ledger.delete(match="Wendel Farquar")
    message = str(exc.value)
    assert "nothing was deleted" in message
    close = message.split("close names: ")[1].split(", ")
    assert close[0] == "Wendell Farquhar" and "Tamsin Vasquez" not in close and len(close) <= 5
    with pytest.raises(UnlearnError) as exc:
        ledger.delete(match="zzzz qqqq")
    assert "close names" not in str(exc.value)
    assert not ledger.deleted_ids()


# -- the console ----------------------------------------------------------------------------------
def _unlearn_argv(target_dir, synthetic_dir, out, *extra):
    return ["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "npo", "--lora",
            "--max-steps", "4", "--logging-steps", "1", "--output", str(out), *extra]


def test_quiet_console_and_trainer_log(target_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "quiet"
    assert main(_unlearn_argv(target_dir, synthetic_dir, out)) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "{'loss'" not in text and "Warning" not in text
    # one bar (redrawn in place with \r) plus the command's few result lines
    assert captured.err.count("\n") <= 2 and "unlearn npo" in captured.err and "loss=" in captured.err
    assert len(captured.out.strip().splitlines()) <= 5
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["stage"] == "unlearn npo" for r in records)
    assert any("train_runtime" in r for r in records)  # the end-of-training summary too


def test_verbose_console_shows_the_trainer_log_lines(target_dir, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "verbose"
    assert main(["--verbose", *_unlearn_argv(target_dir, synthetic_dir, out)]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("{'loss'") == 4
    assert len((out / "trainer_log.jsonl").read_text().splitlines()) == 5  # still written


def _library_warning(message: str) -> None:
    """Issue a FutureWarning as if from inside a third-party package."""
    code = compile(f"import warnings\nwarnings.warn({message!r}, FutureWarning)\n", "fakelib/mod.py", "exec")
    exec(code, {"__name__": "fakelib.mod"})


def test_cli_session_filters_library_warnings_and_restores_state(capsys):
    from llm_unlearn.console import cli_session, is_verbose

    filters_before = list(warnings.filters)
    env_before = os.environ.get("TRANSFORMERS_VERBOSITY")
    level_before = logging.getLogger("transformers").level
    ours = logging.getLogger("llm_unlearn.demo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what reaches the user without the CLI's filter
        with cli_session(verbose=False):
            assert not is_verbose()
            _library_warning("quiet: deprecated thing")
            warnings.warn_explicit("quiet: our own warning", UserWarning, "llm_unlearn/x.py", 1, "llm_unlearn.x")
            ours.info("quiet: an info line")
            ours.warning("quiet: a warning of ours")
            logging.getLogger("transformers.fake").warning("quiet: a library warning")
        assert [str(w.message) for w in caught] == ["quiet: our own warning"]
        err = capsys.readouterr().err
        assert "quiet: an info line" not in err and "quiet: a library warning" not in err
        assert "warning: quiet: a warning of ours" in err
        with cli_session(verbose=True):
            assert is_verbose()
            _library_warning("verbose: deprecated thing")
            ours.info("verbose: an info line")
        assert str(caught[-1].message) == "verbose: deprecated thing"
        assert "info: verbose: an info line" in capsys.readouterr().err
    assert not is_verbose()
    assert warnings.filters == filters_before
    assert os.environ.get("TRANSFORMERS_VERBOSITY") == env_before
    assert logging.getLogger("transformers").level == (level_before or logging.WARNING)
    assert not logging.getLogger("llm_unlearn").handlers
