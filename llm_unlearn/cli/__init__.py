"""The `llm-unlearn` command. Thin: each subcommand lives in its own module here, parses its
arguments and calls the library. Bad input raises `UnlearnError`, printed as one line, exit 2.

Fast answers: building the parser imports no torch / transformers / trl (`--help`, `--version`
and argument errors return in well under a second); each command imports the library inside the
function that runs it. The console is quiet unless `--verbose` (see `llm_unlearn.console`)."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version

# subcommand name -> (module under llm_unlearn.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data_cmd", "synthesise or inspect QA datasets (TOFU schema)"),
    "models": ("models_cmd", "fetch or inspect models (SmolLM2 offline, tiny test models)"),
    "finetune": ("finetune_cmd", "finetune a target or retain model on a split (SFT, answer-only loss)"),
    "unlearn": ("unlearn_cmd", "run an unlearning method on a finetuned model"),
    "mask": ("mask_cmd", "compute a weight-attribution mask (WAGLE, SalUn, magnitude, Wanda, random)"),
    "tune": ("tune_cmd", "search hyperparameters and the stopping step without a retain model (Optuna)"),
    "eval": ("eval_cmd", "evaluate a model on TOFU-style forgetting and utility"),
    "attack": ("attack_cmd", "attack an unlearned model (relearning, quantization, paraphrase, few-shot, CKA)"),
    "score": ("score_cmd", "compute aggregates from existing per-item evaluation logs"),
    "report": ("report_cmd", "build a Markdown/HTML report with plots from run directories"),
    "s3t": ("s3t_cmd", "S3T exact deletion: train, delete, status, retrain, serve"),
    "push": ("push_cmd", "push an unlearned adapter with a model card to the Hugging Face Hub"),
    "plan-memory": ("plan_memory_cmd", "predict peak memory per device of an unlearning run from the config alone"),
    "demo": ("demo_cmd", "the main job: end-to-end unlearning demo on the embedded default"),
}


def _not_implemented(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"llm-unlearn {name}: not implemented yet", file=sys.stderr)
        return 2

    return run


VERSIONS_OF = ("torch", "transformers", "peft", "trl")


def version_text() -> str:
    """``llm-unlearn X`` and the versions of the stack it runs on, read from the installed
    distributions' metadata (nothing is imported)."""
    from llm_unlearn import __version__

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{name} {v(name)}" for name in VERSIONS_OF)
    return f"llm-unlearn {__version__}\n{deps}, python {sys.version.split()[0]}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _add_console_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """--verbose / --debug, accepted before or after the subcommand (`llm-unlearn demo --verbose`)."""
    default = False if top else argparse.SUPPRESS  # a leaf's absent flag must not reset the top one
    parser.add_argument("--verbose", "-v", action="store_true", default=default,
                        help="show everything: Trainer log lines, library warnings and INFO messages")
    parser.add_argument("--debug", action="store_true", default=default, help="show full tracebacks on errors")


def _leaf_parsers(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            yield from _leaf_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-unlearn",
        description="Make a language model forget specific training data, and measure it.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version of llm-unlearn and of torch, transformers, peft and trl")
    _add_console_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"llm_unlearn.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"llm_unlearn.cli.{module_name}":
                raise
            p = sub.add_parser(name, help=help_text + " (not implemented yet)")
            p.set_defaults(func=_not_implemented(name))
            continue
        module.register(sub, name, help_text)
        for leaf in _leaf_parsers(sub.choices[name]):
            _add_console_flags(leaf, top=False)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted run: the same one, plus ``--resume``."""
    args = [a for a in argv if a != "--resume"]
    return "llm-unlearn " + shlex.join([*args, "--resume"])


def main(argv: list[str] | None = None) -> int:
    from llm_unlearn.errors import TrainingInterrupted, UnlearnError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("LLM_UNLEARN_DEBUG") == "1"
    from llm_unlearn.console import cli_session
    from llm_unlearn.perf import tune_allocator

    tune_allocator()  # large CPU buffers are reused, not page-faulted in again every step
    try:
        with cli_session(verbose=args.verbose):
            rc = args.func(args)
    except TrainingInterrupted as exc:
        print(f"{exc}\nresume with: {resume_command(argv)}", file=sys.stderr)
        return exc.exit_code
    except UnlearnError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        if debug:
            raise
        print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
