"""Helpers shared by subcommands: the ``--overwrite`` flag; outputs are staged and checked against
the command's inputs by `llm_unlearn.outputs`, manifests written by `llm_unlearn.runinfo`."""

from __future__ import annotations

from llm_unlearn.outputs import prepare_output_dir, prepare_output_file
from llm_unlearn.runinfo import write_json

__all__ = ["add_overwrite_flag", "prepare_output_dir", "prepare_output_file", "write_json"]


def add_overwrite_flag(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
