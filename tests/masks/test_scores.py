"""Scores against hand computations on a 2-layer linear model, and WAGLE on disjoint parameters."""

from __future__ import annotations

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks import compute_mask, compute_scores, find_targets
from tests.masks.conftest import TwoBranch, TwoLayerLinear, toy_batches


def hand_grads(model: TwoLayerLinear, batches) -> dict[str, torch.Tensor]:
    """Mean over batches of the gradient of the mean token CE, by the chain rule written out."""
    w1, w2 = model.fc1.weight.detach().double(), model.fc2.weight.detach().double()
    g1, g2 = torch.zeros_like(w1), torch.zeros_like(w2)
    for b in batches:
        x = torch.nn.functional.one_hot(b["input_ids"], model.vocab).double().reshape(-1, model.vocab)
        y = b["labels"].reshape(-1)
        valid = y != -100
        h = x @ w1.t()
        z = h @ w2.t()
        dz = torch.softmax(z, -1)
        dz[valid, y[valid]] -= 1.0
        dz[~valid] = 0.0
        dz /= valid.sum()
        g2 += dz.t() @ h
        g1 += (dz @ w2).t() @ x
    n = len(batches)
    return {"fc1.weight": g1 / n, "fc2.weight": g2 / n}


def hand_input_norms(model: TwoLayerLinear, batches) -> dict[str, torch.Tensor]:
    w1 = model.fc1.weight.detach().double()
    s1 = torch.zeros(model.vocab, dtype=torch.float64)
    s2 = torch.zeros(w1.shape[0], dtype=torch.float64)
    for b in batches:
        keep = b["attention_mask"].reshape(-1).bool()
        x = torch.nn.functional.one_hot(b["input_ids"], model.vocab).double().reshape(-1, model.vocab)[keep]
        s1 += (x**2).sum(0)
        s2 += ((x @ w1.t()) ** 2).sum(0)
    return {"fc1.weight": s1.sqrt(), "fc2.weight": s2.sqrt()}


@pytest.fixture()
def toy():
    model = TwoLayerLinear(vocab=12, hidden=6, seed=3)
    return model, toy_batches(0, 12, seed=1), toy_batches(0, 12, seed=2)


def _check(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.05, 1.0, float("inf")])
def test_wagle_matches_hand_computation(toy, gamma):
    model, forget, retain = toy
    g_f, g_r = hand_grads(model, forget), hand_grads(model, retain)
    theta = {"fc1.weight": model.fc1.weight.detach().double(), "fc2.weight": model.fc2.weight.detach().double()}
    want = {n: ((theta[n] - g_r[n] / gamma) * g_f[n]).abs() for n in theta}
    _check(compute_scores(model, forget, retain, method="wagle", gamma=gamma, progress=False), want)
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def test_wagle_retain_term_changes_the_ranking(toy):
    model, forget, retain = toy
    far = compute_scores(model, forget, retain, method="wagle", gamma=1e6, progress=False)
    near = compute_scores(model, forget, retain, method="wagle", gamma=1e-3, progress=False)
    g_f, g_r = hand_grads(model, forget), hand_grads(model, retain)
    # small gamma: ranking of |g_r * g_f|; large gamma: ranking of |theta * g_f|
    order = lambda t: torch.argsort(t.reshape(-1), descending=True)[:10]  # noqa: E731
    assert torch.equal(order(near["fc2.weight"]), order((g_r["fc2.weight"] * g_f["fc2.weight"]).abs()))
    assert torch.equal(order(far["fc2.weight"]), order((model.fc2.weight.double() * g_f["fc2.weight"]).abs()))
    assert not torch.equal(order(near["fc2.weight"]), order(far["fc2.weight"]))


def test_salun_magnitude_wanda_random_match_hand_computation(toy):
    model, forget, retain = toy
    g_f = hand_grads(model, forget)
    _check(compute_scores(model, forget, method="salun", progress=False), {n: g.abs() for n, g in g_f.items()})
    weights = {"fc1.weight": model.fc1.weight.detach().double(), "fc2.weight": model.fc2.weight.detach().double()}
    _check(compute_scores(model, method="magnitude"), {n: w.abs() for n, w in weights.items()})
    norms = hand_input_norms(model, forget)
    _check(compute_scores(model, forget, method="wanda", progress=False),
           {n: weights[n].abs() * norms[n].unsqueeze(0) for n in weights})
    r1 = compute_scores(model, method="random", seed=7)
    r2 = compute_scores(model, method="random", seed=7)
    r3 = compute_scores(model, method="random", seed=8)
    assert all(torch.equal(r1[n], r2[n]) for n in r1) and not torch.equal(r1["fc1.weight"], r3["fc1.weight"])
    assert r1["fc1.weight"].shape == model.fc1.weight.shape


def test_wagle_selects_forget_side_parameters_when_gradients_are_disjoint():
    model = TwoBranch(vocab=16, hidden=8, seed=0)
    forget, retain = toy_batches(0, 8, seed=1, length=8), toy_batches(8, 16, seed=2, length=8)
    scores = compute_scores(model, forget, retain, method="wagle", gamma=0.1, progress=False)
    assert all(float(scores[n].min()) > 0 for n in scores if n.startswith("f."))
    assert all(float(scores[n].max()) == 0 for n in scores if n.startswith("r."))
    mask = compute_mask(model, forget, retain, method="wagle", ratio=0.5, gamma=0.1, progress=False)
    for name, m in mask.items():
        assert bool(m.all()) if name.startswith("f.") else not bool(m.any()), name
    # magnitude ignores the data: it does not find the forget side
    magnitude = compute_mask(model, method="magnitude", ratio=0.5)
    assert not all(bool(m.all()) for n, m in magnitude.items() if n.startswith("f."))


def test_targets_default_all_linear_except_lm_head_and_regex(tiny_model):
    names = [t.name for t in find_targets(tiny_model)]
    n_layers = tiny_model.config.num_hidden_layers
    assert len(names) == 7 * n_layers and "lm_head.weight" not in names
    assert "model.layers.0.self_attn.q_proj.weight" in names
    mlp = [t.name for t in find_targets(tiny_model, r"mlp\.(up|down)_proj$")]
    assert len(mlp) == 2 * n_layers and all("mlp" in n for n in mlp)
    with pytest.raises(UnlearnError, match="matches no linear module"):
        find_targets(tiny_model, "nothing_like_this")
    with pytest.raises(UnlearnError, match="invalid regex"):
        find_targets(tiny_model, "(")


@pytest.mark.parametrize("method", ["wagle", "salun", "wanda", "magnitude", "random"])
def test_every_method_on_tiny_llama(tiny_model, loaders, method):
    forget, retain = loaders
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    flags = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    mask = compute_mask(tiny_model, forget, retain, method=method, ratio=0.3, progress=False)
    # wanda selects per output row (round(0.3 · row length) each): within half a weight per row
    assert len(mask) == 28 and mask.density() == pytest.approx(0.3, abs=1e-6 if method != "wanda" else 0.005)
    for n, p in tiny_model.named_parameters():  # scoring changes nothing in the model
        assert torch.equal(p, before[n]) and p.requires_grad == flags[n] and p.grad is None
    assert tiny_model.training


def test_missing_loaders_and_bad_gamma(toy):
    model, forget, retain = toy
    with pytest.raises(UnlearnError, match="retain data loader"):
        compute_scores(model, forget, None, method="wagle")
    with pytest.raises(UnlearnError, match="forget data loader"):
        compute_scores(model, None, retain, method="salun")
    with pytest.raises(UnlearnError, match="gamma must be > 0"):
        compute_scores(model, forget, retain, method="wagle", gamma=0.0)
    with pytest.raises(UnlearnError, match="unknown"):
        compute_mask(model, forget, retain, method="snip")
    with pytest.raises(UnlearnError, match="no batch"):
        compute_scores(model, [], retain, method="salun", progress=False)


def test_per_row_selection_hand_computed():
    from llm_unlearn.masks.select import select_mask

    s = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.1, 0.2, 0.4, 0.3]])
    # per row, top round(0.5·4) = 2: row 0 keeps 5 and 3, row 1 keeps 0.4 and 0.3 (global would take row 0 only)
    per_row = select_mask({"w": s}, 0.5, scope="per_row")["w"]
    assert per_row.tolist() == [[True, False, True, False], [False, False, True, True]]
    glob = select_mask({"w": s}, 0.5, scope="global")["w"]
    assert glob.tolist() == [[True, True, True, True], [False, False, False, False]]
    # Conv1D layout (outputs on axis 1): rows are columns
    per_col = select_mask({"w": s.t().contiguous()}, 0.5, scope="per_row", out_axes={"w": 1})["w"]
    assert per_col.t().tolist() == per_row.tolist()


def test_wanda_selects_per_row_by_default(tiny_model, loaders):
    forget, _ = loaders
    mask = compute_mask(tiny_model, forget, method="wanda", ratio=0.25, progress=False)
    assert mask.meta["scope"] == "per_row"
    for name in mask:
        m = mask[name]
        rows = m.reshape(m.shape[0], -1).sum(1)  # nn.Linear: rows on axis 0
        assert (rows == round(0.25 * m.shape[1] + 1e-9)).all(), name


def test_scope_all_ranks_every_parameter(tiny_model, loaders):
    forget, retain = loaders
    mask = compute_mask(tiny_model, forget, retain, method="wagle", ratio=0.3, scope="all", progress=False)
    names = {n for n, p in tiny_model.named_parameters()}
    keys = set(mask)
    assert keys == names  # embeddings, norms and lm_head (tied: once) included
    assert any("norm" in k for k in keys) and any("embed" in k for k in keys)
    total = sum(p.numel() for p in tiny_model.parameters())
    kept = sum(int(mask[k].sum()) for k in keys)
    assert kept == round(0.3 * total)
    # the mask holds non-linear parameters too: a step changes only their selected entries
    import copy

    from llm_unlearn.masks import enforce_mask

    model = copy.deepcopy(tiny_model)  # the session's model stays untouched
    norm = next(k for k in keys if "norm" in k and int(mask[k].sum()) not in (0, mask[k].numel()))
    param = dict(model.named_parameters())[norm]
    before = param.detach().clone()
    enforcer = enforce_mask(model, mask)
    loss = sum(p.float().pow(2).sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    with torch.no_grad():
        param.sub_(0.1 * param.grad)
    enforcer.restore_()
    changed = (param.detach() != before)
    assert changed.any() and not changed[~mask[norm].to(changed.device)].any()
    enforcer.remove()
    with pytest.raises(UnlearnError, match="wanda"):
        compute_mask(tiny_model, forget, method="wanda", ratio=0.3, scope="all", progress=False)
