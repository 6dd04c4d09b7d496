"""Nothing of a deleted sample is left: a deleted-then-served run equals the run trained without
the sample from the start (adapters, base, tokenizer: bit for bit), purge removes every stage and
text that saw it, a killed retrain leaves nothing behind, the tiny tokenizer never sees deletable
text, and what the ledger records is on disk."""

import json
import sqlite3

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.ledger import DeletionLedger
from llm_unlearn.s3t.serve import load_s3t_model
from llm_unlearn.s3t.service import compare_with_reference, delete_samples, purge, retrain, verify_run


def _first_slice_sample(ledger, shard, sequence):
    first = ledger.sequence_orders(shard)[sequence][0]
    return ledger.sample_ids(shard=shard, slices=[first])[0]


def _grep(run_dir, needle: str) -> list[str]:
    """Every file under `run_dir` (binary ones included) containing `needle`, raw or JSON-escaped."""
    forms = {needle.encode(), json.dumps(needle)[1:-1].encode()}
    return [str(p.relative_to(run_dir)) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and any(f in p.read_bytes() for f in forms)]


def test_deleted_then_served_equals_excluded_reference_bitwise(s3t_run, run_copy, synthetic_dir, tmp_path,
                                                               s3t_settings):
    from llm_unlearn.s3t.train import train_s3t

    ledger = DeletionLedger.open(run_copy)
    # shard 0 keeps a prefix of its other sequence; shard 1 loses both first slices and is retrained
    victims = [_first_slice_sample(ledger, 0, 0), _first_slice_sample(ledger, 1, 0), _first_slice_sample(ledger, 1, 1)]
    res = delete_samples(run_copy, ids=victims)
    assert res.retrain_shards == [1] and res.serving[0] == (1, 1)
    assert retrain(run_copy) == [1]
    ref = tmp_path / "reference"
    ref.mkdir()
    train_s3t(s3t_settings(synthetic_dir, ref, exclude_ids=victims))
    report = compare_with_reference(run_copy, ref)
    assert report["identical"] and [s["prefix"] for s in report["shards"]] == [1, 2]
    assert all(s["same_samples"] for s in report["shards"])
    served = load_s3t_model(run_copy)
    reference = load_s3t_model(ref, serve_like=run_copy)
    assert sorted(served.served) == sorted(reference.served) == [0, 1]
    for shard in (0, 1):
        a, b = served.adapter_state(shard), reference.adapter_state(shard)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(served(input_ids=ids).logits, reference(input_ids=ids).logits)
    # nothing else that is served depends on the deleted samples: the base and its tokenizer
    for name in ("model.safetensors", "tokenizer.json"):
        assert (run_copy / "base" / name).read_bytes() == (ref / "base" / name).read_bytes()
    # the reference was trained without them from the start: its ledger never held their text
    assert DeletionLedger.open(ref).deleted_texts() == []
    assert verify_run(ref)["deleted_samples"] == 3
    # the run before the deletions is not the reference: shard 1 served stages that saw them
    before = compare_with_reference(s3t_run, ref)
    assert not before["identical"] and not all(s["identical"] for s in before["shards"])


def test_purge_leaves_no_deleted_text_anywhere(run_copy):
    ledger = DeletionLedger.open(run_copy)
    rows = ledger.samples(ledger.sample_ids(shard=0))
    victim = max(rows, key=lambda r: len(r["answer"]))  # a long answer: no chance hit in a binary file
    answer, question = victim["answer"], victim["question"]
    assert len(answer) >= 24 and set(_grep(run_copy, answer)) <= {"ledger.sqlite", "ledger.sqlite-wal"}
    assert _grep(run_copy, answer)
    evals = run_copy / "eval"  # an evaluation written before the deletion quotes the sample
    evals.mkdir()
    (evals / "per_item.json").write_text(json.dumps([{"question": question, "answer": answer}]))
    res = delete_samples(run_copy, match=answer[:30].upper())
    assert victim["sample_id"] in res.sample_ids
    dirty = {r.checkpoint for r, _ in ledger.dirty_stages()}
    assert dirty and all((run_copy / c).is_dir() for c in dirty)
    with pytest.raises(UnlearnError, match="trained on deleted samples still exist"):
        verify_run(run_copy)
    report = purge(run_copy)
    assert report["files_removed"] == ["eval/per_item.json"]
    assert all(any(c == r or c.startswith(r + "/") for r in report["checkpoints_removed"]) for c in dirty)
    assert not any((run_copy / c).exists() for c in dirty)
    for needle in (answer, question, answer[:30].upper()):
        assert _grep(run_copy, needle) == []
    (row,) = sqlite3.connect(run_copy / "ledger.sqlite").execute(
        "SELECT question, answer, question_hash FROM samples WHERE sample_id = ?", (victim["sample_id"],)).fetchall()
    assert row[:2] == (None, None) and len(row[2]) == 64
    assert verify_run(run_copy)["deleted_samples"] == len(res.sample_ids)
    # the same request again is recognised from the hashes alone
    for again in (answer[:30].upper(), f"  {answer.upper()} ", question):
        assert delete_samples(run_copy, match=again).status == "already_deleted"
    assert purge(run_copy)["checkpoints_removed"] == []  # idempotent


def test_killed_retrain_leaves_no_orphans(run_copy, monkeypatch):
    import llm_unlearn.s3t.train as train

    ledger = DeletionLedger.open(run_copy)
    delete_samples(run_copy, ids=[_first_slice_sample(ledger, 1, 0), _first_slice_sample(ledger, 1, 1)])
    real, calls = train.train_stage, []

    def dies_on_second_stage(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies mid-retrain (one stage written and recorded)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_stage", dies_on_second_stage)
    with pytest.raises(KeyboardInterrupt):
        retrain(run_copy)
    monkeypatch.setattr(train, "train_stage", real)
    assert (run_copy / "checkpoints/shard1/gen1/seq0/stage1").is_dir()
    stray = run_copy / "checkpoints/shard1/gen1/seq0/stage2"  # saved, then killed before the ledger heard of it
    stray.mkdir(parents=True)
    (stray / "adapter_model.safetensors").write_bytes(b"partial")
    with pytest.raises(UnlearnError, match="s3t purge"):
        verify_run(run_copy)
    assert retrain(run_copy) == [1]
    assert not (run_copy / "checkpoints/shard1/gen0").exists() and not (run_copy / "checkpoints/shard1/gen1").exists()
    assert sorted(p.name for p in (run_copy / "checkpoints/shard1").iterdir()) == ["gen2"]
    assert {r.generation for r in ledger.stages(1)} == {2}
    verify_run(run_copy)


def test_tiny_tokenizer_is_trained_on_utility_text_only(s3t_run, synthetic_dir, tmp_path, s3t_settings):
    from llm_unlearn.models import load_tokenizer, texts_for_tokenizer, train_tiny_tokenizer
    from llm_unlearn.runinfo import read_manifest
    from llm_unlearn.s3t.train import TOKENIZER_SPLITS, validate_config

    manifest = read_manifest(s3t_run)
    assert manifest["tokenizer_trained_on"] and "full" not in manifest["tokenizer_trained_on"]
    assert set(manifest["tokenizer_trained_on"]) <= set(TOKENIZER_SPLITS)
    expected = train_tiny_tokenizer(texts_for_tokenizer(synthetic_dir, manifest["tokenizer_trained_on"]))
    assert load_tokenizer(str(s3t_run / "base")).get_vocab() == expected.get_vocab()
    # a source with no text that can never be deleted is refused, naming the problem
    only_full = tmp_path / "only_full"
    only_full.mkdir()
    (only_full / "full.jsonl").write_text((synthetic_dir / "full.jsonl").read_text())
    with pytest.raises(UnlearnError, match="only on text that can never be deleted"):
        validate_config(s3t_settings(only_full, tmp_path / "x"))
    with pytest.raises(UnlearnError, match="tokenizer is trained on that split"):
        validate_config(s3t_settings(synthetic_dir, tmp_path / "x", split="world_facts"))


def test_base_finetuned_on_the_same_data_is_refused(synthetic_dir, tmp_path, s3t_settings):
    from llm_unlearn.runinfo import write_manifest
    from llm_unlearn.s3t.train import validate_config

    base = tmp_path / "target"
    base.mkdir()
    write_manifest(base, kind="finetune", data=str(synthetic_dir), split="full")
    with pytest.raises(UnlearnError, match="was trained on .* the data S3T trains on"):
        validate_config(s3t_settings(synthetic_dir, tmp_path / "x", model=str(base)))


def test_exclusion_errors(synthetic_dir, tmp_path, s3t_settings):
    from llm_unlearn.s3t.train import validate_config

    with pytest.raises(UnlearnError, match="--exclude-ids: unknown sample id 'full:999'"):
        validate_config(s3t_settings(synthetic_dir, tmp_path, exclude_ids=["full:999"]))
    rows, excluded = validate_config(s3t_settings(synthetic_dir, tmp_path, max_items=None, exclude_split="forget10"))
    forget = {json.loads(line)["question"] for line in (synthetic_dir / "forget10.jsonl").read_text().splitlines()}
    assert {r["question"] for r in rows if r["sample_id"] in excluded} == forget


def test_checkpoint_is_fsynced_before_the_ledger_records_it(synthetic_dir, tmp_path, monkeypatch, s3t_settings):
    import os

    import llm_unlearn.s3t.train as train

    synced, events = [], []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    real_record = DeletionLedger.record_stage

    def record_stage(self, shard, sequence, stage, generation, slices, checkpoint, *rest, **kw):
        ckpt = str((tmp_path / "run" / checkpoint).resolve())
        events.append((checkpoint, ckpt + "/adapter_model.safetensors" in synced, ckpt in synced,
                       str((tmp_path / "run").resolve()) in synced))
        return real_record(self, shard, sequence, stage, generation, slices, checkpoint, *rest, **kw)

    monkeypatch.setattr(train.os, "fsync", fsync)
    monkeypatch.setattr(DeletionLedger, "record_stage", record_stage)
    (tmp_path / "run").mkdir()
    train.train_s3t(s3t_settings(synthetic_dir, tmp_path / "run", shards=1, sequences=1, max_items=8))
    assert len(events) == 2 and all(all(e[1:]) for e in events)  # file, its directory, up to the run dir


def test_ledger_schema_is_created_in_one_transaction(tmp_path):
    rows = [{"sample_id": "full:0", "question": "q", "answer": "a", "shard": 0, "slice": 0},
            {"sample_id": "full:1", "question": "q", "answer": "a"}]  # no shard: fails mid-creation
    with pytest.raises(KeyError):
        DeletionLedger.create(tmp_path, rows, [[[0]]], {"package_version": "test"})
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert con.execute("SELECT name FROM sqlite_master").fetchall() == []  # no half-made schema
    con.close()
    with pytest.raises(UnlearnError, match="not an S3T ledger|cannot read"):
        DeletionLedger.open(tmp_path)


def test_verify_fails_on_a_tokenizer_trained_on_deletable_text(run_copy):
    manifest = json.loads((run_copy / "run.json").read_text())
    verify_run(run_copy)
    manifest["tokenizer_trained_on"] = ["full", "world_facts"]  # what build_tiny(data) did before issue 18
    (run_copy / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlearnError, match="tokenizer was trained on"):
        verify_run(run_copy)


def test_utility_rows_train_every_stage_and_stay_exact(synthetic_dir, tmp_path, s3t_settings):
    from llm_unlearn.s3t.train import fixed_rows, reproduce_stage, train_s3t, weights_sha256

    cfg = s3t_settings(synthetic_dir, tmp_path / "util", shards=1, sequences=1, max_items=8, with_utility=True)
    (tmp_path / "util").mkdir()
    run = train_s3t(cfg)
    plain = s3t_settings(synthetic_dir, tmp_path / "plain", shards=1, sequences=1, max_items=8)
    (tmp_path / "plain").mkdir()
    train_s3t(plain)
    assert len(fixed_rows(cfg)) > 0 and fixed_rows(plain) == []
    ledger = DeletionLedger.open(run)
    assert len(ledger.sample_ids()) == 8  # utility rows are not deletable samples
    rec = ledger.active_stages()[0]
    assert weights_sha256(reproduce_stage(run, rec.stage_id)) == rec.weights_sha256
    other = DeletionLedger.open(tmp_path / "plain").active_stages()[0]
    assert other.weights_sha256 != rec.weights_sha256  # the utility rows were trained on


def test_stacked_layout_freezes_earlier_stages_and_stays_exact(synthetic_dir, tmp_path, s3t_settings):
    """`layout="stacked"`: every stage trains its own rank-r components of one LoRA on every layer.
    Stage 2 leaves stage 1's components bit for bit as stage 1 wrote them, stage 1 leaves stage 2's
    at zero, every layer carries the adapter, and deleting a sample still gives the exact-retrain
    reference's served weights."""
    from safetensors.torch import load_file

    from llm_unlearn.s3t.train import reproduce_stage, train_s3t, weights_sha256

    cfg = s3t_settings(synthetic_dir, tmp_path / "stacked", shards=1, sequences=2, max_items=16, layout="stacked")
    (tmp_path / "stacked").mkdir()
    run = train_s3t(cfg)
    ledger = DeletionLedger.open(run)
    recs = {(r.sequence, r.stage): r for r in ledger.stages(0)}
    s1 = load_file(str(run / recs[(0, 1)].checkpoint / "adapter_model.safetensors"))
    s2 = load_file(str(run / recs[(0, 2)].checkpoint / "adapter_model.safetensors"))
    config = json.loads((run / recs[(0, 2)].checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 2 * cfg.lora_r
    r = cfg.lora_r
    layers = {int(k.split("layers.")[1].split(".")[0]) for k in s2 if "layers." in k}
    assert layers == {0, 1, 2, 3}  # the tiny model's every layer, at both stages
    a_keys = [k for k in s2 if "lora_A" in k]
    b_keys = [k for k in s2 if "lora_B" in k]
    assert a_keys and b_keys
    for k in a_keys:
        assert torch.equal(s1[k][:r], s2[k][:r]) and not torch.equal(s2[k][r:], torch.zeros_like(s2[k][r:]))
        assert torch.count_nonzero(s1[k][r:]) == 0
    for k in b_keys:
        assert torch.equal(s1[k][:, :r], s2[k][:, :r]) and torch.count_nonzero(s1[k][:, r:]) == 0
    assert any(torch.count_nonzero(s2[k][:, r:]) > 0 for k in b_keys)  # stage 2 learned something
    rec = recs[(1, 2)]
    assert weights_sha256(reproduce_stage(run, rec.stage_id)) == rec.weights_sha256
    # delete a sample of sequence 0's first slice: the shard serves sequence 1's prefix 1
    victim = _first_slice_sample(ledger, 0, 0)
    res = delete_samples(run, ids=[victim])
    assert res.serving[0] == (1, 1)
    ref = tmp_path / "reference"
    ref.mkdir()
    train_s3t(s3t_settings(synthetic_dir, ref, shards=1, sequences=2, max_items=16, layout="stacked",
                           exclude_ids=[victim]))
    report = compare_with_reference(run, ref)
    assert report["identical"] and [s["prefix"] for s in report["shards"]] == [1]
    blocks = compare_with_reference(run, train_s3t(s3t_settings(
        synthetic_dir, tmp_path / "blocks_ref", shards=1, sequences=2, max_items=16, exclude_ids=[victim])))
    assert not blocks["identical"]  # the layout is part of what the reference must share


def test_linear_lr_schedule_decays_to_zero_within_each_stage(s3t_run):
    """`lr_schedule="linear"`: step k of a stage's T steps uses lr·(1 - k/T), so the last step's lr
    is lr/T and the stage ends at 0; `constant` keeps lr. The two give different weights."""
    from dataclasses import replace

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from llm_unlearn.s3t.train import adapter_state, load_base, load_run, train_stage

    ledger, plan, cfg, manifest = load_run(s3t_run)
    base, tokenizer = load_base(s3t_run, manifest)
    rec = next(r for r in ledger.stages(0) if r.stage == 1)
    rows = ledger.samples(ledger.stage_sample_ids(rec.stage_id))
    weights, lrs = {}, {}
    for schedule in ("constant", "linear"):
        seen = lrs[schedule] = []
        handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs, seen=seen: seen.append(
            opt.param_groups[0]["lr"]))
        try:
            stage_cfg = replace(cfg, lr_schedule=schedule, epochs_per_stage=6)
            weights[schedule] = adapter_state(train_stage(base, tokenizer, plan.blocks, 1, rows, rec.seed, stage_cfg))
        finally:
            handle.remove()
    total = 6 * -(-len(rows) // cfg.batch_size)
    assert len(lrs["linear"]) == len(lrs["constant"]) == total >= 6
    assert lrs["constant"] == [cfg.lr] * total
    assert lrs["linear"] == pytest.approx([cfg.lr * (1 - k / total) for k in range(total)], rel=1e-12)
    assert lrs["linear"][-1] == pytest.approx(cfg.lr / total)
    assert weights["linear"].keys() == weights["constant"].keys()
    assert not all(torch.equal(weights["linear"][k], weights["constant"][k]) for k in weights["linear"])


def test_linear_lr_schedule_retrain_equals_excluded_reference(synthetic_dir, tmp_path, s3t_settings):
    """With the linear schedule a retrained stage has fewer steps (batch size 2: 16 -> 14 samples is
    8 -> 7 steps per epoch), so its decay differs from the first training's; the exclude reference
    counts the same steps and matches bit for bit. A constant-lr reference does not."""
    from llm_unlearn.s3t.train import train_s3t

    settings = dict(shards=1, sequences=2, max_items=16, batch_size=2)
    run = tmp_path / "run"
    run.mkdir()
    train_s3t(s3t_settings(synthetic_dir, run, lr_schedule="linear", **settings))
    ledger = DeletionLedger.open(run)
    victims = [_first_slice_sample(ledger, 0, 0), _first_slice_sample(ledger, 0, 1)]
    res = delete_samples(run, ids=victims)
    assert res.retrain_shards == [0]
    assert retrain(run) == [0]
    new = [r for r in ledger.stages(0) if r.generation == 1 and r.stage == 2]
    assert all(len(ledger.stage_sample_ids(r.stage_id)) == 14 for r in new)
    ref = tmp_path / "reference"
    ref.mkdir()
    train_s3t(s3t_settings(synthetic_dir, ref, lr_schedule="linear", exclude_ids=victims, **settings))
    report = compare_with_reference(run, ref)
    assert report["identical"] and [s["prefix"] for s in report["shards"]] == [2]
    const = tmp_path / "constant_ref"
    const.mkdir()
    train_s3t(s3t_settings(synthetic_dir, const, exclude_ids=victims, **settings))
    assert not compare_with_reference(run, const)["identical"]  # the schedule is part of the reference


@pytest.mark.parametrize("layout", ["blocks", "stacked"])
def test_head_lora_is_split_by_stage_and_stays_exact(synthetic_dir, tmp_path, s3t_settings, layout):
    """`head="lora"`: the output head carries a LoRA of rank r·L in either layout. Stage 1 trains
    its first r components and leaves the rest at zero; stage 2 keeps stage 1's bit for bit and
    trains its own; the served ensemble uses the head delta; deleting a sample gives the
    exact-retrain reference's served weights, head included."""
    from safetensors.torch import load_file

    from llm_unlearn.s3t.train import train_s3t

    settings = dict(shards=1, sequences=2, max_items=16, layout=layout, head="lora")
    run = tmp_path / "run"
    run.mkdir()
    cfg = s3t_settings(synthetic_dir, run, **settings)
    train_s3t(cfg)
    ledger = DeletionLedger.open(run)
    recs = {(r.sequence, r.stage): r for r in ledger.stages(0)}
    s1 = load_file(str(run / recs[(0, 1)].checkpoint / "adapter_model.safetensors"))
    s2 = load_file(str(run / recs[(0, 2)].checkpoint / "adapter_model.safetensors"))
    r = cfg.lora_r
    head_a = [k for k in s2 if "lm_head.lora_A" in k]
    head_b = [k for k in s2 if "lm_head.lora_B" in k]
    assert len(head_a) == len(head_b) == 1
    assert not [k for k in s2 if "lm_head" in k and "lora_" not in k]  # the adapter only, not the base head
    a, b = head_a[0], head_b[0]
    assert s2[a].shape[0] == s2[b].shape[1] == 2 * r
    assert torch.count_nonzero(s1[a][r:]) == 0 and torch.count_nonzero(s1[b][:, r:]) == 0
    assert torch.count_nonzero(s1[b][:, :r]) > 0  # stage 1 trained its head components
    assert torch.equal(s1[a][:r], s2[a][:r]) and torch.equal(s1[b][:, :r], s2[b][:, :r])
    assert torch.count_nonzero(s2[b][:, r:]) > 0  # stage 2 trained its own
    model = load_s3t_model(run)
    ids = model.tokenizer("Who wrote it?", return_tensors="pt")["input_ids"]
    with_head = model.shard_logprobs(ids)
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lm_head.lora_B" in name:
                p.zero_()
    assert not torch.allclose(with_head, model.shard_logprobs(ids))  # the served head delta counts
    victim = _first_slice_sample(ledger, 0, 0)
    assert delete_samples(run, ids=[victim]).serving[0] == (1, 1)
    ref = tmp_path / "reference"
    ref.mkdir()
    train_s3t(s3t_settings(synthetic_dir, ref, exclude_ids=[victim], **settings))
    report = compare_with_reference(run, ref)
    assert report["identical"] and [s["prefix"] for s in report["shards"]] == [1]
    plain = compare_with_reference(run, train_s3t(s3t_settings(
        synthetic_dir, tmp_path / "plain_ref", shards=1, sequences=2, max_items=16, layout=layout,
        exclude_ids=[victim])))
    assert not plain["identical"]  # the head is part of what the reference must share
