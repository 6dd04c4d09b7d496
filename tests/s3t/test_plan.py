import random

import pytest

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.plan import S3TPlan, bipartite_sequences, cyclic_sequences, layer_blocks, make_plan


@pytest.mark.parametrize("L,B", [(4, 4), (4, 2), (5, 3), (3, 1)])
def test_cyclic_rotations_have_distinct_first_slices(L, B):
    seqs = cyclic_sequences(L, B, random.Random(0))
    assert len(seqs) == B
    assert all(sorted(s) == list(range(L)) for s in seqs)
    assert len({s[0] for s in seqs}) == B
    base = seqs[0]
    for s in seqs[1:]:  # every sequence is a rotation of the first
        k = s.index(base[0])
        assert s == base[-k:] + base[:-k] if k else s == base


@pytest.mark.parametrize("L,B", [(4, 4), (6, 3), (3, 2)])
def test_bipartite_sequences_form_latin_rectangle(L, B):
    seqs = bipartite_sequences(L, B, random.Random(1))
    assert all(sorted(s) == list(range(L)) for s in seqs)
    for pos in range(L):  # no slice repeats at a position: distinct first slices in particular
        assert len({s[pos] for s in seqs}) == B


def test_plan_is_seeded_disjoint_and_balanced(tmp_path):
    ids = [f"full:{i}" for i in range(23)]
    plan = make_plan(ids, num_shards=2, num_slices=3, num_sequences=2, num_layers=4, method="bipartite", seed=7)
    assert make_plan(ids, 2, 3, 2, 4, "bipartite", 7) == plan
    assert make_plan(ids, 2, 3, 2, 4, "bipartite", 8) != plan
    flat = [sid for shard in plan.shards for sl in shard for sid in sl]
    assert sorted(flat) == sorted(ids) and len(set(flat)) == len(ids)
    sizes = [len(sl) for shard in plan.shards for sl in shard]
    assert max(sizes) - min(sizes) <= 1
    plan.save(tmp_path / "plan.json")
    assert S3TPlan.load(tmp_path / "plan.json") == plan
    assert plan.stage_slices(1, 0, 2) == plan.sequences[1][0][:2]


def test_layer_blocks_top_first_and_contiguous():
    assert layer_blocks(4, 2) == [[2, 3], [0, 1]]
    assert layer_blocks(5, 3) == [[3, 4], [1, 2], [0]]
    with pytest.raises(UnlearnError, match="--slices 5"):
        layer_blocks(4, 5)


def test_plan_rejects_bad_sizes():
    ids = [str(i) for i in range(10)]
    with pytest.raises(UnlearnError, match="B <= L"):
        make_plan(ids, 1, 2, 3, 4)
    with pytest.raises(UnlearnError, match="cannot fill"):
        make_plan(ids[:3], 2, 2, 1, 4)
    with pytest.raises(UnlearnError, match="sequence method"):
        make_plan(ids, 1, 2, 1, 4, method="greedy")
