"""Sharing an unlearned model on the Hugging Face Hub: the upload folder, its model card, the push.

A run directory (written by ``run_unlearning``) holds the adapter (or full weights) as safetensors,
the tokenizer, ``run.json`` (method, hyperparameters, forget split, item count, data hash) and,
after evaluation, an eval summary and a report. `stage_upload` copies exactly what gets published
into one folder and writes a model card (``README.md``) whose YAML metadata follows the Hub's
model-card spec (``base_model``, ``library_name``, ``tags``, ``datasets``, ``model-index`` with
forget quality and model utility). The card describes *what* was forgotten (split name, item
count, sha256 of the content), never the forget data itself; every staged text file is checked
for forget-set text before anything leaves the machine. `push_run` uploads that folder.

An S3T run directory (``run.json`` kind ``s3t``, Chowdhury et al., 2024) is published as its
served ensemble: one PEFT adapter folder per serving shard (``adapters/shard<s>/``, the ledger's
served prefix, checked exact with `verify_run` first), ``plan.json``, ``s3t_serving.json`` (which
prefix each shard serves, checkpoint hashes, deletion counts and content hashes) and a card. The
deletion ledger holds sample text and is never uploaded; `load_published_s3t` loads the folder.

Three modules, each importing only the ones before it: `card` (what a published folder holds and
its model card), `staging` (the upload folder and the leak check), `publish` (the push, and loading
a published S3T ensemble).
"""

from llm_unlearn.hub.card import (
    ADAPTER_MASK_FILE,
    S3T_SERVING_FORMAT,
    S3T_SERVING_NAME,
    RunContents,
    build_model_card,
    build_s3t_model_card,
    collect_run,
    forget_info,
    read_metrics,
    resolve_base_model,
)
from llm_unlearn.hub.publish import load_published_s3t, make_api, push_run, resolve_token
from llm_unlearn.hub.staging import (
    find_leaks,
    forget_strings,
    s3t_serving_manifest,
    stage_s3t_upload,
    stage_upload,
    validate_repo_id,
)

__all__ = [
    "ADAPTER_MASK_FILE", "S3T_SERVING_FORMAT", "S3T_SERVING_NAME", "RunContents", "build_model_card",
    "build_s3t_model_card", "collect_run", "find_leaks", "forget_info", "forget_strings", "load_published_s3t",
    "make_api", "push_run", "read_metrics", "resolve_base_model", "resolve_token", "s3t_serving_manifest",
    "stage_s3t_upload", "stage_upload", "validate_repo_id",
]
