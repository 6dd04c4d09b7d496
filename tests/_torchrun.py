"""Launching real multi-process runs from tests: ``torchrun --standalone`` on CPU (gloo).

``--standalone`` lets torchrun open its own rendezvous store on a free port and hand it to the
process group, so no port is picked by the test and released before the launcher binds it
(the race a "find a free port, then pass --master_port" helper has under parallel runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun(procs: int) -> list[str]:
    """The command prefix that starts `procs` processes of a script (the plain interpreter for 1)."""
    if procs <= 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]


def worker_env() -> dict[str, str]:
    """The environment of a CPU worker: the repo importable, one thread per process, offline."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
