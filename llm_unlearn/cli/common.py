"""Helpers shared by subcommands: the ``--overwrite`` flag; output paths come from `llm_unlearn.runinfo`."""

from __future__ import annotations

from pathlib import Path

from llm_unlearn.errors import UnlearnError
from llm_unlearn.runinfo import prepare_output_dir, prepare_output_file, write_json

__all__ = ["add_overwrite_flag", "check_output", "prepare_output_dir", "prepare_output_file", "write_json"]


def check_output(path: str | Path, overwrite: bool) -> None:
    """The "already exists" error of `prepare_output_dir`, before anything heavy is loaded; touches nothing."""
    out = Path(path)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UnlearnError(f"output {out} already exists; pass --overwrite to replace it")


def add_overwrite_flag(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
