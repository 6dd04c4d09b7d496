"""Output directories and files of every command: nothing lost, nothing left half-written.

- `check_output` refuses, before any work, an output that **is** or **contains** an input of the
  same command (``eval --model RUN --output RUN --overwrite`` would delete the model it is about
  to read), or that lies inside an input and already holds that input's files. Without
  ``--overwrite`` an existing non-empty output is refused as before.
- `staged_dir` / `staged_file` write into a hidden temporary sibling (``.NAME.partial``) and move
  it into place only when the work succeeded, so a crash (or kill -9) leaves the previous output
  untouched. A failed run's sibling is removed, unless it holds a training checkpoint
  (``checkpoint-N``), which ``--resume`` picks up.

Pure Python (no torch): the CLI checks outputs before importing the heavy stack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_unlearn.errors import UnlearnError

STAGING_SUFFIX = ".partial"
# files whose presence marks a directory as an artefact a command reads (a model, an adapter,
# data, a ledger, a run): an output inside an input may not replace a directory holding them
_ARTEFACT_NAMES = ("config.json", "adapter_config.json", "run.json", "ledger.sqlite", "meta.json")
_ARTEFACT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".jsonl")
# text files in which a finished output's own path is rewritten from the staging name
_TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".html", ".txt", ".csv")
_MAX_REWRITE_BYTES = 32 * 2**20


def staging_path(path: str | Path) -> Path:
    """The temporary sibling an output is written to: ``DIR/.NAME.partial``."""
    p = Path(path)
    if p.name in ("", ".", ".."):  # "." or "runs/..": name the directory itself
        p = Path(os.path.abspath(p))
    return p.parent / f".{p.name}{STAGING_SUFFIX}"


def _real(p: str | Path) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def _artefacts(path: Path) -> list[str]:
    if path.is_file():
        return [path.name]
    found = []
    for sub in path.rglob("*"):
        if sub.is_file() and (sub.name in _ARTEFACT_NAMES or sub.suffix in _ARTEFACT_SUFFIXES):
            found.append(str(sub.relative_to(path)))
            if len(found) >= 3:
                break
    return found


def check_output(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = (),
                 flag: str = "--output") -> Path:
    """Refuse `path` as an output (one-line `UnlearnError`) when it is, contains, or lies inside
    and would replace part of an existing local input; or when it exists, is non-empty and
    `overwrite` is off. `inputs` may hold None and non-paths (Hub ids, aliases): only existing
    local paths count. Returns `path`."""
    out = Path(path)
    real_out = _real(out)
    for given in inputs:
        if given is None or str(given) == "" or not Path(str(given)).expanduser().exists():
            continue
        inp = _real(str(given))
        if real_out == inp:
            raise UnlearnError(f"{flag} {out} is also an input of this command ({given}); choose another output")
        if _inside(inp, real_out):
            raise UnlearnError(f"{flag} {out} contains the input {given}; choose an output outside it")
        if _inside(real_out, inp) and out.exists():
            held = _artefacts(out)
            if held:
                raise UnlearnError(f"{flag} {out} lies inside the input {given} and holds its files "
                                   f"({', '.join(held)}); choose another output")
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UnlearnError(f"output {out} already exists; pass --overwrite to replace it")
    return out


def has_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a Trainer checkpoint (``checkpoint-N``, directly or one level down)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any(c.is_dir() for pattern in ("checkpoint-*", "*/checkpoint-*") for c in p.glob(pattern))


class StagedDir:
    """A directory being written (`path`, the staging sibling) that becomes `final` on `commit`."""

    def __init__(self, final: Path, path: Path):
        self.final, self.path = final, path
        self.committed = False

    def commit(self) -> Path:
        """Move the staged directory into place, replacing any previous output (renamed aside
        first, removed after), and rewrite the staging name in its text files."""
        final, staged = self.final, self.path
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if final.exists() or final.is_symlink():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(final, old)
        os.replace(staged, final)
        if old is not None:
            _remove(old)
        _relocate(final, staged.name, final.name)
        self.committed = True
        return final


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _relocate(root: Path, old_name: str, new_name: str) -> None:
    """Paths the run recorded while it was staged (``runs/.npo.partial/…``) name the final place."""
    needle, repl = f"/{old_name}", f"/{new_name}"
    for f in root.rglob("*"):
        if f.suffix not in _TEXT_SUFFIXES or not f.is_file() or f.stat().st_size > _MAX_REWRITE_BYTES:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = text.replace(needle, repl).replace(f'"{old_name}', f'"{new_name}')
        if new != text:
            f.write_text(new, encoding="utf-8")


@contextlib.contextmanager
def staged_dir(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = (),
               resume: bool = False, flag: str = "--output") -> Iterator[StagedDir]:
    """Check `path` (`check_output`), yield a `StagedDir` whose ``.path`` the caller writes into,
    and move it into place when the block ends without an exception. On an exception the
    previous output is untouched and the staging directory is removed, unless it holds a training
    checkpoint (kept for ``--resume``). `resume`: reuse an existing staging directory."""
    final = check_output(path, overwrite, inputs, flag=flag)
    if final.name in ("", ".", ".."):
        final = Path(os.path.abspath(final))
    stage = StagedDir(final, staging_path(final))
    if stage.path.exists() and not (resume and stage.path.is_dir()):
        _remove(stage.path)
    stage.path.mkdir(parents=True, exist_ok=True)
    try:
        yield stage
    except BaseException:
        if not has_checkpoint(stage.path):
            _remove(stage.path)
        raise
    if not stage.committed:
        stage.commit()


@contextlib.contextmanager
def staged_file(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = (),
                flag: str = "--output") -> Iterator[Path]:
    """Like `staged_dir` for one file: yields the temporary path to write; `os.replace` at the end."""
    final = check_output(path, overwrite, inputs, flag=flag)
    if final.is_dir():
        raise UnlearnError(f"{flag} {final} is a directory, a file was expected")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.stem}{STAGING_SUFFIX}{final.suffix}"  # keeps the suffix writers check
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise UnlearnError(f"nothing was written to {final}")
    os.replace(tmp, final)


def prepare_output_dir(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Unstaged: `check_output`, then empty and create `path` now. For writers that cannot work in a
    staging directory; prefer `staged_dir`."""
    out = check_output(path, overwrite, inputs)
    if out.exists():
        _remove(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_output_file(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Unstaged: `check_output` for a file, parent created. Prefer `staged_file`."""
    out = check_output(path, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


__all__ = ["StagedDir", "check_output", "has_checkpoint", "prepare_output_dir", "prepare_output_file", "staged_dir",
           "staged_file", "staging_path"]
