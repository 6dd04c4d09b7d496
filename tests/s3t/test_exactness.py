"""Exact deletion on a real tiny S3T run: what is served never saw a deleted sample, is the
stored checkpoint bit for bit, and equals a from-scratch retrain of the same prefix."""

import pytest
import torch
from safetensors.torch import load_file

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.ledger import DeletionLedger
from llm_unlearn.s3t.serve import load_s3t_model
from llm_unlearn.s3t.service import delete_samples, purge, retrain, run_status, verify_run
from llm_unlearn.s3t.train import reproduce_stage, weights_sha256


def _first_slice_sample(ledger, shard, sequence):
    first = ledger.sequence_orders(shard)[sequence][0]
    return ledger.sample_ids(shard=shard, slices=[first])[0]


def test_training_fills_the_ledger(s3t_run):
    ledger = DeletionLedger.open(s3t_run)
    stages = ledger.stages()
    assert len(stages) == 2 * 2 * 2  # shards x sequences x slices
    for rec in stages:
        order = ledger.sequence_orders(rec.shard)[rec.sequence]
        assert rec.slices == order[:rec.stage]
        assert set(ledger.stage_sample_ids(rec.stage_id)) == set(ledger.sample_ids(shard=rec.shard, slices=rec.slices))
        state = load_file(str(s3t_run / rec.checkpoint / "adapter_model.safetensors"))
        assert weights_sha256(state) == rec.weights_sha256
        # a stage-k checkpoint holds adapters for blocks 1..k only (later blocks have none)
        layers = {int(k.split(".layers.")[1].split(".")[0]) for k in state}
        assert layers == {2, 3} if rec.stage == 1 else layers == {0, 1, 2, 3}
    assert [s.prefix for s in ledger.status()] == [2, 2]
    assert all(s.capacity == 2 for s in ledger.status())


def test_deletion_is_exact(run_copy):
    ledger = DeletionLedger.open(run_copy)
    victim = _first_slice_sample(ledger, 0, 0)
    res = delete_samples(run_copy, ids=[victim])
    assert res.serving[0][0] == 1 and res.serving[0][1] == 1  # sequence 1 keeps its first stage
    # 1. no active stage in the ledger used it
    assert ledger.active_deleted_overlap() == []
    for rec in ledger.active_stages():
        assert victim not in ledger.stage_sample_ids(rec.stage_id)
    # 2. the served adapter weights hash-equal the stored checkpoint
    model = load_s3t_model(run_copy)
    assert sorted(model.served) == [0, 1]
    for shard, info in model.served.items():
        rec = ledger.stage(info["stage_id"])
        stored = load_file(str(run_copy / rec.checkpoint / "adapter_model.safetensors"))
        served = model.adapter_state(shard)
        assert served.keys() == stored.keys()
        assert all(torch.equal(served[k], stored[k]) for k in stored)
        assert model.served_weights_sha256(shard) == rec.weights_sha256
    # 3. retraining the same prefix from scratch with the same seed is bitwise identical
    rec = ledger.stage(model.served[0]["stage_id"])
    again = reproduce_stage(run_copy, rec.stage_id)
    assert weights_sha256(again) == rec.weights_sha256
    with pytest.raises(UnlearnError, match="s3t purge"):  # stages that saw it are still on disk
        verify_run(run_copy)
    purge(run_copy)
    assert verify_run(run_copy)["deleted_samples"] == 1


def test_changed_checkpoint_is_refused(run_copy):
    ledger = DeletionLedger.open(run_copy)
    rec = ledger.active_stages()[0]
    path = run_copy / rec.checkpoint / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UnlearnError, match="sha256"):
        verify_run(run_copy)
    with pytest.raises(UnlearnError, match="sha256"):
        load_s3t_model(run_copy)


def test_retrain_only_the_shard_without_survivor(run_copy):
    ledger = DeletionLedger.open(run_copy)
    victims = [_first_slice_sample(ledger, 1, 0), _first_slice_sample(ledger, 1, 1)]
    res = delete_samples(run_copy, ids=victims)
    assert res.retrain_shards == [1]
    model = load_s3t_model(run_copy)
    assert sorted(model.served) == [0]  # the shard waiting for retraining is not served
    shard0_stages = {r.stage_id for r in ledger.stages(0)}
    assert retrain(run_copy) == [1]
    assert {r.stage_id for r in ledger.stages(0)} == shard0_stages  # shard 0 untouched
    new = [r for r in ledger.stages(1) if r.generation == 1]
    assert len(new) == 4
    for rec in new:
        assert not set(victims) & set(ledger.stage_sample_ids(rec.stage_id))
    s1 = run_status(run_copy)[1]
    assert (s1.status, s1.prefix, s1.generation, s1.deleted) == ("serving", 2, 1, 2)
    assert ledger.deletions()[0]["status"] == "applied"
    assert ledger.active_deleted_overlap() == []
    assert sorted(model.reload()) == [0, 1]
    assert model.served_weights_sha256(1) == ledger.stage(model.served[1]["stage_id"]).weights_sha256
    assert retrain(run_copy) == []


@pytest.mark.parametrize("mode", ["mean-logprob", "posterior", "route"])
def test_generate_left_padded_batch_matches_single_and_uncached(s3t_run, mode):
    from llm_unlearn.data.qa import GenerationCollator

    model = load_s3t_model(s3t_run, aggregate=mode)
    torch.manual_seed(0)
    with torch.no_grad():  # random adapters so greedy decoding is not just EOS
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rows = [{"question": "Who wrote the book about rivers and mountains?", "answer": ""},
            {"question": "Where?", "answer": ""}]
    collate = GenerationCollator(model.tokenizer)
    batch = collate(rows)
    width = batch["input_ids"].shape[1]
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                         do_sample=False, eos_token_id=-1)
    assert out.shape == (2, width + 6)
    assert len(set(out[:, width:].flatten().tolist())) > 1
    for i, row in enumerate(rows):
        single = collate([row])
        one = model.generate(input_ids=single["input_ids"], attention_mask=single["attention_mask"],
                             max_new_tokens=6, eos_token_id=-1)
        assert one[0, single["input_ids"].shape[1]:].tolist() == out[i, width:].tolist()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(6):  # no KV cache: full forward each step
        with torch.no_grad():
            nxt = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(ids, out)


def test_reload_follows_deletions_while_serving(run_copy):
    model = load_s3t_model(run_copy)
    ledger = DeletionLedger.open(run_copy)
    before = model.served_weights_sha256(0)
    delete_samples(run_copy, ids=[_first_slice_sample(ledger, 0, b) for b in (0, 1)])
    assert sorted(model.reload()) == [1]
    ids = torch.tensor([[1, 5, 6, 7]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 4)
    with pytest.raises(UnlearnError, match="not serving"):
        model.served_weights_sha256(0)
    assert before != model.served_weights_sha256(1)
