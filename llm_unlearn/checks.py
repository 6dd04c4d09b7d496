"""Checks that run before any work: model specs (local first), safetensors integrity, values.

Pure Python (no torch, no transformers), so the CLI can refuse bad input in milliseconds, before
a model loads. Every failure is a one-line `UnlearnError` naming the file or flag.

Local first: a ``--model`` that looks like a path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``,
``runs/x`` when ``runs/`` exists locally, ``x.gguf``) or that is not a valid Hub id is resolved
locally only; a missing one is "no such model directory" at once, never a Hub lookup that
retries and then blames the network.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import struct
from pathlib import Path

from llm_unlearn.errors import UnlearnError

# Hub repository ids: [namespace/]name, letters, digits, '-', '_', '.'; no '--' or '..', neither
# part starts or ends with '-' or '.', name at most 96 characters
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")

MODEL_FILES = ("config.json", "adapter_config.json")


def is_valid_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and "--" not in spec and ".." not in spec


def looks_like_path(spec: str) -> bool:
    """A spec a user meant as a local path (see the module docstring)."""
    s = str(spec)
    if s in (".", "..") or s.startswith(("./", "../", "/", "~", ".\\", "..\\")) or "\\" in s:
        return True
    if s.endswith((".gguf", ".safetensors")) or s.count("/") > 1:
        return True
    parent = Path(s).parent
    return "/" in s and str(parent) not in ("", ".") and parent.expanduser().is_dir()


def _did_you_mean(path: Path) -> str:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {parent / close[0]}?)" if close else ""


def check_local_model(spec: str, flag: str = "--model") -> str | None:
    """For a spec that is, or is meant as, a local path: check it exists and holds a model.
    Returns the path (`~` expanded), or None for a Hub id (left to the Hub)."""
    s = str(spec)
    p = Path(s).expanduser()
    if not p.exists():
        if looks_like_path(s) or not is_valid_hub_id(s):
            raise UnlearnError(f"{flag} {s}: no such model directory{_did_you_mean(p)}")
        return None
    if p.is_dir():
        if not any((p / f).is_file() for f in MODEL_FILES):
            raise UnlearnError(f"{flag} {s}: not a model directory (no config.json or adapter_config.json)")
        for f in sorted(p.glob("*.safetensors")):
            check_safetensors(f)
    elif p.suffix == ".safetensors":
        check_safetensors(p)
    return str(p)


def check_safetensors(path: str | Path) -> None:
    """A safetensors file must hold the bytes its header promises (catches truncated copies and
    interrupted downloads before `from_pretrained` dies inside Rust)."""
    p = Path(path)
    size = p.stat().st_size
    where = f"{p}: truncated or corrupt safetensors file"
    if size < 8:
        raise UnlearnError(f"{where} ({size} bytes); save or download it again")
    with p.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8 or n > 100 * 2**20:
            raise UnlearnError(f"{where} (header of {n} bytes, file of {size}); save or download it again")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UnlearnError(f"{where} (unreadable header); save or download it again") from None
    end = max((v["data_offsets"][1] for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise UnlearnError(f"{where} (holds {size} bytes, its header needs {8 + n + end}); save or download it again")


def check_fraction(flag: str, value: float | None, allow_zero: bool = False) -> None:
    """`value` in (0, 1] (or [0, 1] with `allow_zero`); None passes."""
    if value is None:
        return
    low_ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and value <= 1):
        raise UnlearnError(f"{flag} must be in {'[' if allow_zero else '('}0, 1], got {value}")


def check_positive(flag: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UnlearnError(f"{flag} must be > 0, got {value}")


def check_file(flag: str, path: str | Path | None) -> None:
    """An input file or directory given on the command line must exist."""
    if path is not None and not Path(path).expanduser().exists():
        raise UnlearnError(f"{flag} {path}: no such file or directory")


__all__ = ["check_file", "check_fraction", "check_local_model", "check_positive",
           "check_safetensors", "is_valid_hub_id", "looks_like_path"]
