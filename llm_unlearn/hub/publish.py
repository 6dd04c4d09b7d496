"""Publishing a staged run to the Hugging Face Hub (`push_run`) and loading a published S3T
ensemble back (`load_published_s3t`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub import HfApi, constants
from peft import PeftModel

from llm_unlearn.errors import UnlearnError
from llm_unlearn.hub.card import S3T_BUNDLED_BASE, S3T_SERVING_FORMAT, S3T_SERVING_NAME, method_name
from llm_unlearn.hub.staging import stage_upload, validate_repo_id
from llm_unlearn.models import load_model, load_tokenizer
from llm_unlearn.runinfo import read_manifest
from llm_unlearn.s3t.serve import S3TEnsemble
from llm_unlearn.s3t.train import file_sha256


def resolve_token(token: str | None = None) -> str:
    """`token`, else HF_TOKEN, else the token saved by `hf auth login`; error when there is none."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise UnlearnError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)")
    return token


def make_api(token: str):
    """The Hub client (tests replace this function with a recording fake)."""
    if constants.HF_HUB_OFFLINE:
        raise UnlearnError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    return HfApi(token=token)


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
             dry_run: str | Path | None = None, base_model: str | None = None,
             commit_message: str | None = None) -> str:
    """Publish `run_dir` to `repo_id`; with `dry_run`, only write the upload folder there.

    Returns the repo URL, or the dry-run folder path.
    """
    validate_repo_id(repo_id)
    if dry_run is not None:
        return str(stage_upload(run_dir, dry_run, repo_id, base_model=base_model))
    token = resolve_token(token)  # before any work, so a missing login fails fast
    api = make_api(token)
    with tempfile.TemporaryDirectory(prefix="llm-unlearn-push-") as tmp:
        folder = stage_upload(run_dir, Path(tmp) / "upload", repo_id, base_model=base_model)
        method = method_name(read_manifest(run_dir))
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or f"Upload {method} unlearned model (llm-unlearn)")
    return str(url)


def load_published_s3t(folder: str | Path, dtype: str = "float32", base_model: str | None = None):
    """The S3T ensemble of a published folder (`stage_s3t_upload`'s layout): base + one adapter per
    shard in ``s3t_serving.json``, combined as `llm_unlearn.s3t.S3TEnsemble` does. Checks each
    adapter file against its recorded sha256. `base_model` overrides the recorded base."""
    class PublishedS3TEnsemble(S3TEnsemble):
        """`S3TEnsemble` read from a published folder instead of a run directory and its ledger."""

        def __init__(self, root: Path):
            torch.nn.Module.__init__(self)
            serving = json.loads((root / S3T_SERVING_NAME).read_text())
            if serving.get("format") != S3T_SERVING_FORMAT:
                raise UnlearnError(f"{root / S3T_SERVING_NAME}: not an llm-unlearn S3T serving manifest")
            base = base_model or serving["base_model"]
            self.run_dir, self.verify, self.manifest = root, True, serving
            self.aggregate, self.allow_base, self.serve_like = serving.get("aggregate", "mean-logprob"), False, None
            self._base = load_model(str(root / base) if base == S3T_BUNDLED_BASE else base, dtype=dtype)
            self.tokenizer = load_tokenizer(str(root))
            self.peft, self.served = None, {}
            for info in serving["shards"]:
                path = root / info["adapter"]
                if file_sha256(path / "adapter_model.safetensors") != info["sha256"]:
                    raise UnlearnError(f"{path}: adapter differs from the sha256 in {S3T_SERVING_NAME}")
                name = f"shard{info['shard']}"
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
                else:
                    self.peft.load_adapter(str(path), adapter_name=name)
                self.served[info["shard"]] = info
            self.eval()

        def reload(self):
            return self.served

    return PublishedS3TEnsemble(Path(folder))
