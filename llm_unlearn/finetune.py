"""Finetuning the target (on `full`) and retain (on `retainXX`) models with `trl.SFTTrainer`,
answer-only loss (labels -100 on the prompt), the QA format of `llm_unlearn.data.qa` — the
finetuning stage of TOFU (Maini et al., 2024, Sec. 3).

The `tiny` model is built in memory (tokenizer trained on the data); with ``--lora`` or
``--load-in-4bit`` its random base is saved as ``<output>/base`` so the adapter can be reloaded."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from trl import SFTConfig, SFTTrainer

from llm_unlearn.data.corpus import chunk_corpus, load_corpus
from llm_unlearn.data.qa import QACollator, template_settings, tokenize_qa_dataset
from llm_unlearn.data.tofu import load_tofu, qa_per_author
from llm_unlearn.errors import UnlearnError
from llm_unlearn.interrupt import SaveOnInterrupt, last_checkpoint
from llm_unlearn.models import attach_lora, build_tiny, load_model, load_tokenizer
from llm_unlearn.perf import own_trainable_weights
from llm_unlearn.runinfo import data_hash, write_manifest
from llm_unlearn.threads import apply_thread_policy
from llm_unlearn.trainers.callbacks import attach_console

logger = logging.getLogger(__name__)
UTILITY_SPLITS = ("real_authors_perturbed", "world_facts_perturbed")


@dataclass
class FinetuneConfig:
    model: str = field(default="tiny", metadata={"help": "model spec: tiny, smollm2, a directory, a Hub id or a .gguf file"})
    data: str = field(default="locuslab/TOFU", metadata={"help": "data source: Hub dataset name or local directory"})
    split: str = field(default="full", metadata={"help": "split to finetune on (full = target, retainXX = retain model)"})
    output: str = field(default="runs/target", metadata={"help": "output directory"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of full weights"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    epochs: float = field(default=5.0, metadata={"help": "training epochs"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=8, metadata={"help": "per-device batch size"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=256, metadata={"help": "max tokens per QA item (longer ones are truncated and counted)"})
    max_authors: int | None = field(default=None, metadata={"help": "use only the first N authors' items"})
    qa_per_author: int | None = field(default=None, metadata={"help": "items per author (for --max-authors); default: the source's meta.json, else 20 (TOFU)"})
    with_utility: bool | None = field(default=None, metadata={"help": "also train on the utility sets (default: only for tiny)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit base model"})
    dtype: str = field(default="float32", metadata={"help": "model dtype"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward (less memory, ~1/3 more compute; trl's SFTConfig turns it on by default, we do not)"})
    report_to: str = field(default="none", metadata={"help": "Trainer report_to"})
    protocol: str = field(default="native", metadata={"help": "prompt and tokenisation protocol: native, open-unlearning or tofu-legacy (llm_unlearn.data.protocol)"})
    stage: str | None = field(default=None, metadata={"help": "name of the progress bar (default 'finetune SPLIT')"})
    threads: str = field(default="auto", metadata={"help": "torch threads: auto (one for models under 10 M parameters "
                                                   "unless OMP_NUM_THREADS is set), keep, or a number"})


def load_train_rows(cfg: FinetuneConfig):
    ds = load_tofu(cfg.split, cfg.data)
    if cfg.max_authors is not None:
        if cfg.max_authors < 1:
            raise UnlearnError(f"--max-authors must be >= 1, got {cfg.max_authors}")
        per_author = cfg.qa_per_author or qa_per_author(cfg.data)
        ds = ds.select(range(min(len(ds), cfg.max_authors * per_author)))
    with_utility = cfg.with_utility if cfg.with_utility is not None else cfg.model == "tiny"
    parts = [ds]
    if with_utility:
        for name in UTILITY_SPLITS:
            parts.append(load_tofu(name, cfg.data).select_columns(["question", "answer"]))
    return ds, concatenate_datasets([p.select_columns(["question", "answer"]) for p in parts])


TINY_BASE_DIR = "base"


def build_model_for_finetune(cfg: FinetuneConfig):
    if cfg.load_in_4bit and not cfg.lora:
        raise UnlearnError("--load-in-4bit (QLoRA) needs --lora: a 4-bit base cannot be trained directly")
    if cfg.model == "tiny":
        model, tokenizer = build_tiny(cfg.data, seed=cfg.seed)
        if cfg.lora:
            # the random base exists only in memory: save it beside the adapter
            base = Path(cfg.output) / TINY_BASE_DIR
            model.save_pretrained(str(base), safe_serialization=True)
            tokenizer.save_pretrained(str(base))
            if cfg.load_in_4bit:
                model = load_model(str(base), dtype=cfg.dtype, load_in_4bit=True)
    else:
        model = load_model(cfg.model, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit)
        tokenizer = load_tokenizer(cfg.model)
    if cfg.lora:
        model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, quantized=cfg.load_in_4bit, seed=cfg.seed)
        if cfg.model == "tiny":
            model.peft_config["default"].base_model_name_or_path = TINY_BASE_DIR  # relative to the adapter
    return model, tokenizer


def finetune(cfg: FinetuneConfig, model=None, tokenizer=None, resume_from_checkpoint: str | bool | None = None) -> Path:
    """Train and save model/adapter + tokenizer + run.json into `cfg.output` (must be prepared).

    Ctrl-C saves ``checkpoints/checkpoint-N`` and raises `TrainingInterrupted`;
    `resume_from_checkpoint` (a checkpoint directory, or True for the last one under
    ``cfg.output/checkpoints``) continues from it."""
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_checkpoint(Path(cfg.output) / "checkpoints")
        if resume_from_checkpoint is None:
            raise UnlearnError(f"--resume: no checkpoint in {Path(cfg.output) / 'checkpoints'}")
    split_rows, train_rows = load_train_rows(cfg)
    if model is None:
        model, tokenizer = build_model_for_finetune(cfg)
    threads = apply_thread_policy(model, policy=cfg.threads)
    train_ds, report = tokenize_qa_dataset(train_rows, tokenizer, max_length=cfg.max_length, protocol=cfg.protocol)
    logger.info("finetune: %d items of '%s' (+%d utility), %s", len(split_rows), cfg.split,
                len(train_rows) - len(split_rows), report)
    out = Path(cfg.output)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=0.1, seed=cfg.seed,
        logging_steps=5, save_strategy="no", report_to=cfg.report_to, max_length=cfg.max_length,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, use_cpu=_use_cpu(),
        disable_tqdm=False, bf16=cfg.dtype == "bfloat16", activation_checkpointing=cfg.activation_checkpointing,
    )
    own_trainable_weights(model)  # before the optimizer: weights it writes must not be file-mapped
    interrupt = SaveOnInterrupt()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds.remove_columns(["question", "answer"]),
                         processing_class=tokenizer, data_collator=QACollator(tokenizer), callbacks=[interrupt])
    attach_console(trainer, cfg.stage or f"finetune {cfg.split}", out)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    interrupt.finish(trainer)
    trainer.model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir():  # only Ctrl-C checkpoints live here (save_strategy "no"): done with them
        shutil.rmtree(checkpoints)
    write_manifest(
        out, kind="finetune", model=cfg.model, data=str(cfg.data), split=cfg.split, items=len(split_rows),
        train_items=len(train_rows), data_hash=data_hash(split_rows), seed=cfg.seed, lora=cfg.lora,
        truncated=report.truncated, no_answer_left=report.no_answer_left, train_loss=result.training_loss,
        base_model=TINY_BASE_DIR if cfg.model == "tiny" and cfg.lora else cfg.model, threads=threads,
        resumed_from=str(resume_from_checkpoint) if resume_from_checkpoint else None,
        hyperparameters={k: v for k, v in vars(cfg).items() if k not in ("output", "stage")},
        protocol=template_settings(tokenizer, cfg.protocol),
    )
    return out


def _use_cpu() -> bool:
    return not torch.cuda.is_available()


def finetune_on_corpus(model, tokenizer, corpora: list, epochs: float = 3, lr: float = 1e-4,
                       batch_size: int = 8, max_length: int = 256, seed: int = 0, progress: bool = True):
    """Causal-LM finetuning on raw-text corpora (the WMDP / MUSE target: a model that knows the
    text). `corpora`: paths / specs for `llm_unlearn.data.corpus.load_corpus`, or Datasets with a
    ``text`` column; windows from `chunk_corpus` (every token a target once), AdamW, constant
    `lr`, shuffled with `seed`. Trains `model` in place and returns it."""
    parts = []
    for c in corpora:
        docs = c if isinstance(c, Dataset) else load_corpus(c)
        windows, _ = chunk_corpus(docs, tokenizer, max_length=max_length)
        parts.append(windows.select_columns(["input_ids", "attention_mask", "labels"]))
    data = concatenate_datasets(parts)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=QACollator(tokenizer))
    steps = max(1, round(epochs * len(loader)))
    model.train()
    bar = tqdm(total=steps, desc="finetune on corpus", disable=not progress, leave=False)
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if done >= steps:
                break
    bar.close()
    model.eval()
    return model
