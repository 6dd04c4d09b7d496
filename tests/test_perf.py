"""The allocator setting (llm_unlearn.perf): applied once per process, off with LLM_UNLEARN_MALLOC=default.
Its effect on speed is measured by benchmarks/cost.py, not here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_unlearn.perf import parse_lean_threshold

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



LEAN = """
import torch
from llm_unlearn.perf import MallocPeak, allocator_policy, lean_allocator, tune_allocator
import ctypes
tune_allocator()
sampler = MallocPeak(interval=3600)

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mapped_while_alive():  # bytes malloc serves from their own mappings for an 8 MB tensor
    base = libc.mallinfo2().hblkhd
    t = torch.ones(2 << 20)
    return libc.mallinfo2().hblkhd - base

before, policy_before = mapped_while_alive(), allocator_policy()
print(lean_allocator(), lean_allocator(), policy_before, allocator_policy(), before, mapped_while_alive() >= 8 << 20)
sampler.stop()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc-only setting")
def test_lean_allocator_maps_large_buffers_on_their_own():
    """`tune_allocator` keeps every buffer in the heap; `lean_allocator` (the trainer's choice
    with optim_in_backward) serves large ones from their own mappings, returned to the OS on free."""
    def run(**env):
        return subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, check=True,
                              env={**os.environ, **env}).stdout.split()

    assert run() == ["True", "True", "reuse", "lean", "0", "True"]
    off = run(LLM_UNLEARN_MALLOC="default")
    assert off[:4] == ["False", "False", "default", "default"]
    fast = run(LLM_UNLEARN_MALLOC="reuse")  # speed over memory: the heap keeps its buffers
    assert fast == ["False", "False", "reuse", "reuse", "0", "False"]


THRESHOLD = """
import torch
from llm_unlearn.perf import lean_allocator
import ctypes

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
lean_allocator()

def mapped(n_bytes):  # does malloc serve a tensor of n_bytes from its own mapping?
    base = libc.mallinfo2().hblkhd
    t = torch.empty(n_bytes // 4)
    return libc.mallinfo2().hblkhd - base >= n_bytes

print(mapped(1 << 20), mapped(4 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc-only setting")
def test_lean_threshold_splits_heap_and_mapped_buffers():
    """Under `lean_allocator` buffers below the threshold (2 MiB, where torch's huge pages start)
    are reused from the heap and larger ones are mapped; ``lean:N`` moves the threshold, and a
    malformed one falls back to the default."""
    def run(policy=None):
        env = {k: v for k, v in os.environ.items() if k != "LLM_UNLEARN_MALLOC"}
        env.update({"LLM_UNLEARN_MALLOC": policy} if policy else {})
        return subprocess.run([sys.executable, "-c", THRESHOLD], capture_output=True, text=True, check=True,
                              env=env).stdout.split()

    assert run() == ["False", "True"]
    assert run("lean:512K") == ["True", "True"]
    assert run("lean:8M") == ["False", "False"]
    assert run("lean:lots") == ["False", "True"]
    assert parse_lean_threshold("lean") == 2 << 20 and parse_lean_threshold("lean:4m") == 4 << 20
    assert parse_lean_threshold("lean:64M") is None and parse_lean_threshold("reuse") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_owning_file_mapped_weights_drops_their_file_pages(tmp_path):
    """A parameter whose storage is a file mapping (as `from_pretrained` loads safetensors) is
    copied into process memory with the same values, and the file pages read for the copy leave
    RSS at once (not only when the last tensor of the file is copied)."""
    import torch

    from llm_unlearn.perf import own_trainable_weights

    def rss_file() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))

    n = 16 << 20  # 64 MB of fp32
    path = tmp_path / "w.bin"
    torch.arange(n, dtype=torch.float32).numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=n, dtype=torch.float32)
    layer = torch.nn.Linear(4096, 4096, bias=False)
    layer.weight.data = mapped.view(4096, 4096)
    keep_mapping = mapped  # the file stays mapped, as while other tensors of a checkpoint wait for their copy
    assert not layer.weight.untyped_storage().resizable()
    before = rss_file()
    assert own_trainable_weights(layer) == 1
    assert layer.weight.untyped_storage().resizable()
    assert torch.equal(layer.weight.view(-1), torch.arange(n, dtype=torch.float32))
    assert rss_file() - before < 16 << 20  # without the drop: + 64 MB of file pages
    assert keep_mapping[12345].item() == 12345.0  # the mapping still reads right (paged in again)


THP = """
import os, resource
from llm_unlearn.perf import lean_allocator, tune_allocator
tune_allocator()
import torch
lean_allocator()  # every large buffer mapped afresh: the case huge pages are for
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(8 << 20)  # 32 MB, mapped, filled, unmapped
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _thp_mode() -> str:
    try:
        return open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "[never]"


@pytest.mark.skipif(not sys.platform.startswith("linux") or "[never]" in _thp_mode(),
                    reason="needs transparent huge pages (madvise or always)")
def test_huge_pages_cut_the_page_faults_of_fresh_buffers():
    """`tune_allocator` turns on torch's huge-page CPU allocations before any large buffer exists;
    a buffer mapped afresh then faults in 2 MB at a time. ``LLM_UNLEARN_THP=0`` leaves them off."""
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "LLM_UNLEARN_THP")}

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", THP], capture_output=True, text=True, check=True,
                             env={**env, **extra}).stdout.split()
        return out[0], int(out[1])

    on, faults_on = run()
    off, faults_off = run(LLM_UNLEARN_THP="0")
    assert (on, off) == ("1", "unset")
    assert faults_off >= 10 * (8 << 20) * 4 // 4096 * 0.9  # one fault per 4 KB page of every buffer
    assert faults_on < faults_off / 4
    assert run(THP_MEM_ALLOC_ENABLE="0")[0] == "0"  # the user's own setting is kept
