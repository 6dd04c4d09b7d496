"""What every unlearning recipe shares: arguments, loading, the sharding-aware steps, saving,
evaluation and the optional push. A recipe script is `parse → run_recipe(TrainerClass, …)`.

Launch on one process (`python recipes/x.py --config …`), with Accelerate
(`accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/x.py --config …`) or, on CPU,
with `ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/x.py …` (gloo).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transformers import TrainerCallback  # noqa: E402

from llm_unlearn.errors import UnlearnError  # noqa: E402
from llm_unlearn.perf import tune_allocator  # noqa: E402

tune_allocator()  # recipes are scripts: keep large CPU buffers in the heap (llm_unlearn.perf)

logger = logging.getLogger("recipes")


@dataclass
class ScriptArguments:
    """Model, data, adapter, mask, evaluation and sharing options of an unlearning recipe."""

    model_name_or_path: str = field(default="runs/target", metadata={"help": "the finetuned model to unlearn: directory, Hub id, alias (smollm2), or a LoRA adapter directory (merged first)"})
    data: str = field(default="locuslab/TOFU", metadata={"help": "data source: Hub dataset name or local directory of <split>.jsonl"})
    forget_split: str = field(default="forget10", metadata={"help": "split to forget (forget01 / forget05 / forget10)"})
    retain_split: str | None = field(default=None, metadata={"help": "retain split (default: the one matching forget_split, e.g. retain90)"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16, float16"})
    use_lora: bool = field(default=False, metadata={"help": "unlearn through a fresh LoRA adapter instead of full weights"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the base to 4 bit with bitsandbytes (implies use_lora)"})
    mask_method: str | None = field(default=None, metadata={"help": "weight mask to restrict unlearning: wagle, salun, magnitude, random, wanda (none by default)"})
    mask_ratio: float = field(default=0.8, metadata={"help": "fraction of target weights that may change"})
    mask_granularity: str = field(default="element", metadata={"help": "element (paper) or row (cheap, for 7B LoRA)"})
    mask_path: str | None = field(default=None, metadata={"help": "use a precomputed mask file instead of computing one"})
    run_eval: bool = field(default=True, metadata={"help": "evaluate the unlearned model (TOFU metrics) into OUTPUT/eval"})
    retain_logs: str | None = field(default=None, metadata={"help": "retain model's eval (for forget quality)"})
    eval_max_items: int | None = field(default=None, metadata={"help": "cap items per eval split"})
    eval_max_new_tokens: int = field(default=200, metadata={"help": "greedy generation length in evaluation"})
    loss_log: str | None = field(default=None, metadata={"help": "also write every logged step (loss and terms) to this JSON file"})
    overwrite_output: bool = field(default=False, metadata={"help": "replace a non-empty output_dir"})


class LossRecorder(TrainerCallback):
    """Writes the Trainer's logged training values (loss, method terms) per step to a JSON file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"world_size": args.world_size, "steps": self.rows}, indent=1) + "\n")


@dataclass
class EvalArguments:
    """Evaluation options of the recipes that train a model rather than unlearn (finetune, S3T)."""

    run_eval: bool = field(default=True, metadata={"help": "evaluate the trained model (TOFU metrics) into OUTPUT/eval"})
    forget_split: str = field(default="forget10", metadata={"help": "forget split whose TOFU metrics are reported (forget01 / forget05 / forget10)"})
    retain_logs: str | None = field(default=None, metadata={"help": "retain model's eval (for forget quality)"})
    eval_max_items: int | None = field(default=None, metadata={"help": "cap items per eval split"})
    eval_max_new_tokens: int = field(default=200, metadata={"help": "greedy generation length in evaluation"})
    eval_batch_size: int = field(default=8, metadata={"help": "items per evaluation batch"})


def run_evaluation(model, tokenizer, data: str, out: Path, ev: EvalArguments) -> dict:
    """TOFU evaluation of `model` (items split across ranks), written to ``out/eval`` by rank 0."""
    from llm_unlearn.distributed import is_main_process
    from llm_unlearn.eval import evaluate_sharded
    from llm_unlearn.eval.evaluator import write_eval

    res = evaluate_sharded(model, tokenizer, data, forget_split=ev.forget_split, retain_logs=ev.retain_logs,
                           max_items=ev.eval_max_items, batch_size=ev.eval_batch_size,
                           max_new_tokens=ev.eval_max_new_tokens)
    if is_main_process():
        write_eval(Path(out) / "eval", res)
    return res


def check_quantization(script: ScriptArguments) -> None:
    """Refuse, before anything is loaded, options a 4-bit base cannot serve."""
    if not script.load_in_4bit:
        return
    if script.mask_method is not None and script.mask_path is None:
        raise UnlearnError(
            f"load_in_4bit with mask_method {script.mask_method}: mask scores need a float model (gradients / "
            "weights of a 4-bit base are packed); compute the mask on the float model first "
            "(llm-unlearn mask --model … --granularity row --output mask.safetensors) and pass mask_path, "
            "or set load_in_4bit: false")


def _sharding() -> str | None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return None


def load_model_for_unlearning(script: ScriptArguments, seed: int):
    """The model to unlearn (a LoRA target is merged) + tokenizer, with a fresh adapter if asked."""
    from llm_unlearn.models import attach_lora, is_adapter_dir, load_model, load_tokenizer

    lora = script.use_lora or script.load_in_4bit
    if script.load_in_4bit and is_adapter_dir(script.model_name_or_path):
        raise UnlearnError("load_in_4bit: merge the target's LoRA adapter into a full model first "
                           "(a 4-bit base cannot absorb it)")
    model = load_model(script.model_name_or_path, dtype=script.dtype, load_in_4bit=script.load_in_4bit)
    if hasattr(model, "merge_and_unload"):  # a LoRA-finetuned target: its adapter becomes part of the base
        model = model.merge_and_unload()
    tokenizer = load_tokenizer(script.model_name_or_path)
    if lora:
        model = attach_lora(model, r=script.lora_r, alpha=script.lora_alpha, dropout=script.lora_dropout,
                            quantized=script.load_in_4bit, seed=seed)
    return model, tokenizer


def build_pairs(script: ScriptArguments, tokenizer, max_length: int, seed: int, with_retain: bool):
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu, matching_retain_split

    forget_rows = load_tofu(script.forget_split, script.data)
    forget, _ = tokenize_qa_dataset(forget_rows, tokenizer, max_length=max_length)
    retain = None
    retain_split = script.retain_split or matching_retain_split(script.forget_split)
    if with_retain:
        retain, _ = tokenize_qa_dataset(load_tofu(retain_split, script.data), tokenizer, max_length=max_length)
    return forget_rows, retain_split, ForgetRetainDataset(forget, retain, seed=seed)


def prepare_mask(script: ScriptArguments, model, tokenizer, pairs, batch_size: int, seed: int):
    """The weight mask: loaded from `mask_path`, or computed with each rank scoring its shard of
    the forget / retain items and gradients averaged across ranks (one global score). Under FSDP
    this runs before the Trainer wraps the model, on every rank's whole copy (the mask is then
    cut to each rank's shards when the optimizer is created, `MaskEnforcer.rebind`)."""
    if script.mask_method is None and script.mask_path is None:
        return None
    from torch.utils.data import DataLoader

    from llm_unlearn.data.qa import QACollator
    from llm_unlearn.distributed import shard_dataset
    from llm_unlearn.masks import compute_mask, load_mask

    if _sharding() == "deepspeed":
        raise UnlearnError("weight masks are not supported with DeepSpeed ZeRO-3 (parameters are partitioned while "
                           "the model loads); use recipes/accelerate/fsdp.yaml (FSDP2) or ddp.yaml")
    if script.mask_path:
        return load_mask(script.mask_path)
    if any(p.is_meta for p in model.parameters()):
        raise UnlearnError("computing a weight mask needs the real weights on every rank before FSDP wraps the model: "
                           "set fsdp_cpu_ram_efficient_loading: false (recipes/accelerate/fsdp_masked.yaml), or "
                           "compute it once with `llm-unlearn mask` and pass mask_path")
    cols = ["input_ids", "attention_mask", "labels"]

    def loader(ds):
        return DataLoader(shard_dataset(ds.select_columns(cols)), batch_size=batch_size, collate_fn=QACollator(tokenizer))

    retain = loader(pairs.retain) if pairs.retain is not None else None
    import torch

    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        # score on this rank's GPU (the Trainer / FSDP would move the model there next anyway)
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    # gradients summed over every rank's shard (`accumulate_gradients`), one global score
    return compute_mask(model, loader(pairs.forget), retain, method=script.mask_method, ratio=script.mask_ratio,
                        granularity=script.mask_granularity, seed=seed)


def run_recipe(trainer_cls, script: ScriptArguments, args) -> Path:
    """Load, (mask,) unlearn, save, evaluate, push. Returns the output directory."""
    import torch
    from transformers import set_seed

    from llm_unlearn.distributed import barrier, is_main_process, rank_and_world
    from llm_unlearn.eval import evaluate_sharded
    from llm_unlearn.outputs import StagedDir, check_output, staging_path
    from llm_unlearn.runinfo import data_hash, write_manifest
    from llm_unlearn.threads import apply_thread_policy
    from llm_unlearn.trainers import sharded_reference_logprobs

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_quantization(script)
    push = bool(args.push_to_hub)
    args.push_to_hub = False  # the Trainer would push checkpoints on its own; we push the final run once
    if push and not args.hub_model_id:
        raise UnlearnError("push_to_hub needs hub_model_id (ORG/NAME)")
    if push:
        from llm_unlearn.hub import resolve_token, validate_repo_id

        validate_repo_id(args.hub_model_id)
        resolve_token(args.hub_token)  # fail before training, not after
    # written into a staging sibling (every rank writes there), moved into place by rank 0 at the end
    final = Path(args.output_dir)
    inputs = [script.model_name_or_path, script.data, script.mask_path, script.retain_logs]
    stage = StagedDir(check_output(final, script.overwrite_output, inputs), staging_path(final))
    if is_main_process():
        import shutil

        shutil.rmtree(stage.path, ignore_errors=True)
        stage.path.mkdir(parents=True)
    barrier()
    out = stage.path
    args.output_dir = str(out)
    if script.loss_log and Path(script.loss_log).resolve().is_relative_to(final.resolve()):
        # a loss log inside the output is part of it: written in the staging directory too
        script.loss_log = str(out / Path(script.loss_log).resolve().relative_to(final.resolve()))
    set_seed(args.seed)
    model, tokenizer = load_model_for_unlearning(script, args.seed)
    threads = apply_thread_policy(model)
    with_retain = trainer_cls.uses_retain and getattr(args, "alpha", 0.0) > 0
    forget_rows, retain_split, pairs = build_pairs(script, tokenizer, args.max_length, args.seed, with_retain)
    is_peft = hasattr(model, "disable_adapter")
    _, world = rank_and_world()
    if trainer_cls.reference_prefixes and not is_peft:
        if _sharding() == "fsdp" and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true":
            raise UnlearnError("full-weight NPO-type methods need the reference before FSDP wraps the model: set "
                               "fsdp_cpu_ram_efficient_loading: false, or use_lora: true")
        if world > 1 and "" in trainer_cls.reference_prefixes:
            pairs.forget = sharded_reference_logprobs(model, pairs.forget, tokenizer,
                                                      batch_size=args.per_device_train_batch_size)
    mask = prepare_mask(script, model, tokenizer, pairs, args.per_device_train_batch_size, args.seed)
    callbacks = [LossRecorder(script.loss_log)] if script.loss_log else []
    trainer = trainer_cls(model=model, args=args, train_dataset=pairs, processing_class=tokenizer,
                          weight_mask=mask, callbacks=callbacks)
    result = trainer.train()
    trainer.save_model(str(out))  # FSDP: gathers the full state dict on rank 0 (FULL_STATE_DICT)
    if is_main_process():
        tokenizer.save_pretrained(str(out))
        if mask is not None:
            # an element mask on LoRA is part of the adapter: load_model applies this file on reload
            from llm_unlearn.models import ADAPTER_MASK_FILE

            lora_element = (script.use_lora or script.load_in_4bit) and mask.granularity != "row"
            mask.save(out / (ADAPTER_MASK_FILE if lora_element else "mask.safetensors"))
        hyper = {k: v for k, v in args.to_dict().items() if k in _method_fields(args)}
        hyper.update({k: v for k, v in asdict(script).items()
                      if k.startswith(("lora_", "mask_", "use_lora", "load_in_4bit", "dtype")) and v is not None})
        write_manifest(out, kind="unlearn", method=trainer_cls.method, model=script.model_name_or_path,
                       data=script.data, forget_split=script.forget_split, forget_items=len(forget_rows),
                       forget_data_hash=data_hash(forget_rows), retain_split=retain_split if with_retain else None,
                       world_size=world, train_loss=result.training_loss, hyperparameters=hyper, threads=threads)
    if script.run_eval:
        from llm_unlearn.eval.evaluator import write_eval

        with torch.no_grad():
            res = evaluate_sharded(trainer.model, tokenizer, script.data, forget_split=script.forget_split,
                                   retain_logs=script.retain_logs, max_items=script.eval_max_items,
                                   batch_size=args.per_device_eval_batch_size,
                                   max_new_tokens=script.eval_max_new_tokens)
        if is_main_process():
            write_eval(out / "eval", res)
    barrier()
    if is_main_process():
        stage.commit()
    barrier()
    out = stage.final
    args.output_dir = str(out)
    if push and is_main_process():
        from llm_unlearn.hub import push_run

        url = push_run(out, args.hub_model_id, private=bool(args.hub_private_repo), token=args.hub_token)
        logger.info("pushed %s to %s", out, url)
    return out


def _method_fields(args) -> set[str]:
    """Fields a method config adds to TrainingArguments, plus the usual optimisation ones."""
    from transformers import TrainingArguments

    base = set(TrainingArguments.__dataclass_fields__)
    extra = set(type(args).__dataclass_fields__) - base
    return extra | {"learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "seed"}


def parse(config_cls):
    """``(ScriptArguments, config)`` from ``--config file.yaml`` and command-line overrides."""
    from trl import TrlParser

    script, parsed = TrlParser((ScriptArguments, _parsable(config_cls))).parse_args_and_config()
    if type(parsed) is not config_cls:  # back to the real (picklable) class; Trainer saves it
        from dataclasses import fields

        parsed = config_cls(**{f.name: getattr(parsed, f.name) for f in fields(config_cls) if f.init})
    return script, parsed


def _parsable(config_cls):
    """`config_cls`, with ``report_to`` re-declared as ``None | str | list[str]`` (the order
    HfArgumentParser understands) when the class declares it otherwise."""
    from dataclasses import make_dataclass

    if str(config_cls.__dataclass_fields__["report_to"].type).replace(" ", "").startswith("None|"):
        return config_cls
    report_to = field(default="none", metadata={"help": "where to report logs: none, all, tensorboard, wandb, …"})
    return make_dataclass(config_cls.__name__, [("report_to", "None | str | list[str]", report_to)], bases=(config_cls,))


def main(trainer_cls, config_cls) -> int:
    import shutil

    from llm_unlearn.distributed import is_main_process
    from llm_unlearn.outputs import has_checkpoint, staging_path

    script, args = parse(config_cls)
    staging = staging_path(args.output_dir)
    try:
        out = run_recipe(trainer_cls, script, args)
    except BaseException as exc:
        # a failed run leaves the previous output as it was and no half-written staging directory
        if is_main_process() and staging.is_dir() and not has_checkpoint(staging):
            shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, UnlearnError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved unlearned model to {out}")
    return 0
