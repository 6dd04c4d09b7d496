"""Helpers shared by subcommands: flags, JSON output. Output directories and files are staged
and checked against the command's inputs by `llm_unlearn.outputs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_unlearn.outputs import prepare_output_dir, prepare_output_file  # noqa: F401  (older call sites)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def add_overwrite_flag(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
