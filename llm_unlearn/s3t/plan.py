"""The S3T plan (Chowdhury et al., 2024, "Towards Scalable Exact Machine Unlearning Using
Parameter-Efficient Fine-Tuning", Sec. 3): m disjoint shards, each cut into L slices, and per
shard B *sequences* (orders of its L slices). Stage i of a sequence π trains the LoRA adapters of
layer block i on the cumulative slices π₁…π_i, so deleting a sample in slice π_j invalidates
stages j…L of that sequence and leaves the prefix π₁…π_{j-1} exact.

Sequence selection (Sec. 3.3 of the paper; our own implementation of both ideas):

* ``cyclic`` – draw one random permutation σ of the L slices and use B of its L cyclic
  rotations, evenly spaced. Every slice is first in at most one sequence, so the B sequences
  have distinct first slices, and across all L rotations each slice sits once at each position.
* ``bipartite`` – build the sequences one at a time; each new sequence is a minimum-cost perfect
  matching of slices to positions in the complete bipartite graph slices × positions, where the
  cost of (slice s, position p) counts how often s already sat at p (weighted heavily, so with
  B ≤ L the sequences form a Latin rectangle: distinct first slices, distinct slices at every
  position) plus how often s already sat *before* p (so no slice is early in every sequence),
  plus a small seeded random tie-break. Solved with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``).

With distinct first slices a shard keeps serving until every sequence has lost its first slice,
so the worst-case number of deletions a shard absorbs grows from 1 (SISA, B = 1) to B.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from llm_unlearn.errors import UnlearnError

SEQUENCE_METHODS = ("cyclic", "bipartite")


@dataclass
class S3TPlan:
    """Which sample is in which shard and slice, and the slice orders trained per shard.

    `shards[s][l]` lists the sample ids of slice l of shard s; `sequences[s][b]` is the b-th slice
    order of shard s (a permutation of range(L)); `blocks[i]` lists the decoder-layer indices whose
    LoRA adapters stage i + 1 trains (block 0 holds the top layers, as in the paper's Fig. 2).
    """

    num_shards: int
    num_slices: int
    num_sequences: int
    method: str
    seed: int
    shards: list[list[list[str]]] = field(default_factory=list)
    sequences: list[list[list[int]]] = field(default_factory=list)
    blocks: list[list[int]] = field(default_factory=list)

    def slice_of(self) -> dict[str, tuple[int, int]]:
        """sample id -> (shard, slice)."""
        return {sid: (s, k) for s, shard in enumerate(self.shards) for k, sl in enumerate(shard) for sid in sl}

    def stage_slices(self, shard: int, sequence: int, stage: int) -> list[int]:
        """Slices stage `stage` (1-based) of a sequence trains on: π₁…π_stage."""
        return list(self.sequences[shard][sequence][:stage])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> S3TPlan:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise UnlearnError(f"{path}: not a valid S3T plan ({exc})") from None


def layer_blocks(num_layers: int, num_slices: int) -> list[list[int]]:
    """Split decoder layers 0..num_layers-1 into `num_slices` contiguous blocks, top block first."""
    if num_slices > num_layers:
        raise UnlearnError(
            f"--slices {num_slices} exceeds the model's {num_layers} decoder layers (one layer block per slice)"
        )
    base, extra = divmod(num_layers, num_slices)
    sizes = [base + (1 if i < extra else 0) for i in range(num_slices)]
    blocks, top = [], num_layers
    for size in sizes:
        blocks.append(list(range(top - size, top)))
        top -= size
    return blocks


def cyclic_sequences(num_slices: int, num_sequences: int, rng: random.Random) -> list[list[int]]:
    """B evenly spaced cyclic rotations of one random permutation (distinct first slices)."""
    sigma = list(range(num_slices))
    rng.shuffle(sigma)
    shifts = sorted({(b * num_slices) // num_sequences for b in range(num_sequences)})
    return [sigma[k:] + sigma[:k] for k in shifts]


def bipartite_sequences(num_slices: int, num_sequences: int, rng: random.Random) -> list[list[int]]:
    """B sequences, each a min-cost matching of slices to positions (see module docstring)."""
    L = num_slices
    at = np.zeros((L, L))  # at[s, p]: times slice s sat at position p
    before = np.zeros((L, L))  # before[s, p]: times slice s sat at a position < p
    out: list[list[int]] = []
    for _ in range(num_sequences):
        noise = np.array([[rng.random() for _ in range(L)] for _ in range(L)])
        cost = 1000.0 * at + before + 0.01 * noise
        rows, cols = linear_sum_assignment(cost)
        seq = [0] * L
        for s, p in zip(rows, cols):
            seq[int(p)] = int(s)
        for p, s in enumerate(seq):
            at[s, p] += 1
            before[s, p + 1:] += 1
        out.append(seq)
    return out


def make_plan(sample_ids: list[str], num_shards: int, num_slices: int, num_sequences: int,
              num_layers: int, method: str = "cyclic", seed: int = 0) -> S3TPlan:
    """Seeded plan: shuffle the ids, cut them into m shards × L slices, pick B orders per shard."""
    if method not in SEQUENCE_METHODS:
        raise UnlearnError(f"sequence method '{method}' unknown (expected one of {', '.join(SEQUENCE_METHODS)})")
    if num_shards < 1 or num_slices < 1 or num_sequences < 1:
        raise UnlearnError("--shards, --slices and --sequences must all be at least 1")
    if num_sequences > num_slices:
        raise UnlearnError(
            f"--sequences {num_sequences} > --slices {num_slices}: sequences need distinct first slices (B <= L)"
        )
    if len(set(sample_ids)) != len(sample_ids):
        raise UnlearnError("sample ids are not unique")
    if len(sample_ids) < num_shards * num_slices:
        raise UnlearnError(
            f"{len(sample_ids)} samples cannot fill {num_shards} shards x {num_slices} slices (need one per slice)"
        )
    blocks = layer_blocks(num_layers, num_slices)
    rng = random.Random(seed)
    ids = list(sample_ids)
    rng.shuffle(ids)
    shards = [_split(part, num_slices) for part in _split(ids, num_shards)]
    choose = cyclic_sequences if method == "cyclic" else bipartite_sequences
    sequences = [choose(num_slices, num_sequences, rng) for _ in range(num_shards)]
    return S3TPlan(num_shards=num_shards, num_slices=num_slices, num_sequences=num_sequences, method=method,
                   seed=seed, shards=shards, sequences=sequences, blocks=blocks)


def _split(items: list, parts: int) -> list[list]:
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(items[start:start + size])
        start += size
    return out
