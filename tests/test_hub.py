"""`llm-unlearn push`: the upload folder, its model card, the forget-text check, the token check and
the Hub calls (the Hub client is the one thing replaced by a recording fake)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llm_unlearn.cli import main

REPO_ID = "unlearn-org/tiny-npo-forget10"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, target_dir, synthetic_dir) -> Path:
    """A LoRA unlearning run directory as `run_unlearning` lays it out, plus eval summary and report."""
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import attach_lora, load_model, load_tokenizer
    from llm_unlearn.runinfo import data_hash, write_manifest

    run = tmp_path_factory.mktemp("lora_run")
    model = attach_lora(load_model(str(target_dir)), r=4, alpha=8)
    with torch.no_grad():  # a non-trivial adapter, so loading it back is a real check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(str(run))
    load_tokenizer(str(target_dir)).save_pretrained(str(run))
    forget = load_tofu("forget10", str(synthetic_dir))
    write_manifest(run, method="npo", model=str(target_dir), data=str(synthetic_dir), forget_split="forget10",
                   retain_split="retain90", forget_items=len(forget), forget_data_hash=data_hash(forget),
                   hyperparameters={"beta": 0.1, "learning_rate": 1e-5, "epochs": 5, "lora_r": 4,
                                    "output_dir": str(run)})
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps({"forget_quality": 0.0123, "model_utility": 0.456}))
    (run / "eval" / "report.md").write_text("# Report\n\nForget quality 0.0123, model utility 0.456.\n")
    return run


def _forget_texts(synthetic_dir) -> list[str]:
    from llm_unlearn.data.tofu import load_tofu

    rows = load_tofu("forget10", str(synthetic_dir))
    return [r[k] for r in rows for k in ("question", "answer")]


def _expected_files(run: Path) -> set[str]:
    # every weight/tokenizer file of the run; run.json and eval/ are replaced by the card + summary + report
    names = {p.name for p in run.iterdir() if p.is_file() and p.name != "run.json"}
    return names | {"README.md", "eval_summary.json", "report.md"}


def test_dry_run_folder_card_and_no_forget_text(lora_run, target_dir, synthetic_dir, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from peft import PeftModel

    from llm_unlearn.models import load_model

    out = tmp_path / "upload"
    rc = main(["push", str(lora_run), "--repo-id", REPO_ID, "--dry-run", str(out), "--base-model", "org/tiny-target"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == _expected_files(lora_run)
    assert all(p.is_file() for p in out.iterdir())

    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "org/tiny-target"
    assert meta["library_name"] == "peft"
    assert {"unlearning", "npo"} <= set(meta["tags"])
    # the metadata round-trips through the Hub's own parser, and the model-index holds both metrics
    ModelCardData(**meta)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == REPO_ID.split("/")[1]
    values = {r.metric_type: r.metric_value for r in results}
    assert values == pytest.approx({"forget_quality": 0.0123, "model_utility": 0.456})
    manifest = json.loads((lora_run / "run.json").read_text())
    for fact in ("forget10", str(manifest["forget_items"]), manifest["forget_data_hash"], "beta", "PeftModel"):
        assert fact in card.text
    assert str(lora_run) not in card.text  # local paths stay out of the published card

    # no forget-set question or answer anywhere in the folder (binary files included)
    blob = b"".join(p.read_bytes() for p in out.iterdir()).decode("utf-8", errors="ignore")
    for text in _forget_texts(synthetic_dir):
        assert text not in blob

    # the published adapter names the Hub base model and reproduces the run's adapter exactly
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-target"
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    original = PeftModel.from_pretrained(load_model(str(target_dir)), str(lora_run)).eval()
    staged = PeftModel.from_pretrained(load_model(str(target_dir)), str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(staged(input_ids=ids).logits, original(input_ids=ids).logits)


def test_report_quoting_forget_text_is_left_out(lora_run, synthetic_dir, tmp_path, caplog):
    from llm_unlearn.hub import stage_upload

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    answer = _forget_texts(synthetic_dir)[1]
    (run / "eval" / "report.md").write_text(f"# Report\n\nSample generation on forget: {answer}\n")
    out = stage_upload(run, tmp_path / "upload", REPO_ID)
    assert "report.md" not in {p.name for p in out.iterdir()}
    assert "eval_summary.json" in {p.name for p in out.iterdir()}
    assert "quotes" in caplog.text
    blob = b"".join(p.read_bytes() for p in out.iterdir()).decode("utf-8", errors="ignore")
    assert answer not in blob


def test_missing_eval_says_na(lora_run, tmp_path, caplog):
    from huggingface_hub import ModelCard

    from llm_unlearn.hub import stage_upload

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    shutil.rmtree(run / "eval")
    out = stage_upload(run, tmp_path / "upload", REPO_ID)
    names = {p.name for p in out.iterdir()}
    assert "eval_summary.json" not in names and "report.md" not in names
    card = ModelCard.load(out / "README.md")
    assert "model-index" not in card.data.to_dict()
    assert "| n/a |" in card.text
    assert "no eval summary" in caplog.text
    # without --base-model the local base path is not a Hub id: no base_model, and a warning
    assert "base_model" not in card.data.to_dict()
    assert "--base-model" in caplog.text


def test_dry_run_refuses_bad_repo_id_and_non_empty_folder(lora_run, tmp_path, capsys):
    assert main(["push", str(lora_run), "--repo-id", "no slash", "--dry-run", str(tmp_path / "a")]) == 2
    assert "--repo-id" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["push", str(lora_run), "--repo-id", REPO_ID, "--dry-run", str(busy)]) == 2
    assert "--overwrite" in capsys.readouterr().err


class RecordingHub:
    """Stands in for `huggingface_hub.HfApi`: records the calls and what the folder held."""

    def __init__(self, token: str):
        self.token = token
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", {**kwargs, "files": {p.name for p in folder.iterdir()},
                                             "card": (folder / "README.md").read_text()}))


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    made: list[RecordingHub] = []

    def make_api(token):
        made.append(RecordingHub(token))
        return made[-1]

    monkeypatch.setattr("llm_unlearn.hub.publish.make_api", make_api)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return made


def test_push_without_token_fails_before_any_work(lora_run, fake_hub, monkeypatch, capsys):
    def must_not_stage(*args, **kwargs):
        raise AssertionError("staged an upload without a token")

    monkeypatch.setattr("llm_unlearn.hub.publish.stage_upload", must_not_stage)
    assert main(["push", str(lora_run), "--repo-id", REPO_ID]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and "HF_TOKEN" in err
    assert fake_hub == []


def test_push_with_token_uploads_the_dry_run_folder(lora_run, fake_hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert main(["push", str(lora_run), "--repo-id", REPO_ID, "--private", "--base-model", "org/tiny-target"]) == 0
    assert REPO_ID in capsys.readouterr().out
    (hub,) = fake_hub
    assert hub.token == "hf_test_token"
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    create, upload = hub.calls[0][1], hub.calls[1][1]
    assert create["repo_id"] == REPO_ID and create["private"] is True and create["repo_type"] == "model"
    assert upload["repo_id"] == REPO_ID and upload["repo_type"] == "model"
    dry = tmp_path / "dry"
    assert main(["push", str(lora_run), "--repo-id", REPO_ID, "--dry-run", str(dry), "--base-model", "org/tiny-target"]) == 0
    assert upload["files"] == {p.name for p in dry.iterdir()}
    assert upload["card"] == (dry / "README.md").read_text()


# ----------------------------------------------------------------------------------------------
# S3T runs: the served ensemble is published, the ledger (sample text) is not


@pytest.fixture(scope="module")
def s3t_run(tmp_path_factory, synthetic_dir) -> Path:
    """A tiny S3T run on forget10 (2 shards × 2 slices × 2 orders) after two deletions, with an eval summary."""
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t import S3TConfig, delete_samples, purge, train_s3t

    run = tmp_path_factory.mktemp("s3t_run")
    train_s3t(S3TConfig(model="tiny", data=str(synthetic_dir), split="forget10", output=str(run), shards=2, slices=2,
                        sequences=2, lora_r=4, epochs_per_stage=1, lr=1e-2, batch_size=4, max_length=64))
    delete_samples(run, ids=["forget10:0"])
    delete_samples(run, match=load_tofu("forget10", str(synthetic_dir))[3]["question"])  # the query quotes the data
    purge(run)  # what saw the deleted samples, and their text, is gone before publishing
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps({"metrics": {"forget_quality": None, "model_utility": 0.25}}))
    return run


def test_s3t_dry_run_publishes_served_adapters_without_the_ledger(s3t_run, synthetic_dir, tmp_path):
    from huggingface_hub import ModelCard

    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.hub import S3T_SERVING_NAME, load_published_s3t
    from llm_unlearn.hub.staging import _hash_of_hashes
    from llm_unlearn.s3t import DeletionLedger, load_s3t_model
    from llm_unlearn.s3t.ledger import content_hash

    out = tmp_path / "upload"
    assert main(["push", str(s3t_run), "--repo-id", "org/tiny-s3t", "--dry-run", str(out)]) == 0
    ledger = DeletionLedger.open(s3t_run)
    active = ledger.active_stages()
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    adapters = {f"adapters/shard{r.shard}/{n}" for r in active for n in ("adapter_config.json", "adapter_model.safetensors")}
    assert adapters <= files and {"README.md", "plan.json", S3T_SERVING_NAME, "eval_summary.json"} <= files
    assert not [f for f in files if "ledger" in f or f.endswith((".sqlite", "-wal", "-shm"))]
    assert not [f for f in files if f.startswith("checkpoints")]  # only the served prefixes
    # no sample text anywhere (deleted or not), and not the deletion query either
    rows = load_tofu("forget10", str(synthetic_dir))
    blob = b"".join((out / f).read_bytes() for f in files).decode("utf-8", errors="ignore")
    for row in rows:
        assert row["question"] not in blob and row["answer"] not in blob

    serving = json.loads((out / S3T_SERVING_NAME).read_text())
    assert [(s["shard"], s["prefix"], s["sha256"]) for s in serving["shards"]] == \
        [(r.shard, r.stage, r.sha256) for r in active]
    deleted = sorted(ledger.deleted_ids())
    assert deleted == ["forget10:0", "forget10:3"]
    assert serving["deleted"]["samples"] == 2 and len(serving["deleted"]["requests"]) == 2
    expected = _hash_of_hashes([content_hash(rows[i]["question"], rows[i]["answer"]) for i in (0, 3)])
    assert serving["deleted"]["content_sha256"] == expected

    card = ModelCard.load(out / "README.md")
    assert "s3t" in card.data.to_dict()["tags"]
    for fact in ("S3T ensemble", "| deleted samples | 2 |", expected, "load_published_s3t", "load_s3t_model"):
        assert fact in card.text

    # the published folder serves the same ensemble as the run directory
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        here = load_s3t_model(s3t_run)(input_ids=ids).logits
        published = load_published_s3t(out)(input_ids=ids).logits
    torch.testing.assert_close(published, here)


def test_s3t_push_refuses_an_altered_served_checkpoint(s3t_run, tmp_path, capsys):
    from llm_unlearn.s3t import DeletionLedger

    run = tmp_path / "run"
    shutil.copytree(s3t_run, run)
    weights = run / DeletionLedger.open(run).active_stages()[0].checkpoint / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert main(["push", str(run), "--repo-id", "org/tiny-s3t", "--dry-run", str(tmp_path / "upload")]) == 2
    assert "sha256" in capsys.readouterr().err


def test_card_carries_attack_results(lora_run, synthetic_dir, tmp_path):
    from llm_unlearn.eval.attacks import write_attacks
    from tests.eval.test_report import fake_attack_summary

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    write_attacks(run / "attacks", {"summary": fake_attack_summary(synthetic_dir), "per_item": {}})
    out = tmp_path / "upload"
    assert main(["push", str(run), "--repo-id", REPO_ID, "--dry-run", str(out), "--base-model", "org/t"]) == 0
    card = (out / "README.md").read_text()
    assert "## Robustness to attacks" in card
    line = next(ln for ln in card.splitlines() if ln.startswith("| quantize_nf4 |"))
    assert "0.100 → 0.500 | 0.50 |" in line
    base = tmp_path / "upload_plain"
    assert main(["push", str(lora_run), "--repo-id", REPO_ID, "--dry-run", str(base), "--base-model", "org/t"]) == 0
    assert "Robustness" not in (base / "README.md").read_text()
