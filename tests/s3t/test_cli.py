"""`llm-unlearn s3t`: train, delete, status, retrain, verify and their errors."""

import json

from llm_unlearn.cli import main


def test_cli_train_small_run(tmp_path, synthetic_dir, capsys):
    out = tmp_path / "run"
    rc = main(["s3t", "train", "--data", str(synthetic_dir), "--output", str(out), "--shards", "1", "--slices", "2",
               "--sequences", "2", "--method", "bipartite", "--max-items", "6", "--epochs-per-stage", "1"])
    assert rc == 0
    assert "serving" in capsys.readouterr().out
    from llm_unlearn.s3t.ledger import DeletionLedger

    ledger = DeletionLedger.open(out)
    assert len(ledger.sample_ids()) == 6 and len(ledger.stages()) == 4
    assert json.loads((out / "plan.json").read_text())["method"] == "bipartite"
    assert main(["s3t", "train", "--data", str(synthetic_dir), "--output", str(out)]) == 2  # exists, no --overwrite


def test_cli_delete_status_verify_retrain(run_copy, capsys):
    from llm_unlearn.s3t.ledger import DeletionLedger

    ledger = DeletionLedger.open(run_copy)
    orders = ledger.sequence_orders(0)
    victims = [ledger.sample_ids(shard=0, slices=[orders[b][0]])[0] for b in (0, 1)]
    assert main(["s3t", "delete", str(run_copy), "--ids", victims[0]]) == 0
    assert "request 1: deleted 1 sample" in capsys.readouterr().out
    assert main(["s3t", "delete", str(run_copy), "--ids", victims[0]]) == 0
    assert "already deleted" in capsys.readouterr().out
    text = ledger.samples([victims[1]])[0]["question"]
    assert main(["s3t", "delete", str(run_copy), "--match", text, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert victims[1] in res["sample_ids"] and res["retrain_shards"] == [0]
    assert main(["s3t", "status", str(run_copy), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status[0]["status"] == "needs_retrain" and status[0]["deleted"] >= 2 and status[0]["capacity"] == 0
    assert status[1]["status"] == "serving" and status[1]["prefix"] == 2
    assert main(["s3t", "verify", str(run_copy)]) == 2  # the stages that saw them are still on disk
    assert "run: llm-unlearn s3t purge" in capsys.readouterr().err
    assert main(["s3t", "purge", str(run_copy)]) == 0
    assert "purged:" in capsys.readouterr().out
    assert main(["s3t", "verify", str(run_copy)]) == 0
    assert "exact" in capsys.readouterr().out
    assert main(["s3t", "delete", str(run_copy), "--match", text]) == 0  # text purged: known by its hash
    assert "already deleted" in capsys.readouterr().out
    assert main(["s3t", "retrain", str(run_copy)]) == 0
    assert "retrained shards [0]" in capsys.readouterr().out
    assert main(["s3t", "verify", str(run_copy)]) == 0
    assert main(["s3t", "status", str(run_copy)]) == 0


def test_cli_errors_are_one_line(run_copy, tmp_path, capsys):
    from llm_unlearn.s3t.ledger import DeletionLedger

    before = DeletionLedger.open(run_copy).deletions()
    assert main(["s3t", "delete", str(run_copy), "--ids", "full:100000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown sample id 'full:100000'") and err.count("\n") == 1
    assert DeletionLedger.open(run_copy).deletions() == before
    assert main(["s3t", "status", str(tmp_path)]) == 2
    assert "not an S3T run directory" in capsys.readouterr().err
    manifest = json.loads((run_copy / "run.json").read_text())
    manifest["s3t_format"] = 0
    (run_copy / "run.json").write_text(json.dumps(manifest))
    assert main(["s3t", "status", str(run_copy)]) == 2
    assert "S3T run format 0" in capsys.readouterr().err
