"""`llm-unlearn push RUN_DIR --repo-id ORG/NAME`: publish an unlearned adapter with a model card."""

from __future__ import annotations

import argparse
import logging


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `llm-unlearn unlearn`, a recipe, or `llm-unlearn s3t train` (its served ensemble; never the ledger)")
    p.add_argument("--repo-id", required=True, help="target Hub repository, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="write the exact folder that would be uploaded into DIR and upload nothing")
    p.add_argument("--base-model", default=None,
                   help="Hub id of the base model, when the run used a local copy (default: from the run)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, then the `hf auth login` token)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dry-run folder")
    p.set_defaults(func=run)


def _is_hub_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    mod = type(exc).__module__ or ""
    return mod.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3", "huggingface_hub")


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.checks import check_file
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.hub import push_run, validate_repo_id
    from llm_unlearn.outputs import staged_dir

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    validate_repo_id(args.repo_id)
    check_file("RUN_DIR", args.run_dir)
    if args.dry_run is not None:
        with staged_dir(args.dry_run, args.overwrite, [args.run_dir], flag="--dry-run") as stage:
            push_run(args.run_dir, args.repo_id, dry_run=stage.path, base_model=args.base_model)
        print(f"dry run: wrote the upload folder for {args.repo_id} to {stage.final}")
        return 0
    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private, token=args.token, base_model=args.base_model)
    except UnlearnError:
        raise
    except Exception as exc:  # network and Hub errors (httpx / requests / HfHubHTTPError): one line
        if not _is_hub_error(exc):
            raise
        text = str(exc).strip().splitlines()
        raise UnlearnError(f"push to {args.repo_id} failed: {type(exc).__name__}: {text[0] if text else ''} "
                           "(is the Hub reachable and the token valid?)") from None
    print(f"pushed {args.run_dir} to {url}")
    return 0
