"""CPU allocator tuning for training and evaluation loops.

glibc serves every allocation above 32 MB (the largest dynamic mmap threshold) with a fresh
``mmap`` and returns it to the kernel on free. A training step allocates and frees such buffers
every time: logits (batch × answer tokens × vocabulary), the dense gradient of the input
embedding (vocabulary × hidden, 113 MB on SmolLM2) and its tied-weight sum. Each one is
page-faulted in again, 4 KB at a time. Keeping freed memory in the heap instead
(``M_MMAP_MAX = 0``: no mmap-served allocations; ``M_TRIM_THRESHOLD`` huge: the heap top is
never trimmed) makes those buffers reusable. Measured with `benchmarks/cost.py` on SmolLM2-135M,
2 CPU cores: 10 full-weight NPO steps 47.9 s → 34.4 s (-28 %), peak RSS 4.10 → 4.21 GB. Peak
RSS barely moves because the freed memory is reused, not added; the process just does not hand
it back to the OS before it exits.

`tune_allocator` is called by the ``llm-unlearn`` command, the recipes and the benchmarks. It is
a process-wide setting, so library code never calls it on its own: call it yourself at the top
of a script if you want it. ``LLM_UNLEARN_MALLOC=default`` in the environment turns it off; on
systems without glibc it does nothing.

The one exception is `lean_allocator`, the memory-first policy, which the UnlearnTrainer applies
when a run asks for memory savings (``optim_in_backward`` on CPU): every allocation of at least
2 MiB (`LEAN_MMAP_THRESHOLD`) gets its own mapping and goes back to the OS when freed, the heap
top is trimmed, and what the heap kept so far is released (``malloc_trim``). A heap that keeps
freed memory also keeps its fragmentation: on SmolLM2-135M, NPO+RT in-backward Adafactor with
checkpointing, live allocations peaked at 1.15 GB but RSS at 3.04 GB with `tune_allocator`'s
setting, 2.16 GB with glibc's defaults (only buffers over 32 MB mapped), 1.64 GB with a 1 MB
threshold, at +40 % CPU time for the page faults (3 steps, 1 thread). With huge pages
(`huge_pages`) and the 2 MiB threshold, each mapped buffer faults in 2 MB at a time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # an int: the largest threshold mallopt takes
_MMAP_MAX_DEFAULT = 65536
_TRIM_DEFAULT = 128 * 1024
# bytes: allocations from this size on are mapped on their own by `lean_allocator`. 2 MiB is where
# torch starts aligning buffers to huge pages (`huge_pages`), so every mapped buffer faults in 2 MB at
# a time, while the many smaller ones (a SmolLM2 layer's activations of a batch: ~1.6 MB) are reused
# from the heap. Measured on SmolLM2-135M, NPO+RT in-backward Adafactor + checkpointing, huge pages
# on (benchmarks/cost.py): 1 MiB 1.88x the fp32 weights at 1.48x AdamW's time; 2 MiB 2.28x at 1.20x
LEAN_MMAP_THRESHOLD = 2 << 20

_done: bool | None = None
_lean: bool | None = None


def huge_pages() -> bool:
    """Back torch's large CPU buffers (2 MB and more) with transparent huge pages: sets
    ``THP_MEM_ALLOC_ENABLE=1``, which makes torch's CPU allocator align such buffers to 2 MB and
    ``madvise(MADV_HUGEPAGE)`` them. A buffer mapped afresh (every large one under `lean_allocator`)
    then costs one page fault per 2 MB instead of one per 4 KB: allocating and filling a 141 MB and
    a 3.5 MB buffer 200 times took 16.1 s of CPU with 4 KB pages, 3.1 s with huge pages (7.6 M vs
    0.29 M faults). torch reads the variable once, at its first large allocation, so this must run
    before a model is built: `tune_allocator` calls it (the ``llm-unlearn`` command, the recipes and
    the benchmarks do at start). ``LLM_UNLEARN_THP=0`` (or a ``THP_MEM_ALLOC_ENABLE`` already set)
    leaves it alone; so does a kernel whose transparent huge pages are ``never``. Returns whether
    torch will use huge pages (as far as can be known here)."""
    if not sys.platform.startswith("linux"):
        return False
    if "THP_MEM_ALLOC_ENABLE" in os.environ or os.environ.get("LLM_UNLEARN_THP", "1") == "0":
        return huge_pages_enabled()
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    if "[never]" in mode:
        return False
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    return True


def huge_pages_enabled() -> bool:
    """Whether torch's large CPU buffers get huge pages in processes started from here (``THP_MEM_ALLOC_ENABLE``)."""
    return os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")


def tune_allocator() -> bool:
    """Keep freed CPU memory in the glibc heap for reuse (see the module docstring), and back large
    buffers with huge pages (`huge_pages`). Returns whether the heap setting is active; idempotent."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("LLM_UNLEARN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    huge_pages()
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    if not ok:
        logger.debug("mallopt refused the allocator settings")
    _done = bool(ok)
    return _done


def lean_allocator() -> bool:
    """Memory first (module docstring): allocations of `LEAN_MMAP_THRESHOLD` bytes or more are
    mapped on their own and unmapped when freed, the heap top is trimmed, and free heap memory is
    handed back now. Process-wide and idempotent; returns whether it is active. Nothing happens
    with ``LLM_UNLEARN_MALLOC=default`` (glibc's own policy), ``LLM_UNLEARN_MALLOC=reuse`` (keep
    `tune_allocator`'s faster heap: speed over memory) or without glibc. Costs page faults on every large buffer
    (+18 % time of a training step on SmolLM2-135M with huge pages, +48 % without them at a 1 MiB
    threshold); undone by nothing but a new process."""
    global _lean, _done
    if _lean is not None:
        return _lean
    _lean = False
    policy = os.environ.get("LLM_UNLEARN_MALLOC", "").lower()
    if policy in ("default", "reuse") or not sys.platform.startswith("linux"):
        return False
    threshold = lean_threshold(policy)
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(M_MMAP_MAX, _MMAP_MAX_DEFAULT) == 1
              and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, _TRIM_DEFAULT) == 1)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    if ok:
        _done = False  # tune_allocator's setting is no longer in effect (and is not applied again)
        logger.debug("allocator: memory first (mmap threshold %d bytes)", threshold)
    _lean = bool(ok)
    return _lean


def parse_lean_threshold(policy: str) -> int | None:
    """The mmap threshold a lean policy names: `LEAN_MMAP_THRESHOLD` for ``lean``, N bytes for
    ``lean:N[K|M]`` (up to 32M, glibc's largest on 64-bit); None for anything else."""
    if policy == "lean":
        return LEAN_MMAP_THRESHOLD
    if not policy.startswith("lean:"):
        return None
    spec = policy.split(":", 1)[1].strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20}.get(spec[-1:], 1)
    digits = spec[:-1] if scale > 1 else spec
    value = int(digits) * scale if digits.isdigit() else 0
    return value if 0 < value <= 32 << 20 else None


def lean_threshold(policy: str) -> int:
    """The mmap threshold of the lean policy: `LEAN_MMAP_THRESHOLD`, or ``lean:N[K|M]`` in
    ``LLM_UNLEARN_MALLOC`` (a larger threshold: fewer page faults, more memory kept in the heap)."""
    if not policy.startswith("lean:"):
        return LEAN_MMAP_THRESHOLD
    value = parse_lean_threshold(policy)
    if value is None:
        logger.warning("LLM_UNLEARN_MALLOC=%s: expected lean:N[K|M] up to 32M; using %d bytes", policy,
                       LEAN_MMAP_THRESHOLD)
        return LEAN_MMAP_THRESHOLD
    return value


def allocator_policy() -> str:
    """``lean`` (`lean_allocator`), ``reuse`` (`tune_allocator`) or ``default`` (glibc's own)."""
    return "lean" if _lean else "reuse" if _done else "default"


def own_trainable_weights(model) -> int:
    """Copy trainable CPU parameters that live in a file mapping into process memory (in place;
    returns how many were copied).

    `from_pretrained` maps safetensors files copy-on-write: a CPU parameter's storage is the file's
    pages. The first optimizer step writes every such page, and each write is a page fault that
    copies 4 KB: on SmolLM2-135M (fp32, 2 cores) the first AdamW step took 2.9 s instead of 0.09 s.
    One bulk copy before training costs 0.17 s. File-mapped storages are the non-resizable ones;
    GPU, meta and frozen parameters (LoRA bases, which are only read) are left as they are.
    Tied parameters stay tied: the `Parameter` object is kept, only its data is replaced.

    Each copied tensor's file pages are dropped from this process right after its copy
    (`_drop_file_pages`): the mapping stays until every tensor of the file is copied, and its
    pages read so far would otherwise count in RSS next to the copies (on SmolLM2-135M fp32 the
    peak RSS of set-up was weights × 2: 0.54 GB file pages + 0.54 GB copies)."""
    copied = 0
    for p in model.parameters():  # `.data` is outside autograd: the copy records no graph
        if p.requires_grad and p.device.type == "cpu" and not p.untyped_storage().resizable():
            mapped = p.data
            p.data = mapped.clone()
            _drop_file_pages(mapped)
            copied += 1
    return copied


_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _drop_file_pages(t) -> bool:
    """Unmap the resident pages of a file-mapped, contiguous CPU tensor from this process
    (``madvise(MADV_DONTNEED)`` on the whole pages inside it; Linux only). The data stay valid: a
    later read maps them again from the file (page cache). Only for tensors nothing has written
    (copy-on-write pages would lose their writes): `own_trainable_weights` calls it on the mapped
    originals it has just copied."""
    if not sys.platform.startswith("linux") or not t.is_contiguous():
        return False
    start = -(-t.data_ptr() // _PAGE) * _PAGE
    end = (t.data_ptr() + t.numel() * t.element_size()) // _PAGE * _PAGE
    if end <= start:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0
    except (OSError, AttributeError):
        return False


class MallocPeak:
    """The peak of live CPU allocations while it runs: every `interval` seconds a thread reads
    glibc's ``mallinfo2`` (heap bytes in use + mmapped chunks, over all arenas), i.e. what has
    been allocated and not freed, without the free memory a heap keeps (which RSS counts, and
    `tune_allocator` keeps on purpose). `start`: the value when created; `peak`: the highest seen
    until `stop()`; ``peak - start`` is what the code in between added at most. ``available`` is
    False without glibc (then both stay 0). Used to check `llm_unlearn.memory` against runs."""

    def __init__(self, interval: float = 0.002):
        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]

        self._info = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallinfo2.restype = MallInfo2
                self._info = libc.mallinfo2
            except (OSError, AttributeError):
                self._info = None
        self.available = self._info is not None
        self.start = self.peak = self.live()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def live(self) -> int:
        """Bytes malloc has handed out and not got back, now."""
        if self._info is None:
            return 0
        m = self._info()
        return int(m.uordblks + m.hblkhd)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.live())

    def stop(self) -> int:
        """Stop sampling; returns ``peak - start``."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.live())
        return self.peak - self.start
