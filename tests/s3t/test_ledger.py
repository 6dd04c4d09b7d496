"""Ledger semantics without a model: fake checkpoints, real SQLite, real processes."""

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llm_unlearn.errors import UnlearnError
from llm_unlearn.s3t.ledger import DeletionLedger
from llm_unlearn.s3t.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]


def build(tmp_path, shards=2, slices=3, sequences=2, per_slice=2) -> tuple[DeletionLedger, object]:
    ids = [f"full:{i}" for i in range(shards * slices * per_slice)]
    plan = make_plan(ids, shards, slices, sequences, num_layers=slices, method="cyclic", seed=0)
    where = plan.slice_of()
    rows = [{"sample_id": s, "question": f"Who wrote book {s}?", "answer": f"Author {s} did.",
             "shard": where[s][0], "slice": where[s][1]} for s in ids]
    ledger = DeletionLedger.create(tmp_path, rows, plan.sequences, {"package_version": "test"})
    for shard in range(shards):
        for b, order in enumerate(plan.sequences[shard]):
            for stage in range(1, slices + 1):
                used = [s for k in order[:stage] for s in plan.shards[shard][k]]
                ledger.record_stage(shard, b, stage, 0, order[:stage], f"ck/{shard}/{b}/{stage}", "f" * 64,
                                    "w" * 64, used, seed=0)
        ledger.publish(shard)
    return ledger, plan


def snapshot(ledger: DeletionLedger) -> dict:
    con = sqlite3.connect(ledger.path)
    out = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
           for t in ("samples", "sequences", "serving", "deletions", "stages")}
    con.close()
    return out


def first_slice_sample(plan, shard, sequence):
    return plan.shards[shard][plan.sequences[shard][sequence][0]][0]


def test_initial_state_serves_full_prefix(tmp_path):
    ledger, plan = build(tmp_path)
    status = ledger.status()
    assert [s.prefix for s in status] == [3, 3]
    assert [s.capacity for s in status] == [2, 2]
    assert ledger.active_deleted_overlap() == []
    con = sqlite3.connect(ledger.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_delete_truncates_and_picks_longest_prefix(tmp_path):
    ledger, plan = build(tmp_path)
    orders = plan.sequences[0]
    victim = first_slice_sample(plan, 0, 0)  # first slice of sequence 0
    res = ledger.delete(ids=[victim])
    assert res.status == "applied" and res.affected_shards == [0] and res.retrain_shards == []
    seq, prefix = res.serving[0]
    assert seq == 1  # sequence 0 lost everything; sequence 1 keeps the slices before the victim's
    assert prefix == orders[1].index(orders[0][0])
    assert ledger.active_deleted_overlap() == []
    for rec in ledger.active_stages():
        assert victim not in ledger.stage_sample_ids(rec.stage_id)
    s0, s1 = ledger.status()
    assert (s0.deleted, s0.live_sequences, s0.capacity) == (1, 1, 1)
    assert (s1.prefix, s1.deleted) == (3, 0)
    (req,) = ledger.deletions()
    assert req["sample_ids"] == [victim] and req["status"] == "applied"


def test_shard_without_survivor_needs_retrain(tmp_path):
    ledger, plan = build(tmp_path)
    res = ledger.delete(ids=[first_slice_sample(plan, 1, 0), first_slice_sample(plan, 1, 1)])
    assert res.retrain_shards == [1] and res.serving[1] == (None, 0)
    assert ledger.retrain_pending() == [1]
    assert [s.status for s in ledger.status()] == ["serving", "needs_retrain"]
    assert ledger.deletions()[0]["status"] == "retrain_pending"
    assert all(r.shard == 0 for r in ledger.active_stages())


def test_delete_is_idempotent(tmp_path):
    ledger, plan = build(tmp_path)
    victim = first_slice_sample(plan, 0, 1)
    ledger.delete(ids=[victim])
    before = snapshot(ledger)
    res = ledger.delete(ids=[victim])
    assert res.status == "already_deleted" and res.already_deleted == [victim] and res.request_id is None
    assert snapshot(ledger) == before


def test_match_is_case_insensitive_substring(tmp_path):
    ledger, plan = build(tmp_path)
    res = ledger.delete(match="AUTHOR FULL:3 ")
    assert res.sample_ids == ["full:3"]
    assert ledger.deletions()[0]["query"] == "AUTHOR FULL:3 "


def test_bad_input_changes_nothing(tmp_path):
    ledger, plan = build(tmp_path)
    before = snapshot(ledger)
    with pytest.raises(UnlearnError, match="unknown sample id 'full:999'"):
        ledger.delete(ids=["full:0", "full:999"])
    with pytest.raises(UnlearnError, match="no sample"):
        ledger.delete(match="no such text anywhere")
    with pytest.raises(UnlearnError, match="nothing to delete"):
        ledger.delete()
    assert snapshot(ledger) == before


def test_other_version_is_refused(tmp_path):
    ledger, _ = build(tmp_path)
    con = sqlite3.connect(ledger.path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(UnlearnError, match="schema version 99"):
        DeletionLedger.open(tmp_path)
    with pytest.raises(UnlearnError, match="not an S3T run directory"):
        DeletionLedger.open(tmp_path.parent)


@pytest.mark.parametrize("step", ["marked", "truncated", "served"])
def test_failure_inside_deletion_rolls_back(tmp_path, step):
    ledger, plan = build(tmp_path)
    before = snapshot(ledger)

    def hook(name):
        if name == step:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        ledger.delete(ids=[first_slice_sample(plan, 0, 0)], hook=hook)
    assert snapshot(ledger) == before


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_killed_process_leaves_old_state(tmp_path):
    ledger, plan = build(tmp_path)
    before = snapshot(ledger)
    victim = first_slice_sample(plan, 0, 0)
    proc = subprocess.run(_script(f"""
        import os
        from llm_unlearn.s3t.ledger import DeletionLedger
        def hook(step):
            if step == "truncated":
                os._exit(137)  # like SIGKILL: no rollback, no cleanup
        DeletionLedger.open({str(tmp_path)!r}).delete(ids=[{victim!r}], hook=hook)
    """), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert snapshot(ledger) == before
    res = ledger.delete(ids=[victim])  # the ledger is usable afterwards
    assert res.status == "applied" and res.request_id == 1


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_concurrent_deletions_from_two_processes_both_land(tmp_path):
    ledger, plan = build(tmp_path)
    a, b = first_slice_sample(plan, 0, 0), first_slice_sample(plan, 0, 1)  # same shard: they interact
    gate = tmp_path / "go"
    body = """
        import sys, time
        from pathlib import Path
        from llm_unlearn.s3t.ledger import DeletionLedger
        gate = Path({gate!r})
        while not gate.exists():
            time.sleep(0.01)
        def hold(step):
            if step == "marked":
                time.sleep(0.5)  # keep the write transaction open so the other process must wait
        res = DeletionLedger.open({run!r}).delete(ids=[{sid!r}], hook=hold)
        print(res.request_id)
    """
    procs = [subprocess.Popen(_script(body.format(gate=str(gate), run=str(tmp_path), sid=sid)), cwd=ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for sid in (a, b)]
    gate.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert sorted(int(o[0].strip()) for o in outs) == [1, 2]
    assert ledger.deleted_ids() == {a, b}
    reqs = ledger.deletions()
    assert [r["status"] for r in reqs] == ["applied", "retrain_pending"]
    assert ledger.retrain_pending() == [0]  # both first slices of shard 0 are gone: the serialised result
    assert ledger.active_deleted_overlap() == []
    assert reqs[1]["retrain_shards"] == [0]
