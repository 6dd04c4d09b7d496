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
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # an int: the largest threshold mallopt takes

_done: bool | None = None


def tune_allocator() -> bool:
    """Keep freed CPU memory in the glibc heap for reuse (see the module docstring). Returns
    whether the setting is active; idempotent."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("LLM_UNLEARN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    if not ok:
        logger.debug("mallopt refused the allocator settings")
    _done = bool(ok)
    return _done


def own_trainable_weights(model) -> int:
    """Copy trainable CPU parameters that live in a file mapping into process memory (in place;
    returns how many were copied).

    `from_pretrained` maps safetensors files copy-on-write: a CPU parameter's storage is the file's
    pages. The first optimizer step writes every such page, and each write is a page fault that
    copies 4 KB: on SmolLM2-135M (fp32, 2 cores) the first AdamW step took 2.9 s instead of 0.09 s.
    One bulk copy before training costs 0.17 s. File-mapped storages are the non-resizable ones;
    GPU, meta and frozen parameters (LoRA bases, which are only read) are left as they are.
    Tied parameters stay tied: the `Parameter` object is kept, only its data is replaced."""
    copied = 0
    for p in model.parameters():  # `.data` is outside autograd: the copy records no graph
        if p.requires_grad and p.device.type == "cpu" and not p.untyped_storage().resizable():
            p.data = p.data.clone()
            copied += 1
    return copied


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
