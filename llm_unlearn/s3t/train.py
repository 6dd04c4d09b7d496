"""S3T slice-wise training (Chowdhury et al., 2024, Sec. 3.1, Fig. 2): for every shard and slice
order π, stage i trains the LoRA adapters of layer block i on the cumulative slices π₁…π_i while
the adapters of blocks 1…i-1 stay frozen; blocks i+1…L carry no adapter yet. The checkpoint
written after stage k therefore holds exactly blocks 1…k, and serving "prefix k" means loading
that checkpoint — the served weights are the stored file, bit for bit.

Stage k's LoRA-A init and its batch order come from a generator seeded by
(run seed, shard, sequence, stage, generation), so retraining a prefix from the samples the
ledger says it saw reproduces bitwise-identical weights on the same machine (CPU, float32).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from llm_unlearn import __version__
from llm_unlearn.console import TrainerLogFile, format_loss, stage_bar
from llm_unlearn.data.qa import QACollator, encode_qa
from llm_unlearn.data.tofu import is_local_source, load_tofu
from llm_unlearn.errors import DivergenceError, UnlearnError
from llm_unlearn.models import build_tiny, load_model, load_tokenizer, resolve_model_path
from llm_unlearn.runinfo import data_hash, read_manifest, write_manifest
from llm_unlearn.s3t.ledger import DeletionLedger, StageRecord
from llm_unlearn.s3t.plan import S3TPlan, make_plan
from llm_unlearn.threads import apply_thread_policy

logger = logging.getLogger(__name__)

S3T_FORMAT = 1  # run directory layout version (run.json "s3t_format")
PLAN_FILE = "plan.json"


@dataclass
class S3TConfig:
    model: str = field(default="tiny", metadata={"help": "base model: tiny, smollm2, a directory or a Hub id"})
    data: str = field(default="locuslab/TOFU", metadata={"help": "data source: Hub dataset name or local directory"})
    split: str = field(default="full", metadata={"help": "split whose items are trained (and can be deleted)"})
    output: str = field(default="runs/s3t", metadata={"help": "run directory"})
    shards: int = field(default=2, metadata={"help": "m: disjoint data shards (one model each)"})
    slices: int = field(default=4, metadata={"help": "L: slices per shard = layer blocks = stages"})
    sequences: int = field(default=2, metadata={"help": "B: slice orders trained per shard (B <= L)"})
    method: str = field(default="cyclic", metadata={"help": "sequence selection: cyclic or bipartite"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    epochs_per_stage: float = field(default=2.0, metadata={"help": "epochs over π₁…π_i at stage i"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant)"})
    batch_size: int = field(default=8, metadata={"help": "batch size"})
    max_length: int = field(default=256, metadata={"help": "max tokens per QA item"})
    max_items: int | None = field(default=None, metadata={"help": "train on the first N items of the split only"})
    seed: int = field(default=0, metadata={"help": "seed of the plan, LoRA init and batch order"})
    dtype: str = field(default="float32", metadata={"help": "model dtype"})


# -- model structure ---------------------------------------------------------------------------
def decoder_layers_path(model) -> str:
    """Dotted path of the decoder-layer ModuleList (``model.layers`` for Llama/SmolLM2)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            return name
    raise UnlearnError(f"cannot find the decoder layers of {type(model).__name__} (a ModuleList of num_hidden_layers)")


def lora_targets(model, layers: list[int]) -> list[str]:
    """Full names of the Linear modules inside the given decoder layers."""
    path = decoder_layers_path(model)
    out = []
    for name, module in model.named_modules():
        m = re.fullmatch(rf"{re.escape(path)}\.(\d+)\.(.+)", name)
        if m and int(m.group(1)) in layers and isinstance(module, torch.nn.Linear):
            out.append(name)
    return out


def _layer_of(param_name: str, path: str) -> int:
    m = re.search(rf"{re.escape(path)}\.(\d+)\.", param_name)
    if m is None:
        raise UnlearnError(f"LoRA parameter {param_name} is outside the decoder layers")
    return int(m.group(1))


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, names sorted."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_seed(seed: int, shard: int, sequence: int, stage: int, generation: int) -> int:
    digest = hashlib.sha256(f"s3t:{seed}:{shard}:{sequence}:{stage}:{generation}".encode()).hexdigest()
    return int(digest[:8], 16)


# -- one stage --------------------------------------------------------------------------------
def train_stage(base_model, tokenizer, blocks: list[list[int]], stage: int, rows: list[dict], seed: int,
                cfg: S3TConfig, previous: dict[str, torch.Tensor] | None = None,
                on_step: Callable[[int, int, float], None] | None = None):
    """Train block `stage` (1-based) on `rows`; blocks < stage load `previous` and stay frozen.
    `on_step(step, total, loss)` is called after each optimizer step (progress, logs).

    Returns the PEFT model (base is deep-copied, never modified) holding adapters for blocks 1..stage.
    """
    layers = [li for block in blocks[:stage] for li in block]
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=lora_targets(base_model, layers), task_type="CAUSAL_LM")
    model = get_peft_model(copy.deepcopy(base_model), config)
    path = decoder_layers_path(base_model)
    if previous is not None:
        result = set_peft_model_state_dict(model, previous)
        if getattr(result, "unexpected_keys", None):
            raise UnlearnError(f"stage {stage}: previous checkpoint has unexpected keys {result.unexpected_keys[:3]}")
    gen = torch.Generator().manual_seed(seed)
    trainable = []
    for name, param in sorted(model.named_parameters()):
        in_block = "lora_" in name and _layer_of(name, path) in blocks[stage - 1]
        param.requires_grad_(in_block)
        if in_block:
            with torch.no_grad():
                if "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(param, a=math.sqrt(5), generator=gen)
                else:
                    param.zero_()
            trainable.append(param)
    if not trainable:
        raise UnlearnError(f"stage {stage}: no LoRA parameters in layer block {blocks[stage - 1]}")
    features = [encode_qa(tokenizer, r["question"], r["answer"], cfg.max_length) for r in rows]
    for f in features:
        f.pop("truncated")
    collate = QACollator(tokenizer)
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(features) / cfg.batch_size) if features else 0
    total = int(round(cfg.epochs_per_stage * steps_per_epoch))
    model.train()
    step = 0
    while step < total:
        order = torch.randperm(len(features), generator=gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            batch = collate([features[i] for i in order[start:start + cfg.batch_size]])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise DivergenceError(f"stage {stage}: non-finite loss at step {step}; lower --lr")
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, total, loss.item())
    model.eval()
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


# -- a whole sequence -------------------------------------------------------------------------
def train_sequence(run_dir: Path, ledger: DeletionLedger, base_model, tokenizer, plan: S3TPlan, cfg: S3TConfig,
                   shard: int, sequence: int, generation: int, progress=None) -> list[StageRecord]:
    """Train stages 1..L of one slice order, writing and recording a checkpoint after each."""
    order = ledger.sequence_orders(shard)[sequence]
    previous = None
    records = []
    log_file = TrainerLogFile(run_dir, "s3t")
    for stage in range(1, len(order) + 1):
        slices = order[:stage]
        ids = ledger.sample_ids(shard=shard, slices=slices)  # undeleted samples, ledger order
        rows = ledger.samples(ids)
        seed = stage_seed(cfg.seed, shard, sequence, stage, generation)
        losses: list[float] = []

        def on_step(step: int, total: int, loss: float, stage=stage, losses=losses) -> None:
            losses.append(loss)
            if progress is not None:
                progress.set_postfix_str(f"shard {shard} seq {sequence} stage {stage}: step {step}/{total}, "
                                         f"loss {format_loss(loss)}", refresh=False)
                progress.update(0)  # redraws at most every `mininterval`

        model = train_stage(base_model, tokenizer, plan.blocks, stage, rows, seed, cfg, previous, on_step=on_step)
        log_file.write({"shard": shard, "sequence": sequence, "stage_index": stage, "generation": generation,
                        "samples": len(rows), "steps": len(losses),
                        "train_loss": sum(losses) / len(losses) if losses else None,
                        "last_loss": losses[-1] if losses else None})
        rel = f"checkpoints/shard{shard}/gen{generation}/seq{sequence}/stage{stage}"
        ckpt = run_dir / rel
        if ckpt.exists():
            shutil.rmtree(ckpt)
        model.save_pretrained(str(ckpt), safe_serialization=True)
        weights_file = ckpt / "adapter_model.safetensors"
        previous = load_file(str(weights_file))
        stage_id = ledger.record_stage(shard, sequence, stage, generation, slices, rel, file_sha256(weights_file),
                                       weights_sha256(previous), ids, seed)
        records.append(ledger.stage(stage_id))
        del model
        if progress is not None:
            progress.update(1)
    return records


# -- a run ------------------------------------------------------------------------------------
def _load_rows(cfg: S3TConfig) -> list[dict]:
    ds = load_tofu(cfg.split, cfg.data)
    n = len(ds) if cfg.max_items is None else min(len(ds), cfg.max_items)
    return [{"sample_id": f"{cfg.split}:{i}", "question": ds[i]["question"], "answer": ds[i]["answer"]}
            for i in range(n)]


def _base_model(cfg: S3TConfig, run_dir: Path):
    """Build or load the base; a tiny base is saved into the run directory (it is random)."""
    if cfg.model == "tiny":
        if not is_local_source(cfg.data):
            raise UnlearnError("the tiny model needs a local --data directory (its tokenizer is trained on it)")
        model, tokenizer = build_tiny(cfg.data, seed=cfg.seed)
        model.save_pretrained(str(run_dir / "base"), safe_serialization=True)
        tokenizer.save_pretrained(str(run_dir / "base"))
        return model, tokenizer, "base"
    model = load_model(cfg.model, dtype=cfg.dtype)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    return model, tokenizer, str(Path(resolve_model_path(cfg.model)).resolve()
                                 if Path(resolve_model_path(cfg.model)).exists() else cfg.model)


def train_s3t(cfg: S3TConfig) -> Path:
    """Plan, train every shard × sequence × stage, fill the ledger, publish. `cfg.output` must be prepared."""
    run_dir = Path(cfg.output)
    rows = _load_rows(cfg)
    torch.manual_seed(cfg.seed)
    base, tokenizer, base_ref = _base_model(cfg, run_dir)
    threads = apply_thread_policy(base)
    plan = make_plan([r["sample_id"] for r in rows], cfg.shards, cfg.slices, cfg.sequences,
                     base.config.num_hidden_layers, cfg.method, cfg.seed)
    plan.save(run_dir / PLAN_FILE)
    where = plan.slice_of()
    ledger = DeletionLedger.create(
        run_dir, [{**r, "shard": where[r["sample_id"]][0], "slice": where[r["sample_id"]][1]} for r in rows],
        plan.sequences, {"package_version": __version__, "s3t_format": str(S3T_FORMAT)},
    )
    write_manifest(run_dir, kind="s3t", s3t_format=S3T_FORMAT, base_model=base_ref, model=cfg.model,
                   data=str(cfg.data), split=cfg.split, items=len(rows), data_hash=data_hash(rows),
                   config=asdict(cfg), blocks=plan.blocks, threads=threads)
    total = cfg.shards * cfg.sequences * cfg.slices
    with stage_bar("s3t train", total=total, unit="stage") as bar:
        for shard in range(cfg.shards):
            for sequence in range(cfg.sequences):
                train_sequence(run_dir, ledger, base, tokenizer, plan, cfg, shard, sequence, 0, bar)
            ledger.publish(shard)
    return run_dir


def load_run(run_dir: str | Path) -> tuple[DeletionLedger, S3TPlan, S3TConfig, dict]:
    """Open a run directory, refusing one written by another S3T format version."""
    run_dir = Path(run_dir)
    ledger = DeletionLedger.open(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("kind") != "s3t":
        raise UnlearnError(f"{run_dir}/run.json: not an S3T run (kind {manifest.get('kind')!r})")
    if manifest.get("s3t_format") != S3T_FORMAT:
        raise UnlearnError(
            f"{run_dir}: S3T run format {manifest.get('s3t_format')} (llm-unlearn "
            f"{manifest.get('versions', {}).get('llm-unlearn', '?')}); this llm-unlearn reads format {S3T_FORMAT}"
        )
    cfg = S3TConfig(**manifest["config"])
    return ledger, S3TPlan.load(run_dir / PLAN_FILE), cfg, manifest


def base_model_path(run_dir: str | Path, manifest: dict) -> str:
    ref = manifest["base_model"]
    return str(Path(run_dir) / ref) if ref == "base" else ref


def tokenizer_path(run_dir: str | Path, manifest: dict) -> str:
    return str(Path(run_dir) / ("base" if manifest["base_model"] == "base" else "tokenizer"))


def load_base(run_dir: str | Path, manifest: dict, dtype: str = "float32"):
    return (load_model(base_model_path(run_dir, manifest), dtype=dtype),
            load_tokenizer(tokenizer_path(run_dir, manifest)))


def retrain_shards(run_dir: str | Path, shards: list[int] | None = None) -> list[int]:
    """Retrain (all sequences of) the shards marked ``needs_retrain``, without their deleted samples."""
    run_dir = Path(run_dir)
    ledger, plan, cfg, manifest = load_run(run_dir)
    pending = ledger.retrain_pending()
    todo = pending if shards is None else [s for s in shards if s in pending]
    if shards is not None and set(shards) - set(pending):
        raise UnlearnError(f"shards {sorted(set(shards) - set(pending))} do not need retraining (pending: {pending})")
    if not todo:
        return []
    base, tokenizer = load_base(run_dir, manifest, cfg.dtype)
    with stage_bar("s3t retrain", total=len(todo) * cfg.sequences * cfg.slices, unit="stage") as bar:
        for shard in todo:
            generation = ledger.generation(shard) + 1
            ledger.start_generation(shard, generation)
            for sequence in range(cfg.sequences):
                train_sequence(run_dir, ledger, base, tokenizer, plan, cfg, shard, sequence, generation, bar)
            ledger.publish(shard)
    return todo


def reproduce_stage(run_dir: str | Path, stage_id: int, base_model=None, tokenizer=None) -> dict[str, torch.Tensor]:
    """Retrain a recorded stage's whole prefix from scratch, from the samples and seeds the ledger
    recorded for stages 1..k; returns the adapter weights (compare with the checkpoint's)."""
    run_dir = Path(run_dir)
    ledger, plan, cfg, manifest = load_run(run_dir)
    target = ledger.stage(stage_id)
    if base_model is None:
        base_model, tokenizer = load_base(run_dir, manifest, cfg.dtype)
    by_stage = {r.stage: r for r in ledger.stages(target.shard)
                if r.sequence == target.sequence and r.generation == target.generation}
    previous = None
    for stage in range(1, target.stage + 1):
        rec = by_stage[stage]
        rows = ledger.samples(ledger.stage_sample_ids(rec.stage_id))
        model = train_stage(base_model, tokenizer, plan.blocks, stage, rows, rec.seed, cfg, previous)
        previous = adapter_state(model)
        del model
    return previous

