"""Helpers shared by subcommands: output directories, manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llm_unlearn.errors import UnlearnError


def check_output(path: str | Path, overwrite: bool) -> None:
    """The "already exists" error of `prepare_output_dir`, before anything heavy is loaded; touches nothing."""
    out = Path(path)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UnlearnError(f"output {out} already exists; pass --overwrite to replace it")


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Create `path`; refuse if it exists and is non-empty unless `overwrite`."""
    out = Path(path)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        if not overwrite:
            raise UnlearnError(f"output {out} already exists; pass --overwrite to replace it")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_output_file(path: str | Path, overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and not overwrite:
        raise UnlearnError(f"output {out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def add_overwrite_flag(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
