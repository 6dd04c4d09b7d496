"""`llm-unlearn models fetch|list|info`: obtain SmolLM2-135M-Instruct offline and find cached models."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    f = msub.add_parser("fetch", help="download and convert a model into the cache; prints its path")
    f.add_argument("name", help="model to fetch: smollm2-135m-instruct (alias smollm2)")
    f.add_argument("--cache-dir", default=None,
                   help="cache root (default $LLM_UNLEARN_CACHE or ~/.cache/llm_unlearn)")
    f.add_argument("--force", action="store_true", help="fetch again even if already cached")
    f.set_defaults(func=run_fetch)
    ls = msub.add_parser("list", help="list the fetchable models and whether they are cached")
    ls.add_argument("--cache-dir", default=None, help="cache root")
    ls.set_defaults(func=run_list)
    info = msub.add_parser("info", help="print the local path a model spec resolves to")
    info.add_argument("name", help="an alias (smollm2), a directory or a .gguf file")
    info.add_argument("--cache-dir", default=None, help="cache root")
    info.set_defaults(func=run_info)


def _known(name: str) -> str:
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.models import KNOWN_MODELS, MODEL_ALIASES

    alias = MODEL_ALIASES.get(name.lower())
    if alias is None:
        raise UnlearnError(f"unknown model '{name}'; fetchable: {', '.join(KNOWN_MODELS)} (alias smollm2)")
    return alias


def _with_cache(cache_dir: str | None):
    # aliases resolve through $LLM_UNLEARN_CACHE; --cache-dir sets it for this command
    if cache_dir is not None:
        os.environ["LLM_UNLEARN_CACHE"] = str(Path(cache_dir).expanduser())


def run_fetch(args: argparse.Namespace) -> int:
    from llm_unlearn.models import cache_dir, fetch_smollm2

    _known(args.name)
    _with_cache(args.cache_dir)
    t0 = time.perf_counter()
    path = fetch_smollm2(cache_dir(), force=args.force)
    print(f"{args.name}: ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from llm_unlearn.models import KNOWN_MODELS, cache_dir

    _with_cache(args.cache_dir)
    for name, description in KNOWN_MODELS.items():
        path = cache_dir() / "models" / name
        state = str(path) if (path / "config.json").is_file() else "not fetched"
        print(f"{name:24s} {state}\n{'':24s} {description}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.models import resolve_model_path

    _with_cache(args.cache_dir)
    path = resolve_model_path(args.name)
    if not Path(path).exists():
        raise UnlearnError(f"model '{args.name}' has no local path (a Hub id is loaded from the Hub)")
    print(Path(path).resolve())
    return 0
