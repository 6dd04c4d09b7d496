"""What a run prints: quiet by default (one progress bar per stage, our own messages, a table at
the end), everything with ``verbose`` (the Trainer's log dicts, library warnings and INFO logs).

The `llm-unlearn` command sets the mode for the length of one command (`cli_session`); the
library asks `is_verbose()` and draws its bars with `stage_bar` / `sub_progress`. Trainer log
dicts always go to ``trainer_log.jsonl`` of the run (`TrainerLogFile`), whatever the mode.

Cheap to import (no torch, no transformers): the CLI imports it before parsing is done."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

VERBOSE_ENV = "LLM_UNLEARN_VERBOSE"
TRAINER_LOG_FILE = "trainer_log.jsonl"

_verbose: bool | None = None  # None: not set by a CLI session (library use): see is_verbose
_extra_log_files: list[Path] = []


def is_verbose() -> bool:
    """True inside ``cli_session(verbose=True)`` or with ``LLM_UNLEARN_VERBOSE=1``."""
    if _verbose is not None:
        return _verbose
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")


# -- progress bars -----------------------------------------------------------------------------
def stage_bar(desc: str, total: int | None = None, unit: str = "step", **kwargs: Any):
    """The one bar of a stage (finetune, unlearn, eval, S3T): it stays on screen when done, so a
    finished run reads as one line per stage. Its postfix carries method, step and loss."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs["disable"] = kwargs.get("disable", False) or not _is_main_process()
    return tqdm(total=total, desc=desc, unit=unit, leave=True, **kwargs)


def _is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or no launcher): the one process that draws bars."""
    return os.environ.get("RANK", "0") == "0"


def sub_progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A transient bar for work inside a stage (NLL scoring, mask gradients): shown only in
    verbose mode, so the default console keeps one bar per stage."""
    if not is_verbose():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def format_loss(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


# -- Trainer log dicts ---------------------------------------------------------------------------
class TrainerLogFile:
    """Appends each Trainer log dict as one JSON line to ``<output>/trainer_log.jsonl`` (and to the
    files of enclosing `extra_trainer_log` blocks, e.g. the demo's), tagged with the stage."""

    def __init__(self, output_dir: str | Path | None, stage: str):
        self.paths = [Path(output_dir) / TRAINER_LOG_FILE] if output_dir is not None else []
        self.paths += list(_extra_log_files)
        self.stage = stage

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"stage": self.stage, **record}, default=_jsonable) + "\n"
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)


def _jsonable(obj: Any) -> Any:
    item = getattr(obj, "item", None)
    return item() if callable(item) else str(obj)


@contextlib.contextmanager
def extra_trainer_log(path: str | Path) -> Iterator[Path]:
    """Inside this block every Trainer log dict is also appended to `path` (the demo collects
    the logs of all its stages in ``OUTPUT/trainer_log.jsonl``)."""
    p = Path(path)
    _extra_log_files.append(p)
    try:
        yield p
    finally:
        _extra_log_files.remove(p)


# -- the CLI's edge -----------------------------------------------------------------------------
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


# Library loggers quiet mode lowers to ERROR. They keep their own handlers (transformers has one
# and does not propagate), so a filter on ours is not enough.
_LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "peft", "trl", "accelerate",
                    "bitsandbytes", "torch.distributed")
# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional Hub kernel is missing;
# the CPU fallback it then uses is correct, in every mode.
_ALWAYS_QUIET = ("bitsandbytes.backends.cpu.ops",)
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # read when transformers configures its logger (first import)
    "DATASETS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextlib.contextmanager
def cli_session(verbose: bool) -> Iterator[None]:
    """The console of one CLI command. Quiet (default): Python warnings of other packages are
    ignored, library loggers show only errors, Hub/datasets bars are off, the Trainer's dict lines
    go to ``trainer_log.jsonl`` only. Verbose: library defaults, plus our INFO messages. Every
    change is undone on exit (tests call the CLI many times in one process)."""
    global _verbose
    previous_verbose = _verbose
    previous_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    previous_levels = {name: logging.getLogger(name).level for name in (*_LIBRARY_LOGGERS, *_ALWAYS_QUIET, "llm_unlearn")}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    ours = logging.getLogger("llm_unlearn")
    with warnings.catch_warnings():
        _verbose = verbose
        for name in _ALWAYS_QUIET:
            logging.getLogger(name).setLevel(logging.ERROR)
        if verbose:
            ours.setLevel(logging.INFO)
            handler.setLevel(logging.INFO)
        else:
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"llm_unlearn(\.|$)")
            for key, value in _QUIET_ENV.items():
                os.environ.setdefault(key, value)
            for name in _LIBRARY_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            ours.setLevel(logging.WARNING)
            handler.setLevel(logging.WARNING)
            bars_before = _library_bars()
            _set_library_bars(dict.fromkeys(bars_before, False))
        ours.addHandler(handler)
        try:
            yield
        finally:
            ours.removeHandler(handler)
            _verbose = previous_verbose
            for key, value in previous_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, level in previous_levels.items():
                # transformers sets its level on first import: put back what it would choose
                logging.getLogger(name).setLevel(level or (logging.WARNING if name in _LIBRARY_LOGGERS else 0))
            if not verbose:
                # libraries imported during the command start with bars on (their default), as before
                _set_library_bars({**dict.fromkeys(_library_bars(), True), **bars_before})


# progress-bar switches of libraries that may already be imported (looked up, never imported:
# a library imported later reads the environment variables set above)
_BAR_SWITCHES = {  # library -> (module holding the switch, is-on function, on, off); the Hub's last:
    # transformers' switch flips it too
    "transformers": ("transformers.utils.logging", "is_progress_bar_enabled", "enable_progress_bar",
                     "disable_progress_bar"),
    "datasets": ("datasets.utils.logging", "is_progress_bar_enabled", "enable_progress_bar", "disable_progress_bar"),
    "huggingface_hub": ("huggingface_hub.utils", "are_progress_bars_disabled", "enable_progress_bars",
                        "disable_progress_bars"),
}


def _library_bars() -> dict[str, bool]:
    """Whether the already imported libraries draw their own bars (weights loading, shard writing, map)."""
    state = {}
    for name, (module, is_on, _, _) in _BAR_SWITCHES.items():
        mod = sys.modules.get(module)
        if mod is not None:
            value = bool(getattr(mod, is_on)())
            state[name] = not value if is_on.startswith("are_") else value
    return state


def _set_library_bars(state: dict[str, bool]) -> None:
    for name, on in state.items():
        module, _, enable, disable = _BAR_SWITCHES[name]
        getattr(sys.modules[module], enable if on else disable)()
