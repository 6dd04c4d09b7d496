"""The allocator setting (llm_unlearn.perf): applied once per process, off with LLM_UNLEARN_MALLOC=default.
Its effect on speed is measured by benchmarks/cost.py, not here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
from llm_unlearn.perf import tune_allocator
first = tune_allocator()
print(first, tune_allocator() == first)
"""


def _probe(**env: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc-only setting")
def test_allocator_setting_is_applied_once_and_can_be_turned_off():
    assert _probe() == ["True", "True"]
    assert _probe(LLM_UNLEARN_MALLOC="default") == ["False", "True"]

