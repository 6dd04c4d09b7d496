"""Multiple-choice scoring with lm-eval-harness on the in-memory model (WMDP, MMLU, local tasks).

WAGLE (Jia et al., 2024, §5) and WMDP (Li et al., 2024) score corpus unlearning as accuracy on
WMDP-bio / WMDP-cyber (should fall to chance, 25 %) and MMLU (should stay). `run_lm_eval` wraps
the model that is already loaded (full weights, PEFT adapter, a masked run) in lm-eval's
``HFLM`` and calls ``lm_eval.simple_evaluate``; `lm_eval_summary` (a pure function) turns its
result into ``{task: {acc, acc_stderr, chance, n, …}}`` with chance computed from the number of
choices of each scored item. lm-eval is optional and heavy: imported inside the function.

Quiet by default (`llm_unlearn.console.is_verbose`): lm-eval's progress bars (plain tqdm on
stderr), its INFO / WARNING log lines and the stderr of the ``git describe`` it runs for its
result header stay off the console; ``--verbose`` shows them all.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_unlearn.console import is_verbose
from llm_unlearn.errors import UnlearnError

logger = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm")


@contextlib.contextmanager
def _lm_eval_console(quiet: bool) -> Iterator[None]:
    """While lm-eval runs, quiet: its logger shows errors only (its INFO lines, and its warning
    that ``pretrained`` is a model object, our design, are not for the user), and stderr (Python's
    ``sys.stderr``, where its tqdm bars go, and file descriptor 2, inherited by its ``git``
    subprocess) is sent to /dev/null. An error still surfaces: it is raised, and printed by the
    caller after stderr is back. Verbose: nothing changes."""
    if not quiet:
        yield
        return
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    lm_logger.setLevel(max(logging.ERROR, level))
    with contextlib.ExitStack() as stack:
        stack.callback(lm_logger.setLevel, level)
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        try:
            sys.__stderr__.flush()
            saved = os.dup(2)
        except (AttributeError, OSError, ValueError):  # no real stderr (embedded interpreter): Python level only
            saved = None
        if saved is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)

            def _restore() -> None:
                os.dup2(saved, 2)
                os.close(saved)

            stack.callback(_restore)
        yield


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UnlearnError("--lm-eval-tasks: no task name given")
    return names


def _task_manager(names: list[str], include: str | Path | None):
    from lm_eval.tasks import TaskManager

    if include is not None:
        if not Path(include).is_dir():
            raise UnlearnError(f"--lm-eval-include: not a directory: {include}")
        local = TaskManager(include_path=str(include), include_defaults=False)
        if all(n in local.all_tasks for n in names):  # skip indexing lm-eval's thousands of built-in configs
            return local
    manager = TaskManager(include_path=str(include) if include is not None else None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        where = f" (built-in or in {include})" if include is not None else " (use --lm-eval-include DIR for local configs)"
        raise UnlearnError(f"--lm-eval-tasks: unknown lm-eval task(s) {', '.join(unknown)}{where}")
    return manager


def lm_eval_summary(results: dict[str, Any], samples: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance", "n"}}`` from a
    ``simple_evaluate`` result's ``results`` (and ``samples``, for chance = mean 1/#choices)."""
    out: dict[str, dict] = {}
    for task, metrics in results.items():
        row: dict[str, Any] = {}
        for m in METRICS:
            for key, value in metrics.items():
                name, _, _filter = key.partition(",")
                if name == m:
                    row[m] = value
                elif name == f"{m}_stderr":
                    row[f"{m}_stderr"] = value if isinstance(value, (int, float)) else None
        if not row:
            continue
        items = (samples or {}).get(task)
        if items:
            n_choices = [len(s.get("arguments", ())) for s in items]
            row["chance"] = sum(1 / k for k in n_choices if k) / len(n_choices)
            row["n"] = len(items)
        out[task] = row
    return out


def run_lm_eval(model, tokenizer, tasks: str | list[str], include: str | Path | None = None,
                batch_size: int = 8, limit: int | float | None = None, num_fewshot: int | None = None,
                seed: int = 0) -> dict[str, dict]:
    """Score the loaded `model` on lm-eval `tasks`; returns `lm_eval_summary` of the result."""
    names = parse_tasks(tasks)
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UnlearnError("lm-eval scoring needs the lm-eval package: pip install lm-eval") from None
    if not (hasattr(model, "config") and hasattr(model, "device")):
        raise UnlearnError(f"lm-eval scoring needs a Hugging Face model object; got {type(model).__name__}")
    was_training = getattr(model, "training", False)
    with _lm_eval_console(quiet=not is_verbose()):
        manager = _task_manager(names, include)
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            result = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                             num_fewshot=num_fewshot, log_samples=True, random_seed=seed,
                                             numpy_random_seed=seed, torch_random_seed=seed,
                                             fewshot_random_seed=seed)
        finally:
            if was_training:
                model.train()
    if result is None:
        raise UnlearnError("lm-eval returned no result (not rank 0?)")
    return lm_eval_summary(result["results"], result.get("samples"))


def lm_eval_markdown(named_summaries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """A Markdown table of lm-eval accuracy vs chance for each ``(run name, eval summary)`` that
    has an ``lm_eval`` section (and verbatim memorisation, when scored); [] when none has."""
    runs = [(name, s) for name, s in named_summaries if s and (s.get("lm_eval") or s.get("verbatim_memorisation"))]
    if not runs:
        return []
    tasks = sorted({t for _, s in runs for t in (s.get("lm_eval") or {})})
    has_mem = any(s.get("verbatim_memorisation") for _, s in runs)
    head = ["Run"] + [f"{t} acc (chance)" for t in tasks] + (["VerbMem ROUGE-L"] if has_mem else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in runs:
        cells = [name]
        for t in tasks:
            row = (s.get("lm_eval") or {}).get(t)
            if row is None or row.get("acc") is None:
                cells.append("n/a")
                continue
            err = f" ± {100 * row['acc_stderr']:.1f}" if row.get("acc_stderr") is not None else ""
            chance = f" ({100 * row['chance']:.1f})" if row.get("chance") is not None else ""
            cells.append(f"{100 * row['acc']:.1f}{err}{chance}")
        if has_mem:
            mem = (s.get("verbatim_memorisation") or {}).get("mean")
            cells.append(f"{mem:.3f}" if mem is not None else "n/a")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


__all__ = ["lm_eval_markdown", "lm_eval_summary", "parse_tasks", "run_lm_eval"]
