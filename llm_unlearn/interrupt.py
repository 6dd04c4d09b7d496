"""Ctrl-C during training: save a checkpoint, then stop (not: lose every step done so far).

`SaveOnInterrupt` is a `TrainerCallback`. The first SIGINT only sets a flag; at the end of the
running optimizer step the Trainer saves ``checkpoint-N`` (model, optimizer, scheduler, RNG
states: what ``resume_from_checkpoint`` needs) and stops. `finish` then raises
`TrainingInterrupted`, which the CLI prints with the ``--resume`` command and exits 130. A second
Ctrl-C aborts at once (Python's default `KeyboardInterrupt`).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from transformers import TrainerCallback

from llm_unlearn.errors import TrainingInterrupted

_announce = False


def announce_interrupts(on: bool = True) -> None:
    """Print one line when training starts saying that Ctrl-C saves a checkpoint (the
    ``unlearn`` and ``finetune`` commands turn this on; the demo and library calls stay quiet)."""
    global _announce
    _announce = on


class SaveOnInterrupt(TrainerCallback):
    def __init__(self, announce: bool | None = None):
        self.interrupted = False
        self.announce = _announce if announce is None else announce
        self._previous = None

    def _handler(self, signum, frame):
        self.interrupted = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        if self.announce and state.is_world_process_zero:
            print(f"training: {state.max_steps} steps (Ctrl-C saves a checkpoint and stops)", file=sys.stderr,
                  flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _restore(self):
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def finish(self, trainer) -> None:
        """After `trainer.train()` returned: raise `TrainingInterrupted` if it stopped on Ctrl-C."""
        self._restore()
        state = trainer.state
        if not self.interrupted or state.global_step >= state.max_steps:
            return
        ckpt = Path(trainer.args.output_dir) / f"checkpoint-{state.global_step}"
        raise TrainingInterrupted(f"interrupted at step {state.global_step}/{state.max_steps}; checkpoint saved in {ckpt}",
                                  checkpoint=str(ckpt))


def last_checkpoint(*dirs: str | Path) -> str | None:
    """The highest-numbered ``checkpoint-N`` (with its ``trainer_state.json``) in the first of
    `dirs` that has one."""
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        found = [c for c in d.iterdir() if c.is_dir() and c.name.startswith("checkpoint-")
                 and c.name[11:].isdigit() and (c / "trainer_state.json").is_file()]
        if found:
            return str(max(found, key=lambda c: int(c.name[11:])))
    return None
