"""S3T slice-wise training (Chowdhury et al., 2024, Sec. 3.1, Fig. 2): for every shard and slice
order π, stage i trains the LoRA adapters of layer block i on the cumulative slices π₁…π_i while
the adapters of blocks 1…i-1 stay frozen; blocks i+1…L carry no adapter yet. The checkpoint
written after stage k therefore holds exactly blocks 1…k, and serving "prefix k" means loading
that checkpoint — the served weights are the stored file, bit for bit. With ``head="lora"`` every
stage also trains its own rank-r components of a LoRA of the output head (``HEADS``).

Stage k's LoRA-A init and its batch order come from a generator seeded by
(run seed, shard, sequence, stage), so retraining a prefix from the samples the ledger says it
saw reproduces bitwise-identical weights on the same machine (CPU, float32). The seed does not
depend on the retrain generation: a shard retrained without its deleted samples is, bit for bit,
the shard of a run trained without them from the start (``exclude``: the exact-retrain reference
that TOFU's forget quality compares with).

Nothing deletable may reach a part that is never retrained: the `tiny` model's tokenizer is
trained only on the source's utility splits (real authors, world facts), never on the split
S3T trains on, and a base directory that was finetuned on the same data is refused.

Crash safety: a stage's checkpoint files and every directory above them up to the run directory
are fsynced before the ledger records the checkpoint's hash, so a recorded stage is on disk.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import logging
import math
import os
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
from llm_unlearn.data.qa import QACollator, encode_qa, template_settings
from llm_unlearn.data.tofu import available_splits, is_local_source, load_tofu
from llm_unlearn.errors import DivergenceError, UnlearnError
from llm_unlearn.models import (
    build_tiny_model,
    load_model,
    load_tokenizer,
    resolve_model_path,
    texts_for_tokenizer,
    train_tiny_tokenizer,
)
from llm_unlearn.runinfo import data_hash, read_manifest, write_manifest
from llm_unlearn.s3t.ledger import DeletionLedger, StageRecord
from llm_unlearn.s3t.plan import S3TPlan, make_plan
from llm_unlearn.threads import apply_thread_policy

logger = logging.getLogger(__name__)

S3T_FORMAT = 2  # run directory layout version (run.json "s3t_format"); 2: ledger schema 2, tokenizer provenance
PLAN_FILE = "plan.json"
LOCK_FILE = "s3t.lock"
CHECKPOINTS_DIR = "checkpoints"
# Splits the tiny tokenizer of an S3T run is trained on: utility sets, never trained by S3T, never deleted.
TOKENIZER_SPLITS = ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")
AGGREGATES = ("mean-logprob", "mixture", "posterior", "route")
# What a stage trains. blocks: the LoRA of layer block i (the paper's layer-wise training); stacked:
# its own rank-r slice of one rank r·L LoRA on every layer (see train_stage).
LAYOUTS = ("blocks", "stacked")
# The output head. none: frozen (the paper: LoRA of the decoder layers only); lora: a LoRA of the
# output head too, of rank r·L, whose rank-r components (stage-1)·r … stage·r are stage i's (as the
# stacked layout's), so a stage's head delta depends only on slices 1..i and a deletion drops it as
# exactly. A small model's frozen head caps what its adapters can learn (benchmarks/s3t_adapter_ablation.py).
HEADS = ("none", "lora")


def default_head(model: str) -> str:
    """The head a run trains unless told: lora for the random tiny model, none for a pretrained one."""
    return "lora" if model == "tiny" else "none"


# The learning rate within a stage. constant: `lr` at every step; linear: from `lr` down to 0 over
# the stage's steps (the HF Trainer's default decay, without warmup). The schedule depends only on
# the stage's step count, a function of its sample count, so a retrain reproduces it exactly.
LR_SCHEDULES = ("constant", "linear")
DEFAULT_AGGREGATE = "mixture"  # best model utility in benchmarks/s3t_deletion.py (demo data, 3 seeds)


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
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (peak, with lr_schedule linear)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "learning rate within each stage: constant or linear (decays to 0 over the stage's steps)"})
    batch_size: int = field(default=8, metadata={"help": "batch size"})
    max_length: int = field(default=256, metadata={"help": "max tokens per QA item"})
    max_items: int | None = field(default=None, metadata={"help": "train on the first N items of the split only"})
    seed: int = field(default=0, metadata={"help": "seed of the plan, LoRA init and batch order"})
    dtype: str = field(default="float32", metadata={"help": "model dtype"})
    with_utility: bool = field(default=False, metadata={
        "help": "every stage also trains on the source's utility sets (real authors, world facts): never deleted, "
                "the same rows in every stage and in the exact-retrain reference (as a tiny single model is finetuned)"})
    prompt_loss: bool = field(default=False, metadata={
        "help": "train on the question tokens too, so each shard's likelihood of a prompt tells whether it saw "
                "that entity (what the posterior and route serving modes weigh)"})
    aggregate: str = field(default=DEFAULT_AGGREGATE, metadata={
        "help": "how the served shards are combined: mean-logprob, mixture, posterior or route (llm_unlearn.s3t.serve)"})
    layout: str = field(default="blocks", metadata={
        "help": "what stage i trains: blocks (the paper: the LoRA of layer block i) or stacked (its own rank-r slice of "
                "one rank r*L LoRA on every layer, so the facts of every slice reach the whole depth; a stage's "
                "parameters still depend only on slices 1..i, so deletion is as exact)"})
    head: str = field(default="none", metadata={
        "help": "output head: none (frozen, the paper) or lora (a LoRA of the head too, each stage its own rank-r "
                "components, so deletion is as exact)"})
    exclude_ids: list[str] = field(default_factory=list, metadata={
        "help": "sample ids left out from the start (exact-retrain reference: same plan and seeds)"})
    exclude_split: str | None = field(default=None, metadata={
        "help": "leave out the samples whose question and answer are in this split (e.g. forget10)"})

    def __post_init__(self):
        if self.aggregate not in AGGREGATES:
            raise UnlearnError(f"--aggregate {self.aggregate!r} unknown (expected one of {', '.join(AGGREGATES)})")
        if self.layout not in LAYOUTS:
            raise UnlearnError(f"--layout {self.layout!r} unknown (expected one of {', '.join(LAYOUTS)})")
        if self.head not in HEADS:
            raise UnlearnError(f"--head {self.head!r} unknown (expected one of {', '.join(HEADS)})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UnlearnError(f"--lr-schedule {self.lr_schedule!r} unknown (expected one of {', '.join(LR_SCHEDULES)})")


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


def output_head_name(model) -> str:
    """Module name of the model's output head (``lm_head`` for Llama/SmolLM2)."""
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is head and isinstance(module, torch.nn.Linear):
            return name
    raise UnlearnError(f"cannot find the output head of {type(model).__name__} (a Linear returned by get_output_embeddings)")


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


def stage_seed(seed: int, shard: int, sequence: int, stage: int) -> int:
    """Seed of one stage; the same in every retrain generation (see module docstring)."""
    digest = hashlib.sha256(f"s3t:{seed}:{shard}:{sequence}:{stage}".encode()).hexdigest()
    return int(digest[:8], 16)


def fsync_tree(path: Path, up_to: Path) -> None:
    """fsync every file under `path`, `path` itself and each directory above it up to `up_to`."""
    for sub in sorted(path.rglob("*"), reverse=True):
        if sub.is_file():
            fd = os.open(sub, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    up_to = up_to.resolve()
    d = path.resolve()
    while True:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if d == up_to or d.parent == d:
            break
        d = d.parent


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Exclusive lock of a run's checkpoints (retrain and purge): one writer of checkpoint files at a time."""
    with open(Path(run_dir) / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnlearnError(f"{run_dir}: another s3t retrain or purge is running on this run") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- one stage --------------------------------------------------------------------------------
def train_stage(base_model, tokenizer, blocks: list[list[int]], stage: int, rows: list[dict], seed: int,
                cfg: S3TConfig, previous: dict[str, torch.Tensor] | None = None,
                on_step: Callable[[int, int, float], None] | None = None):
    """Train stage `stage` (1-based) on `rows`; what earlier stages trained loads from `previous`
    and stays frozen. `on_step(step, total, loss)` is called after each optimizer step. With
    `cfg.lr_schedule` linear, step k (0-based) of `total` uses lr·(1 - k/total).

    Layout `blocks`: the adapters of layer block `stage`; the model holds adapters for blocks
    1..stage. Layout `stacked`: one LoRA of rank r·L on every layer, whose rank components
    (rows of A, columns of B) (stage-1)·r … stage·r are this stage's; later stages' components are
    zero (they add nothing), earlier ones are loaded. Gradients outside this stage's components are
    masked to zero, so AdamW (no weight decay) leaves them bit for bit as loaded. With alpha scaled
    by L too, each stage's component has the scale of a rank-r adapter in the blocks layout.

    With `cfg.head` lora, the output head carries a LoRA of rank r·L in either layout, split into
    stages' components as the stacked layout's.

    Returns the PEFT model (base is deep-copied, never modified).
    """
    stacked = cfg.layout == "stacked"
    n_stages = len(blocks)
    layers = sorted(li for block in blocks for li in block) if stacked else \
        [li for block in blocks[:stage] for li in block]
    r, alpha = (cfg.lora_r * n_stages, cfg.lora_alpha * n_stages) if stacked else (cfg.lora_r, cfg.lora_alpha)
    targets = lora_targets(base_model, layers)
    head = output_head_name(base_model) if cfg.head == "lora" else None
    if head is not None:
        targets.append(head)
    # the head is split into stages' components in either layout
    patterns = {re.escape(head): n_stages} if head is not None and not stacked else {}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM",
                        rank_pattern={k: cfg.lora_r * n for k, n in patterns.items()},
                        alpha_pattern={k: cfg.lora_alpha * n for k, n in patterns.items()})
    model = get_peft_model(copy.deepcopy(base_model), config)
    path = decoder_layers_path(base_model)

    def split(name: str) -> bool:  # a parameter whose rank components belong to the stages
        return "lora_" in name and (stacked or (head is not None and f"{head}.lora_" in name))

    with torch.no_grad():  # nothing from PEFT's random init survives in them: unloaded components are zero
        for name, param in model.named_parameters():
            if split(name):
                param.zero_()
    if previous is not None:
        result = set_peft_model_state_dict(model, previous)
        if getattr(result, "unexpected_keys", None):
            raise UnlearnError(f"stage {stage}: previous checkpoint has unexpected keys {result.unexpected_keys[:3]}")
    gen = torch.Generator().manual_seed(seed)
    trainable = []
    lo, hi = (stage - 1) * cfg.lora_r, stage * cfg.lora_r
    for name, param in sorted(model.named_parameters()):
        components = split(name)
        in_stage = "lora_" in name and (components or _layer_of(name, path) in blocks[stage - 1])
        param.requires_grad_(in_stage)
        if not in_stage:
            continue
        with torch.no_grad():
            # this stage's part: all of a blocks-layout parameter; its rank components when split
            own = ((slice(lo, hi),) if "lora_A" in name else (slice(None), slice(lo, hi))) if components else (...,)
            if "lora_A" in name:
                torch.nn.init.kaiming_uniform_(param[own], a=math.sqrt(5), generator=gen)
            else:
                param[own].zero_()
            if components:
                mask = torch.zeros_like(param)
                mask[own] = 1.0
                param.register_hook(lambda grad, mask=mask: grad * mask)
        trainable.append(param)
    if not trainable:
        raise UnlearnError(f"stage {stage}: no LoRA parameters in layer block {blocks[stage - 1]}")
    features = [encode_qa(tokenizer, r["question"], r["answer"], cfg.max_length) for r in rows]
    for f in features:
        f.pop("truncated")
        if cfg.prompt_loss:
            f["labels"] = list(f["input_ids"])
    collate = QACollator(tokenizer)
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(features) / cfg.batch_size) if features else 0
    total = int(round(cfg.epochs_per_stage * steps_per_epoch))
    # the stage's step count depends only on its rows (slices 1..i, undeleted, plus the fixed rows):
    # what a retrain after a deletion and the exact-retrain reference both count the same way
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda k: 1.0 - k / total) \
        if cfg.lr_schedule == "linear" and total else None
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
            if sched is not None:
                sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, total, loss.item())
    model.eval()
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}


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
        rows = ledger.samples(ids) + fixed_rows(cfg)
        seed = stage_seed(cfg.seed, shard, sequence, stage)
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
        rel = f"{CHECKPOINTS_DIR}/shard{shard}/gen{generation}/seq{sequence}/stage{stage}"
        ckpt = run_dir / rel
        if ckpt.exists():
            shutil.rmtree(ckpt)
        # the adapter only: PEFT would also store the base head it wraps (an "embedding layer" to it)
        model.save_pretrained(str(ckpt), safe_serialization=True, save_embedding_layers=False)
        fsync_tree(ckpt, run_dir)  # on disk before the ledger vouches for it
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


UTILITY_TRAIN_SPLITS = ("real_authors_perturbed", "world_facts_perturbed")  # what `finetune --with-utility` adds


def fixed_rows(cfg: S3TConfig) -> list[dict]:
    """Rows every stage trains on besides its slices (`cfg.with_utility`: the utility sets; they
    are never deleted, so they do not enter the ledger), in a fixed order."""
    if not cfg.with_utility:
        return []
    return [{"question": r["question"], "answer": r["answer"]}
            for name in UTILITY_TRAIN_SPLITS for r in load_tofu(name, cfg.data)]


def excluded_ids(cfg: S3TConfig, rows: list[dict]) -> list[str]:
    """Ids of `rows` left out from the start: `cfg.exclude_ids` plus the rows whose (question,
    answer) is in `cfg.exclude_split`. Unknown ids and a split that matches nothing are errors."""
    known = {r["sample_id"] for r in rows}
    unknown = [i for i in cfg.exclude_ids if i not in known]
    if unknown:
        raise UnlearnError(f"--exclude-ids: unknown sample id '{unknown[0]}' (ids look like {rows[0]['sample_id']})")
    out = list(dict.fromkeys(cfg.exclude_ids))
    if cfg.exclude_split:
        wanted = {(r["question"], r["answer"]) for r in load_tofu(cfg.exclude_split, cfg.data)}
        hits = [r["sample_id"] for r in rows if (r["question"], r["answer"]) in wanted]
        if not hits:
            raise UnlearnError(f"--exclude-split {cfg.exclude_split}: none of its items is in the trained split "
                               f"{cfg.split} (of {cfg.data})")
        out += [h for h in hits if h not in out]
    if len(out) == len(rows):
        raise UnlearnError("every sample is excluded: nothing left to train")
    return out


def tokenizer_texts(cfg: S3TConfig) -> tuple[list[str], list[str]]:
    """Text the tiny tokenizer of an S3T run is trained on, and the splits it came from: the
    utility splits only (`TOKENIZER_SPLITS`), which S3T never trains on and never deletes. A
    tokenizer trained on deletable text would keep its merges after the text is deleted."""
    if not is_local_source(cfg.data):
        raise UnlearnError("the tiny model needs a local --data directory (its tokenizer is trained on its utility sets)")
    if cfg.split in TOKENIZER_SPLITS:
        raise UnlearnError(f"--split {cfg.split}: the tiny model's tokenizer is trained on that split, so its samples "
                           "could never be deleted exactly; train S3T on another split or use a pretrained --model")
    splits = [name for name in TOKENIZER_SPLITS if name in available_splits(cfg.data)]
    if not splits:
        raise UnlearnError(
            f"--model tiny: {cfg.data} has none of the splits {', '.join(TOKENIZER_SPLITS)}. S3T trains the tiny "
            "model's tokenizer only on text that can never be deleted; training it on the deletable split would "
            "leave the deleted samples in its vocabulary. Add those utility splits or use a pretrained --model")
    return texts_for_tokenizer(cfg.data, splits), splits


def check_base_independent(model: str, data: str) -> None:
    """Refuse a base directory finetuned on the same data source: its weights (and a tiny model's
    tokenizer) may hold samples that S3T is asked to delete, and S3T never retrains the base."""
    path = Path(model)
    if not path.is_dir():
        return
    manifest = read_manifest(path)
    source = manifest.get("data")
    if not source:
        return
    same = (Path(source).resolve() == Path(data).resolve()) if Path(source).exists() and Path(data).exists() \
        else str(source) == str(data)
    if same:
        raise UnlearnError(
            f"--model {model} was trained on {source} (split {manifest.get('split')}), the data S3T trains on: "
            "its weights and tokenizer may hold samples you later delete, and S3T never retrains the base. "
            "Use a base that never saw this data")


def _base_model(cfg: S3TConfig, run_dir: Path):
    """Build or load the base; a tiny base is saved into the run directory (it is random).
    Returns (model, tokenizer, base reference, splits the tokenizer was trained on or None)."""
    if cfg.model == "tiny":
        texts, splits = tokenizer_texts(cfg)
        tokenizer = train_tiny_tokenizer(texts)
        model = build_tiny_model(tokenizer, seed=cfg.seed)
        model.save_pretrained(str(run_dir / "base"), safe_serialization=True)
        tokenizer.save_pretrained(str(run_dir / "base"))
        return model, tokenizer, "base", splits
    check_base_independent(cfg.model, cfg.data)
    model = load_model(cfg.model, dtype=cfg.dtype)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    resolved = Path(resolve_model_path(cfg.model))
    if not resolved.exists():
        return model, tokenizer, cfg.model, None
    resolved = resolved.resolve()
    # a base beside the run (the demo's pretrained tiny base) is recorded relative to it, so the
    # two can be moved together (an output written to a staging directory, then renamed)
    if resolved.is_relative_to(run_dir.resolve().parent):
        return model, tokenizer, os.path.relpath(resolved, run_dir.resolve()), None
    return model, tokenizer, str(resolved), None


def validate_config(cfg: S3TConfig) -> tuple[list[dict], list[str]]:
    """Every check that needs no model, before anything is written: the split, the excluded
    samples, the tiny tokenizer's non-deletable text, the base's independence. Returns the rows
    and the excluded ids."""
    rows = _load_rows(cfg)
    excluded = excluded_ids(cfg, rows)
    fixed_rows(cfg)  # the utility sets exist, when asked for
    if cfg.split in UTILITY_TRAIN_SPLITS and cfg.with_utility:
        raise UnlearnError(f"--with-utility: the split {cfg.split} would be trained twice, once as deletable samples")
    if cfg.model == "tiny":
        tokenizer_texts(cfg)
    else:
        check_base_independent(cfg.model, cfg.data)
    return rows, excluded


def train_s3t(cfg: S3TConfig) -> Path:
    """Plan, train every shard × sequence × stage, fill the ledger, publish. `cfg.output` must be prepared.

    With `cfg.exclude_ids` / `cfg.exclude_split` the plan is the one of all samples (same shards,
    slices and seeds) and the excluded samples are deleted before any stage trains: the run a
    deletion of those samples must equal (`compare_with_reference`)."""
    run_dir = Path(cfg.output)
    rows, excluded = validate_config(cfg)
    torch.manual_seed(cfg.seed)
    base, tokenizer, base_ref, tokenizer_splits = _base_model(cfg, run_dir)
    threads = apply_thread_policy(base)
    plan = make_plan([r["sample_id"] for r in rows], cfg.shards, cfg.slices, cfg.sequences,
                     base.config.num_hidden_layers, cfg.method, cfg.seed)
    plan.save(run_dir / PLAN_FILE)
    where = plan.slice_of()
    ledger = DeletionLedger.create(
        run_dir, [{**r, "shard": where[r["sample_id"]][0], "slice": where[r["sample_id"]][1]} for r in rows],
        plan.sequences, {"package_version": __version__, "s3t_format": str(S3T_FORMAT)}, excluded=excluded,
    )
    write_manifest(run_dir, kind="s3t", s3t_format=S3T_FORMAT, base_model=base_ref, model=cfg.model,
                   data=str(cfg.data), split=cfg.split, items=len(rows), data_hash=data_hash(rows),
                   config=asdict(cfg), blocks=plan.blocks, aggregate=cfg.aggregate, excluded=len(excluded), threads=threads,
                   tokenizer_trained_on=tokenizer_splits if tokenizer_splits is not None else f"{cfg.model} (pretrained)",
                   protocol=template_settings(tokenizer, "native"))
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
    if ref == "base" or ref.startswith(".."):
        return str((Path(run_dir) / ref).resolve())
    return ref


def tokenizer_path(run_dir: str | Path, manifest: dict) -> str:
    return str(Path(run_dir) / ("base" if manifest["base_model"] == "base" else "tokenizer"))


def load_base(run_dir: str | Path, manifest: dict, dtype: str = "float32"):
    return (load_model(base_model_path(run_dir, manifest), dtype=dtype),
            load_tokenizer(tokenizer_path(run_dir, manifest)))


def retrain_shards(run_dir: str | Path, shards: list[int] | None = None) -> list[int]:
    """Retrain (all sequences of) the shards marked ``needs_retrain``, without their deleted samples,
    with the seeds of the first training (so the result is the run trained without them). The
    caller holds `run_lock`; `llm_unlearn.s3t.service.retrain` also purges afterwards."""
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
        rows = ledger.samples(ledger.stage_sample_ids(rec.stage_id)) + fixed_rows(cfg)
        model = train_stage(base_model, tokenizer, plan.blocks, stage, rows, rec.seed, cfg, previous)
        previous = adapter_state(model)
        del model
    return previous

