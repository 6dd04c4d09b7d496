"""Selection density, save/load round trips, validation and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks import WeightMask, compute_mask, load_mask, select_mask


def _scores(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # odd sizes: not multiples of 8 (bit packing) nor of typical ratios
    return {"a.weight": torch.rand(7, 13, generator=gen), "b.weight": torch.rand(5, 3, generator=gen),
            "c.weight": torch.rand(11, 9, generator=gen)}


@pytest.mark.parametrize("ratio", [0.05, 0.33, 0.8, 1.0])
def test_global_density_is_exact_and_keeps_the_top_scores(ratio):
    scores = _scores()
    mask = select_mask(scores, ratio, "global")
    total = sum(s.numel() for s in scores.values())
    assert mask.allowed() == math.floor(ratio * total + 0.5)
    kept = torch.cat([scores[n][mask[n]] for n in scores])
    dropped = torch.cat([scores[n][~mask[n]] for n in scores])
    if dropped.numel():
        assert float(kept.min()) > float(dropped.max())


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_per_layer_density_within_one_element(ratio):
    scores = _scores(1)
    mask = select_mask(scores, ratio, "per_layer")
    for n, s in scores.items():
        assert abs(int(mask[n].sum()) - ratio * s.numel()) <= 1
        assert float(s[mask[n]].min()) > float(s[~mask[n]].max())


def test_ties_still_give_exact_counts():
    scores = {"a.weight": torch.zeros(4, 5), "b.weight": torch.ones(3, 3)}
    mask = select_mask(scores, 0.5, "global")  # 29 weights -> 15: 9 ones + 6 of the tied zeros
    assert mask.allowed() == 15 and bool(mask["b.weight"].all()) and int(mask["a.weight"].sum()) == 6


def test_row_granularity_selects_whole_rows():
    scores = _scores(2)
    for scope in ("global", "per_layer"):
        mask = select_mask(scores, 0.4, scope, "row")
        assert mask.granularity == "row"
        for n, s in scores.items():
            assert tuple(mask[n].shape) == (s.shape[0], 1)
            if scope == "per_layer":
                assert abs(int(mask[n].sum()) - 0.4 * s.shape[0]) <= 1
        if scope == "global":
            widest = max(s.shape[1] for s in scores.values())
            assert abs(mask.allowed() - 0.4 * mask.numel()) <= widest
    # rows go by mean score: a row of high scores beats a row of low ones
    s = {"w.weight": torch.tensor([[0.1, 0.1], [0.9, 0.8], [0.5, 0.5]])}
    assert select_mask(s, 0.34, "per_layer", "row")["w.weight"].reshape(-1).tolist() == [False, True, False]


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_save_load_round_trip_is_bit_exact(tmp_path, granularity):
    mask = select_mask(_scores(3), 0.37, "global", granularity, meta={"method": "wagle", "gamma": 1.0})
    path = mask.save(tmp_path / "m.safetensors")
    back = load_mask(path)
    assert list(back) == list(mask) and back.param_shapes == mask.param_shapes
    for n in mask:
        assert back[n].dtype == torch.bool and torch.equal(back[n], mask[n])
    assert back.meta == mask.meta and back.density() == mask.density()
    # bit-packed: about one byte per 8 weights plus the header
    assert path.stat().st_size < 1000 + mask.numel() // 8 + 8 * len(mask)
    assert "total" in back.summary() and "a.weight" in back.summary()


def test_ratio_must_be_in_zero_one(tiny_model):
    for bad in (0, 0.0, -0.2, 1.5, float("nan"), "x"):
        with pytest.raises(UnlearnError, match="ratio"):
            compute_mask(tiny_model, method="magnitude", ratio=bad)
        with pytest.raises(UnlearnError, match="ratio"):
            select_mask(_scores(), bad)
    full = compute_mask(tiny_model, method="magnitude", ratio=1.0)
    assert full.density() == 1.0


def test_validate_names_first_mismatching_parameter(tiny_model):
    mask = compute_mask(tiny_model, method="random", ratio=0.5)
    mask.validate(tiny_model)
    names = list(mask)
    bad = {n: mask[n] for n in names}
    bad[names[3]] = torch.ones(2, 2, dtype=torch.bool)
    bad[names[5]] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(UnlearnError, match=rf"'{names[3]}' has shape \(2, 2\) but the model's is"):
        WeightMask(bad).validate(tiny_model)
    missing = WeightMask({"model.layers.99.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(UnlearnError, match="'model.layers.99.mlp.up_proj.weight' is not in the model"):
        missing.validate(tiny_model)


def test_bad_files_and_tensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UnlearnError, match="not an llm-unlearn mask file"):
        load_mask(tmp_path / "other.safetensors")
    with pytest.raises(UnlearnError, match="not found"):
        load_mask(tmp_path / "absent.safetensors")
    with pytest.raises(UnlearnError, match="bool tensor"):
        WeightMask({"w": torch.ones(2, 2)})
    with pytest.raises(UnlearnError, match="does not broadcast"):
        WeightMask({"w": torch.ones(2, 3, dtype=torch.bool)}, {"w": (2, 2)})
