"""Run directories: `run.json` manifests (what a run used: model, data, hyperparameters, versions)
and output paths that refuse to overwrite without ``overwrite=True`` (``--overwrite``)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import shutil
from pathlib import Path
from typing import Any

from llm_unlearn import __version__
from llm_unlearn.errors import UnlearnError


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "llm-unlearn": __version__}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
                "bitsandbytes", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def data_hash(rows) -> str:
    """sha256 over the question/answer text of `rows` (order-sensitive)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["question"], row["answer"]], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_manifest(out_dir: str | Path, **fields: Any) -> Path:
    path = Path(out_dir) / "run.json"
    manifest = {**fields, "versions": versions()}
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


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
