"""`llm-unlearn s3t`: train, delete, status, retrain, verify and their errors."""

import json

from llm_unlearn.cli import main


def test_cli_train_small_run(tmp_path, synthetic_dir, capsys):
    out = tmp_path / "run"
    rc = main(["s3t", "train", "--data", str(synthetic_dir), "--output", str(out), "--shards", "1", "--slices", "2",
               "--sequences", "2", "--method", "bipartite", "--max-items", "6", "--epochs-per-stage", "1",
               "--lr-schedule", "linear", "--head", "lora"])
    assert rc == 0
    assert "serving" in capsys.readouterr().out
    from llm_unlearn.s3t.ledger import DeletionLedger

    ledger = DeletionLedger.open(out)
    assert len(ledger.sample_ids()) == 6 and len(ledger.stages()) == 4
    assert json.loads((out / "plan.json").read_text())["method"] == "bipartite"
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["lr_schedule"] == "linear" and config["head"] == "lora"
    assert "lm_head" in json.loads((out / ledger.stages()[0].checkpoint / "adapter_config.json").read_text())[
        "target_modules"]
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
    for action in ("purge", "retrain", "verify"):
        assert main(["s3t", action, str(tmp_path / "missing")]) == 2
        assert "S3T run directory not found" in capsys.readouterr().err
        assert not (tmp_path / "missing").exists()
    manifest = json.loads((run_copy / "run.json").read_text())
    manifest["s3t_format"] = 0
    (run_copy / "run.json").write_text(json.dumps(manifest))
    assert main(["s3t", "status", str(run_copy)]) == 2
    assert "S3T run format 0" in capsys.readouterr().err


def test_cli_train_bad_settings_fail_before_anything_is_written(tmp_path, synthetic_dir, capsys):
    base = ["s3t", "train", "--data", str(synthetic_dir), "--max-items", "6", "--shards", "1", "--slices", "2"]
    for extra, message in ((["--aggregate", "vote"], "--aggregate 'vote' unknown"),
                           (["--exclude-ids", "full:999"], "--exclude-ids: unknown sample id 'full:999'"),
                           (["--exclude-split", "nosuch"], "nosuch")):
        out = tmp_path / "run"
        assert main([*base, "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not out.exists()


def test_cli_train_exclude_split_records_the_reference(tmp_path, synthetic_dir, capsys):
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t.ledger import DeletionLedger

    out = tmp_path / "ref"
    assert main(["s3t", "train", "--data", str(synthetic_dir), "--output", str(out), "--shards", "1", "--slices", "2",
                 "--sequences", "1", "--epochs-per-stage", "0", "--exclude-split", "forget10",
                 "--aggregate", "route"]) == 0
    ledger = DeletionLedger.open(out)
    assert len(ledger.deleted_ids()) == len(load_tofu("forget10", str(synthetic_dir)))
    assert ledger.deleted_texts() == [] and ledger.deletions()[0]["status"] == "excluded"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["aggregate"] == "route" and manifest["config"]["head"] == "lora"  # the tiny model's default
    for rec in ledger.stages():
        assert not set(ledger.stage_sample_ids(rec.stage_id)) & ledger.deleted_ids()
