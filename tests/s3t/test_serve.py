"""S3T serving modes on a real 2-shard tiny run: scoring and generate() of every mode against a
hand computation from the two shards' own log-probabilities; a fact only shard 1 knows; a run
with nothing to serve."""

import math

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.serve import load_s3t_model
from llm_unlearn.s3t.train import AGGREGATES

MODES = list(AGGREGATES)


def _randomise_adapters(model, seed=0, scale=0.5):
    """Random LoRA-B so the shards disagree clearly (greedy decoding is then not just EOS)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _shard_lp(model, ids, mask):
    """[S, B, T, V] log-softmax of each served shard, straight from PEFT (one adapter at a time)."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = []
    for shard in sorted(model.served):
        model.peft.set_adapter(f"shard{shard}")
        logits = model.peft(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        out.append(torch.log_softmax(logits.float(), -1))
    return torch.stack(out)


def _hand(mode, lp, ids, mask, b, t):
    """Next-token log-probabilities of row b at position t, computed from the definitions."""
    S = lp.shape[0]
    if mode == "mean-logprob":
        return torch.log_softmax(sum(lp[s, b, t] for s in range(S)) / S, -1)
    if mode == "mixture":
        return torch.log(sum(lp[s, b, t].exp() for s in range(S)) / S)
    # log-likelihood each shard gives the real tokens 1..t of row b
    like = []
    for s in range(S):
        total = 0.0
        for j in range(1, t + 1):
            if mask[b, j] and mask[b, j - 1]:
                total += float(lp[s, b, j - 1, ids[b, j]])
        like.append(total)
    if mode == "route":
        best = max(range(S), key=lambda s: (like[s], -s))
        return lp[best, b, t]
    top = max(like)
    w = [math.exp(x - top) for x in like]
    w = [x / sum(w) for x in w]
    return torch.log(sum(w[s] * lp[s, b, t].exp() for s in range(S)))


@pytest.mark.parametrize("mode", MODES)
def test_scoring_matches_hand_computation(s3t_run, mode):
    from llm_unlearn.data.qa import QACollator, encode_qa

    model = load_s3t_model(s3t_run, aggregate=mode)
    assert sorted(model.served) == [0, 1]
    _randomise_adapters(model)
    tok = model.tokenizer
    batch = QACollator(tok)([encode_qa(tok, "Who wrote the book about rivers?", "Nobody knows who did."),
                             encode_qa(tok, "Q?", "A.")])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        out = model(**batch)
        lp = _shard_lp(model, ids, mask)
    assert not torch.allclose(lp[0], lp[1], atol=1e-2)  # the shards really differ
    for b in range(2):
        for t in range(int(mask[b].sum())):
            assert torch.allclose(out.logits[b, t], _hand(mode, lp, ids, mask, b, t), atol=1e-4), (mode, b, t)
    real = mask.bool()
    assert torch.allclose(out.logits[real].exp().sum(-1), torch.ones(int(real.sum())), atol=1e-4)
    nll = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.size(-1)),
                                            batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, nll, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_generate_matches_hand_greedy_decoding(s3t_run, mode):
    from llm_unlearn.data.qa import GenerationCollator

    model = load_s3t_model(s3t_run, aggregate=mode)
    _randomise_adapters(model, seed=1)
    rows = [{"question": "Who wrote the book about rivers and mountains?", "answer": ""},
            {"question": "Where?", "answer": ""}]
    batch = GenerationCollator(model.tokenizer)(rows)  # left padded
    width = batch["input_ids"].shape[1]
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5,
                         do_sample=False, eos_token_id=-1)
    assert out.shape == (2, width + 5)
    for b in range(2):  # by hand: one row, no padding, no KV cache, every shard on the whole sequence
        ids = batch["input_ids"][b][batch["attention_mask"][b].bool()][None]
        for _ in range(5):
            mask = torch.ones_like(ids)
            with torch.no_grad():
                lp = _shard_lp(model, ids, mask)
            nxt = int(_hand(mode, lp, ids, mask, 0, ids.shape[1] - 1).argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert out[b, width:].tolist() == ids[0, -5:].tolist(), mode
    assert len(set(out[:, width:].flatten().tolist())) > 1


def _teach(model, shard, question, answer, steps=80):
    """Train shard `shard`'s served adapter in memory on one QA (question and answer tokens), so it
    alone knows the fact (as a shard that trained on an entity's samples with --prompt-loss).

    The random tiny base cannot be confident about anything: its head (0.02-scale weights on an
    RMS-normed hidden state) keeps every logit within a few nats. The shared head is scaled first,
    the same for both shards, so an adapter can learn a confident answer."""
    from llm_unlearn.data.qa import encode_qa

    with torch.no_grad():
        model._base.lm_head.weight.mul_(30.0)

    enc = encode_qa(model.tokenizer, question, answer)
    ids = torch.tensor([enc["input_ids"]])
    name = f"shard{shard}"
    model.peft.set_adapter(name)
    params = [p for n, p in model.peft.named_parameters() if f".{name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=5e-3)
    for _ in range(steps):
        loss = model.peft(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for p in params:
        p.requires_grad_(False)
    return enc


@pytest.mark.parametrize("mode", ["posterior", "route"])
def test_fact_only_shard_one_knows_gets_shard_one_probability(s3t_run, mode):
    from llm_unlearn.scoring import sequence_logprobs

    model = load_s3t_model(s3t_run, aggregate=mode)
    question, answer = "Where was the novelist Quorvan Mestelby born?", "Quorvan Mestelby was born in Tallinn."
    enc = _teach(model, 1, question, answer)
    batch = {k: torch.tensor([enc[k]]) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        lp = _shard_lp(model, batch["input_ids"], batch["attention_mask"])
        ans = (batch["labels"][0, 1:] != -100)
        tokens = batch["input_ids"][0, 1:]
        per_shard = [float(lp[s, 0, :-1].gather(-1, tokens[:, None]).squeeze(-1)[ans].sum()) for s in range(2)]
        served, _ = sequence_logprobs(model, batch)
        model.aggregate = "mean-logprob"
        diluted, _ = sequence_logprobs(model, batch)
    p0, p1 = math.exp(per_shard[0]), math.exp(per_shard[1])
    assert p1 > 0.5 and p0 < 0.01  # shard 1 knows the answer, shard 0 does not
    assert abs(math.exp(float(served)) - p1) < 0.02 * p1  # served at shard 1's probability (within 2 %)
    assert math.exp(float(diluted)) < 0.5 * p1  # the product of experts dilutes it


def test_nothing_serving_refuses_unless_allow_base(run_copy):
    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.service import check_servable, delete_samples

    ledger = DeletionLedger.open(run_copy)
    victims = [ledger.sample_ids(shard=s, slices=[ledger.sequence_orders(s)[b][0]])[0] for s in (0, 1) for b in (0, 1)]
    assert delete_samples(run_copy, ids=victims).retrain_shards == [0, 1]
    with pytest.raises(UnlearnError, match="no shard is serving.*--allow-base"):
        load_s3t_model(run_copy)
    with pytest.raises(UnlearnError, match="no shard is serving"):
        check_servable(run_copy)
    model = load_s3t_model(run_copy, allow_base=True)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        base = torch.log_softmax(model.model(input_ids=ids).logits, -1)
        assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-5)


def test_eval_cli_records_aggregate_and_refuses_empty_run(run_copy, synthetic_dir, tmp_path, capsys):
    import json

    from llm_unlearn.cli import main
    from llm_unlearn.runinfo import read_manifest
    from llm_unlearn.s3t.ledger import DeletionLedger
    from llm_unlearn.s3t.service import delete_samples

    assert read_manifest(run_copy)["aggregate"] == "mixture"  # the default
    out = tmp_path / "ev"
    args = ["eval", "--model", str(run_copy), "--data", str(synthetic_dir), "--max-items", "2", "--max-new-tokens", "4",
            "--output", str(out)]
    assert main(args + ["--aggregate", "route"]) == 0
    assert json.loads((out / "summary.json").read_text())["s3t"] == {"aggregate": "route", "served_shards": [0, 1]}
    capsys.readouterr()
    assert main(args[:-1] + [str(tmp_path / "bad"), "--aggregate", "vote"]) == 2
    assert "--aggregate 'vote' unknown" in capsys.readouterr().err
    ledger = DeletionLedger.open(run_copy)
    delete_samples(run_copy, ids=[ledger.sample_ids(shard=s, slices=[ledger.sequence_orders(s)[b][0]])[0]
                                  for s in (0, 1) for b in (0, 1)])
    empty = tmp_path / "empty"
    assert main(args[:-1] + [str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--allow-base" in err
    assert not empty.exists()
    assert main(args[:-1] + [str(empty), "--allow-base"]) == 0
