"""Loading what a run saved, for evaluation: a full model, a LoRA adapter (with its weight mask),
or an S3T run directory served as its shard ensemble."""

from __future__ import annotations

from pathlib import Path

from llm_unlearn.errors import UnlearnError
from llm_unlearn.models import load_model, load_tokenizer, resolve_model_path
from llm_unlearn.runinfo import read_manifest
from llm_unlearn.s3t.serve import load_s3t_model


def is_s3t_run(model: str | Path) -> bool:
    """Whether `model` is an S3T run directory (``run.json`` kind ``s3t``)."""
    return Path(model).is_dir() and read_manifest(model).get("kind") == "s3t"


def load_for_eval(model: str, adapter: str | None = None, dtype: str = "float32", aggregate: str | None = None,
                  allow_base: bool = False):
    """(model, tokenizer) for evaluation. An S3T run directory (``run.json`` kind ``s3t``) is
    served as its shard ensemble (`llm_unlearn.s3t.load_s3t_model`, combined by `aggregate`;
    with no shard serving it refuses unless `allow_base`)."""
    if is_s3t_run(model):
        if adapter:
            raise UnlearnError("--adapter does not apply to an S3T run directory")
        ensemble = load_s3t_model(model, dtype=dtype, aggregate=aggregate, allow_base=allow_base)
        return ensemble, ensemble.tokenizer
    m = load_model(model, dtype=dtype, adapter=adapter)
    tok_spec = adapter if adapter and any((Path(adapter) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) \
        else resolve_model_path(model)
    return m, load_tokenizer(tok_spec)
