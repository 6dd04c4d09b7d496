"""Shared helpers of the SmolLM2 / real-TOFU benchmarks (`cost.py`, `tofu_frontier.py`): the TOFU
subset source, machine and version info, peak memory of a process, and running one measured
phase in a fresh Python process (so peaks of different configurations never mix)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm_unlearn.perf import huge_pages_enabled, tune_allocator  # noqa: E402

tune_allocator()  # every benchmark process reuses large CPU buffers, as the llm-unlearn command does

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tofu"
QA_PER_AUTHOR = 20  # TOFU: 20 QA pairs per fictitious author


def default_data() -> str | None:
    """``../shared/data/tofu`` relative to the repository, when it exists."""
    return str(DEFAULT_DATA) if (DEFAULT_DATA / "full.jsonl").is_file() else None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def forget_items(authors: int, forget_split: str) -> int:
    """Items of `forget_split` (forgetXX: the last XX % of the authors, at least one) in a subset of `authors`."""
    from llm_unlearn.data.tofu import forget_percent

    return max(1, round(authors * forget_percent(forget_split) / 100)) * QA_PER_AUTHOR


HOLDOUT_ALL = "holdout_all"  # a subset's split of every outside item (the tuner's larger holdout, --tune-holdout-items)
HOLDOUT_ALL_DOC = "every item of full with perturbed answers about authors outside the subset"


def write_tofu_subset(source: str | Path, out: str | Path, authors: int, forget_split: str = "forget10") -> Path:
    """The first `authors` fictitious authors of a TOFU-layout directory as a TOFU source of its own.

    ``full`` = their items; ``forgetXX`` = the last XX % of those authors (forget10 of 20 authors =
    the last 2 = 40 items); ``retain{100-XX}`` = the rest; ``forgetXX_perturbed`` = the forget items
    with their paraphrased / perturbed answers; ``retain_perturbed`` = as many retain items (the first
    ones with perturbed answers); ``holdoutXX`` = as many items about authors *outside* the subset
    (the last authors of ``full`` that have paraphrased / perturbed answers), which neither the
    target nor the retain model ever trains on: the reference of the retain-free forgetting scores
    (holdout forget quality, membership AUCs); ``holdout_all`` = every such item (400 on TOFU: the
    tuner's larger holdout, scored once); the utility sets (real authors, world facts) and
    ``idontknow.txt`` are copied. Rewritten only when the settings change (``SUBSET`` records them)."""
    from llm_unlearn.data.synthetic import write_splits
    from llm_unlearn.data.tofu import available_splits, load_tofu
    from llm_unlearn.errors import UnlearnError

    source, out = Path(source), Path(out)
    settings = {"source": str(source.resolve()), "authors": authors, "forget_split": forget_split,
                "holdout": "last authors of full with perturbed answers", HOLDOUT_ALL: HOLDOUT_ALL_DOC}
    stamp = out / "SUBSET"  # no .json suffix: not a split
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return out
    full = load_tofu("full", source).to_list()
    n = authors * QA_PER_AUTHOR
    if n > len(full):
        raise UnlearnError(f"--authors {authors} needs {n} items, {source}/full has {len(full)}")
    rows = full[:n]
    k = forget_items(authors, forget_split)
    if k >= n:
        raise UnlearnError(f"--authors {authors}: {forget_split} would leave no retain authors")
    perturbed: dict[str, dict] = {}
    for name in available_splits(source):
        if name.endswith("_perturbed") and name.startswith(("forget", "retain")):
            for r in load_tofu(name, source).to_list():
                perturbed.setdefault(r["question"], r)
    forget, retain = rows[-k:], rows[:-k]
    missing = [r["question"] for r in forget if r["question"] not in perturbed]
    if missing:
        raise UnlearnError(f"{source}: no perturbed answers for forget item '{missing[0][:60]}'")
    retain_perturbed = [perturbed[r["question"]] for r in retain if r["question"] in perturbed][:k]
    if len(retain_perturbed) < k:
        raise UnlearnError(f"{source}: fewer than {k} retain items with perturbed answers in the first {authors} authors")
    subset_questions = {r["question"] for r in rows}
    outside = [perturbed[r["question"]] for r in full[n:] if r["question"] in perturbed
               and r["question"] not in subset_questions]
    if len(outside) < k:
        raise UnlearnError(f"{source}: fewer than {k} items with perturbed answers about authors outside the first "
                           f"{authors} (needed for the holdout split)")
    tag = forget_split.removeprefix("forget")
    splits = {"full": rows, forget_split: forget, f"retain{100 - int(tag):02d}": retain,
              f"{forget_split}_perturbed": [perturbed[r["question"]] for r in forget],
              "retain_perturbed": retain_perturbed, f"holdout{tag}": outside[-k:], HOLDOUT_ALL: outside}
    for name in ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed"):
        splits[name] = load_tofu(name, source).to_list()
    write_splits(splits, out, meta={"qa_per_author": QA_PER_AUTHOR, "subset_of": str(source), "authors": authors})
    refusals = source / "idontknow.txt"
    if refusals.is_file():
        (out / "idontknow.txt").write_text(refusals.read_text(encoding="utf-8"), encoding="utf-8")
    stamp.write_text(json.dumps(settings) + "\n")
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, torch threads, memory, load average and library versions."""
    import torch

    from llm_unlearn.runinfo import versions

    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb, "cuda": torch.cuda.is_available(), "platform": platform.platform(),
        "python": platform.python_version(), "load_average_at_start": list(os.getloadavg()),
        "versions": versions(),
        "allocator": ("glibc, freed memory kept in the heap (llm_unlearn.perf.tune_allocator)" if tune_allocator()
                      else "default"),
        "huge_pages": huge_pages_enabled(),
    }


def run_phase(script: str | Path, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; its last stdout line is a JSON dict (returned,
    with ``wall_s`` of the whole process and ``command``). Raises with the child's stderr tail."""
    cmd = [sys.executable, str(script), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(wall, 2)
    result["command"] = " ".join(["python", os.path.relpath(cmd[1], REPO), *cmd[2:]])
    return result


def _cell(v: Any, decimals: int) -> str:
    """A table cell: n/a for None, small floats in 3 significant digits, others with `decimals`."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and abs(v) < 1e-2 else f"{v:.{decimals}f}"
    return str(v)


def fmt_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table (left-aligned first column, right-aligned others)."""
    table = [header] + [[_cell(v, 2) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """The same table in Markdown."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v, 3) for v in r) + " |" for r in rows]
    return "\n".join(out)
