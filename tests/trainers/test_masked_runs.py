"""Weight masks through `run_unlearning` / `llm-unlearn unlearn`: the mask options reach
`compute_mask` and run.json, and a masked LoRA adapter reloads to exactly the model that was trained
(element masks: the mask is saved beside the adapter and re-applied by `load_model`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm_unlearn.cli import main
from llm_unlearn.unlearn import run_unlearning

RATIO = 0.3


def _forget_batch(unlearn_data, n: int = 4) -> dict[str, torch.Tensor]:
    from llm_unlearn.data.qa import QACollator

    batch = QACollator(unlearn_data.tokenizer)([unlearn_data.forget[i] for i in range(n)])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch, use_cache=False).logits


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_masked_lora_adapter_reloads_to_the_trained_model(granularity, target_dir, synthetic_dir, tmp_path,
                                                          unlearn_data):
    from llm_unlearn.masks import compute_mask, load_mask
    from llm_unlearn.models import ADAPTER_MASK_FILE, load_model

    model = load_model(str(target_dir))
    out, run = run_unlearning(
        model, synthetic_dir, tmp_path / "out", method="npo", tokenizer=unlearn_data.tokenizer, lora=True,
        mask_method="magnitude", mask_ratio=RATIO, mask_granularity=granularity, nll_max_retain=8,
        overrides={"max_steps": 3, "learning_rate": 1e-2, "alpha": 0.0, "disable_tqdm": True})
    # attach_lora wrapped `model` in place: it now runs the trained, masked adapter
    assert any(".lora_B." in n for n, _ in model.named_parameters())
    batch = _forget_batch(unlearn_data)
    trained = _logits(model, batch)
    target = load_model(str(target_dir))
    assert (trained - _logits(target, batch)).abs().max() > 1e-2  # unlearning changed the model

    # magnitude scores need no data: the same mask, recomputed on the target
    expected = compute_mask(target, method="magnitude", ratio=RATIO, granularity=granularity, progress=False)
    assert run["mask"]["granularity"] == granularity and run["mask"]["density"] == pytest.approx(RATIO, abs=0.02)
    if granularity == "element":
        assert run["mask"]["saved_as"] == ADAPTER_MASK_FILE
        saved = load_mask(out / ADAPTER_MASK_FILE)
        assert all(torch.equal(saved[k], expected[k]) for k in expected)
    else:  # a row-masked adapter is self-contained
        assert not (out / ADAPTER_MASK_FILE).exists() and "saved_as" not in run["mask"]

    reloaded = load_model(str(out))
    assert torch.allclose(_logits(reloaded, batch), trained, atol=1e-5, rtol=0)
    merged = reloaded.merge_and_unload()
    assert torch.allclose(_logits(merged, batch), trained, atol=1e-4, rtol=0)
    merged_params, target_params = dict(merged.named_parameters()), dict(target.named_parameters())
    changed_inside = 0
    for name in expected:
        delta = merged_params[name].detach() - target_params[name].detach()
        allowed = expected.expanded(name)
        assert bool((delta[~allowed] == 0).all()), f"{name}: merged update outside the mask"
        changed_inside += int((delta[allowed] != 0).sum())
    assert changed_inside > 0.5 * expected.allowed()


def test_cli_mask_granularity_scope_gamma(target_dir, synthetic_dir, tmp_path, capsys):
    from llm_unlearn.masks import find_targets
    from llm_unlearn.models import load_model

    out = tmp_path / "gd"
    rc = main(["unlearn", "--model", str(target_dir), "--data", str(synthetic_dir), "--method", "grad_diff",
               "--output", str(out), "--max-steps", "2", "--lr", "1e-3", "--batch-size", "8",
               "--mask-method", "wagle", "--mask-ratio", "0.5", "--mask-granularity", "row",
               "--mask-scope", "per_layer", "--mask-gamma", "0.01", "--set", "disable_tqdm=true"])
    assert rc == 0, capsys.readouterr().err
    mask = json.loads((out / "run.json").read_text())["mask"]
    assert {k: mask[k] for k in ("method", "ratio", "scope", "gamma", "granularity")} == {
        "method": "wagle", "ratio": 0.5, "scope": "per_layer", "gamma": 0.01, "granularity": "row"}
    # full weights: within every covered matrix, only whole output rows changed, at most half of them
    # (per-layer scope; a global top-k gives some matrices more than half their rows)
    target, trained = load_model(str(target_dir)), load_model(str(out))
    covered = {t.name: t.out_axis for t in find_targets(target)}
    before, after = dict(target.named_parameters()), dict(trained.named_parameters())
    for name, p in before.items():
        delta = (after[name] - p).detach()
        if name not in covered:
            assert bool((delta == 0).all()), f"{name} is not covered by the mask but changed"
            continue
        rows_changed = (delta != 0).any(dim=1 - covered[name])
        full_rows = (delta != 0).all(dim=1 - covered[name])
        assert 0 < int(rows_changed.sum()) <= math.floor(0.5 * rows_changed.numel() + 0.5), name
        assert torch.equal(rows_changed, full_rows), f"{name}: a row changed only in part"


@pytest.mark.parametrize(("flags", "message"), [
    (["--mask-granularity", "row"], "need --mask-method"),
    (["--mask", "m.safetensors", "--mask-scope", "per_layer"], "a saved --mask already has them"),
    (["--mask", "m.safetensors", "--mask-method", "wagle"], "not both"),
    (["--mask-method", "wagle", "--mask-ratio", "0.5", "--mask-gamma", "0"], "gamma must be > 0"),
])
def test_cli_refuses_mask_options_that_cannot_apply(flags, message, synthetic_dir, tmp_path, capsys):
    # valid data: the split checks (the cheapest, first) pass, and the mask options fail before any model loads
    rc = main(["unlearn", "--model", str(tmp_path / "absent"), "--data", str(synthetic_dir), "--method", "npo",
               "--output", str(tmp_path / "out"), *flags])
    assert rc == 2
    assert message in capsys.readouterr().err
