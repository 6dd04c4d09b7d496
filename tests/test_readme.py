"""The README's commands work as written.

Every ```bash block that follows ``<!-- readme-test: run -->`` is run, in README order, in one
fresh directory, on the tiny model (slow). Every `llm-unlearn` line of every block, run or not,
must parse with the real argument parser (fast): a renamed flag breaks the README in CI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARKER = "<!-- readme-test: run -->"
_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def bash_blocks(text: str) -> list[tuple[bool, str]]:
    """(marked to run, code) of every bash block, in order."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group(1) not in ("bash", "sh", "shell"):
            continue
        before = text[:m.start()].rstrip().splitlines()
        blocks.append((bool(before) and before[-1].strip() == RUN_MARKER, m.group(2)))
    return blocks


def command_lines(code: str) -> list[str]:
    """The commands of a block: continuation lines joined, split at `&&`, `;` and `|`."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;|\|", line):
            if part.strip() and not part.strip().startswith("#"):
                out.append(part.strip())
    return out


def cli_args(command: str) -> list[str] | None:
    """The arguments of an `llm-unlearn` command line (env assignments before it skipped), else None."""
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words or words[0] != "llm-unlearn":
        return None
    return words[1:]


def test_readme_blocks_are_found():
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    run = [code for marked, code in blocks if marked]
    assert len(run) >= 6, "the README lost its runnable command blocks"
    commands = [c for code in run for c in command_lines(code)]
    subcommands = {args[0] for c in commands if (args := cli_args(c))}
    # the tour covers the whole pipeline
    assert {"data", "finetune", "unlearn", "mask", "eval", "score", "report", "s3t", "push"} <= subcommands


def test_every_readme_command_parses():
    from llm_unlearn.cli import build_parser

    parser = build_parser()
    checked = 0
    for _, code in bash_blocks(README.read_text(encoding="utf-8")):
        for command in command_lines(code):
            args = cli_args(command)
            if args is None or "..." in args:
                continue
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                assert exc.code == 0, f"README command does not parse: {command}"
            checked += 1
    assert checked >= 20


def test_s3t_match_in_readme_names_an_author_of_the_synthetic_data():
    """`s3t delete --match NAME` must find samples in the data the README's `data synth` line makes."""
    from llm_unlearn.data.synthetic import generate

    run = [c for marked, code in bash_blocks(README.read_text(encoding="utf-8")) if marked for c in command_lines(code)]
    synth = next(cli_args(c) for c in run if (cli_args(c) or [])[:2] == ["data", "synth"])
    match = next(cli_args(c) for c in run if (cli_args(c) or [])[:2] == ["s3t", "delete"] and "--match" in c)
    opts = dict(zip(synth[2::2], synth[3::2]))
    needle = match[match.index("--match") + 1].lower()
    rows = generate(int(opts["--authors"]), int(opts["--qa-per-author"]), int(opts["--seed"]))["full"]
    assert any(needle in (r["question"] + " " + r["answer"]).lower() for r in rows)


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    blocks = [code for marked, code in bash_blocks(README.read_text(encoding="utf-8")) if marked]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "llm-unlearn"  # this checkout's code, whatever is installed
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m llm_unlearn.cli \"$@\"\n")
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = "set -euo pipefail\n" + "\n".join(blocks)
    proc = subprocess.run(["bash", "-x", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=1500)
    if proc.returncode != 0:
        traced = [ln for ln in proc.stderr.splitlines() if ln.startswith("+ ")]
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        pytest.fail(f"README command failed (exit {proc.returncode}): {traced[-1] if traced else '?'}\n{tail}")
    assert (work / "report" / "report.html").is_file()
    assert (work / "runs" / "npo" / "trainer_log.jsonl").is_file()
