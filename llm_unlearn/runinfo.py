"""Run directories: `run.json` manifests (what a run used: model, data, hyperparameters, versions).
Output directories themselves are checked and staged by `llm_unlearn.outputs`."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
from pathlib import Path
from typing import Any

from llm_unlearn import __version__


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


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
