"""The Trainer's console: one bar per training stage with the step and loss in its postfix, and
every log dict in ``<output>/trainer_log.jsonl`` instead of on the console (see
`llm_unlearn.console`). TensorBoard / W&B still get the logs through ``report_to``.

`attach_console(trainer, stage, output_dir)` replaces transformers' `ProgressCallback` (a bar
plus one printed dict per logging step) in the default, quiet mode; in verbose mode it keeps it
and only adds the JSONL file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llm_unlearn.console import TrainerLogFile, format_loss, is_verbose, stage_bar


class ConsoleCallback(TrainerCallback):
    """Quiet console for one Trainer: `bar` (if set before training, e.g. a stage bar that already
    showed the preparation phases) is reused, else one is drawn; ``show_bar=False`` draws none
    (verbose mode, where `ProgressCallback` draws its own)."""

    def __init__(self, stage: str, output_dir: str | Path | None, show_bar: bool = True):
        self.stage = stage
        self.log_file = TrainerLogFile(output_dir, stage)
        self.show_bar = show_bar
        self.bar = None
        self._owns_bar = False
        self._step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._step = state.global_step
        if not (self.show_bar and state.is_world_process_zero):
            return
        if self.bar is None:
            self.bar = stage_bar(self.stage, total=state.max_steps)
            self._owns_bar = True
        else:
            self.bar.reset(total=state.max_steps)
        if state.global_step:
            self.bar.update(state.global_step)  # resumed from a checkpoint
        self.bar.set_postfix_str("training", refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self._step)
        self._step = state.global_step

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.log_file.write({"step": state.global_step, **logs})
        if self.bar is not None:
            if "loss" in logs:  # the end-of-training summary (train_loss, a mean) goes to the file only
                self.bar.set_postfix({"step": f"{state.global_step}/{state.max_steps}",
                                      "loss": format_loss(logs["loss"])}, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None and self._owns_bar:
            self.bar.close()
            self.bar = None


def attach_console(trainer, stage: str, output_dir: str | Path | None) -> ConsoleCallback:
    """Give `trainer` the llm-unlearn console (see the module docstring); returns the callback."""
    quiet = not is_verbose()
    if quiet:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    callback = ConsoleCallback(stage, output_dir, show_bar=quiet and not trainer.args.disable_tqdm)
    trainer.add_callback(callback)
    return callback


def console_callback(trainer) -> ConsoleCallback | None:
    """The `ConsoleCallback` attached to `trainer`, if any."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ConsoleCallback)), None)
