"""`UnlearnTrainer`: a `transformers.Trainer` over paired ``{"forget": …, "retain": …}`` batches.

A method subclasses it and writes one function, ``unlearn_loss(model, inputs, counts)``, that
returns the loss and the named terms to log. The base class provides what every method shares:

- Loss normalisation over the whole global batch. `counts` holds the number of forget / retain
  items and answer tokens of *all* micro-batches of one optimizer step, summed over processes
  (``average_tokens_across_devices``, default on), so a micro-batch contributes ``sum / count``:
  gradient accumulation 2×2 gives the update of one batch of 4 (``loss_is_scaled_for_ga = True``;
  the Trainer does not divide again), and N processes × batch b the update and logged values of
  one process with batch N·b (the loss is multiplied by N because DDP averages the gradients of
  the ranks, as `transformers.Trainer` does for token-averaged losses).
- A reference model without a second copy. Under LoRA the reference pass is the same model with
  its adapters disabled. With full weights the reference log-likelihoods of the forget items
  are computed once, before training, and stored as dataset columns (``ref_logprob``,
  ``idk_ref_logprob``), so they follow shuffling, accumulation and data sharding; with several
  processes each rank scores a shard and the column is gathered on every rank. The one
  exception is a KL retain term with full weights: it needs reference *logits* on retain
  items, so the trainer keeps a frozen copy of the model (memory: one more set of weights, e.g.
  0.27 GB for a 135 M model in fp16, 14 GB for 7 B in bf16; no optimizer state or gradients).
- One graph at a time (``split_backward``, default on): a method's forget term is backwarded as
  soon as it is complete (`add_retain_term`), before the retain forward, so the activations of
  the two forwards are never held together.
- The optimizer step inside backward (``optim_in_backward``, `llm_unlearn.optim`): each parameter
  is updated from a post-accumulate-grad hook and its gradient freed, so the gradients of the
  whole model never exist at once; the Trainer's own ``optimizer.step()`` becomes a no-op (its
  step hooks still run), the LR scheduler drives the hooks' lr, and ``grad_norm`` is logged.
  ``split_backward`` does not apply then: stepping on the forget term's gradient before the retain
  term's is added would be a different update, and holding it until then is the full gradient
  buffer this mode removes. The forget and retain forwards run as one batched forward instead
  (`llm_unlearn.scoring.OneGraph`, the parts a method names in `one_graph_parts`): over two
  graphs each weight's gradient from the later one would wait in autograd's buffer for the
  earlier one's, a full gradient buffer again. Activation checkpointing keeps that graph small.
- A divergence guard: a NaN/inf loss raises `DivergenceError` before the backward pass (so the
  weights of the last finite step are untouched) naming the last saved checkpoint, which is kept.
- Logging of ``forget_nll``, ``retain_nll`` and each method's terms next to ``loss``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from accelerate.utils import DistributedType
from datasets import Dataset
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from llm_unlearn import masks
from llm_unlearn.data.pairing import PairedCollator
from llm_unlearn.data.protocol import get_protocol
from llm_unlearn.data.qa import check_tokenizer
from llm_unlearn.errors import DivergenceError, UnlearnError
from llm_unlearn.optim import OptimizerInBackward
from llm_unlearn.perf import lean_allocator, own_trainable_weights
from llm_unlearn.scoring import (
    IGNORE_INDEX,
    OneGraph,
    answer_logits,
    model_logits,
    sequence_logprobs,
    sequence_logprobs_from_logits,
)
from llm_unlearn.trainers.callbacks import attach_console
from llm_unlearn.trainers.losses import kl_all_positions, kl_per_token
from llm_unlearn.trainers.reference import QA_KEYS, add_reference_logprobs, sharded_reference_logprobs

logger = logging.getLogger(__name__)

RETAIN_LOSS_TYPES = ("nll", "kl")


@dataclass
class UnlearnConfig(TrainingArguments):
    """Training arguments shared by all unlearning methods (defaults for real models: lr 1e-5,
    5 epochs, as in the TOFU unlearning runs)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    num_train_epochs: float = field(default=5.0, metadata={"help": "passes over the forget set"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "forget items (and as many retain items) per device and micro-batch"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: float = field(default=0.1, metadata={"help": "warmup: steps, or a fraction of all steps if < 1"})
    logging_steps: float = field(default=5, metadata={"help": "log every N optimizer steps"})
    save_strategy: str = field(default="no", metadata={"help": "checkpointing: no, steps or epoch"})
    # `None | str | list[str]`, the order of TrainingArguments: HfArgumentParser / TrlParser read the
    # first non-None member as the flag's type and fail on `str | list[str] | None`
    report_to: None | str | list[str] = field(default="none", metadata={"help": "where to report logs: none, all, tensorboard, wandb, trackio, …"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False: batches are nested forget/retain dicts"})
    max_length: int = field(default=256, metadata={"help": "max tokens per QA item when tokenising (longer ones are truncated and counted)"})
    resample_pairs: bool = field(default=True, metadata={"help": "draw each forget item's retain partner (and IdK refusal) again every epoch, seeded, as TOFU and open-unlearning do; false: one draw for the whole run"})
    protocol: str = field(default="native", metadata={"help": "prompt and tokenisation protocol: native, open-unlearning or tofu-legacy (llm_unlearn.data.protocol)"})
    split_backward: bool = field(default=True, metadata={"help": "backward the forget term before the retain forward, so one of the two graphs is alive at a time (lower peak memory; the same gradients up to float summation order; off under DeepSpeed and with optim_in_backward)"})
    optim_in_backward: bool = field(default=False, metadata={"help": "update each parameter inside the backward pass as soon as its gradient is complete, then free it (LOMO-style; no full gradient buffer): works with `optim` adamw_torch, adafactor, sgd, adamw_8bit, …; clipping is per parameter (max_grad_norm bounds each tensor's gradient norm); one process only (no DDP / FSDP / DeepSpeed), no fp16 loss scaling; the forget and retain terms are backwarded together (split_backward does not apply)"})

    def __post_init__(self):
        super().__post_init__()
        if self.max_length < 2:
            raise UnlearnError(f"max_length must be >= 2, got {self.max_length}")
        get_protocol(self.protocol)  # validates the name


@dataclass
class RetainRegularisedConfig(UnlearnConfig):
    """A forget term weighted by `gamma` plus a retain term weighted by `alpha`."""

    gamma: float = field(default=1.0, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain term (0 disables it and the retain split)"})
    retain_loss_type: str = field(default="nll", metadata={"help": "retain term: nll (cross-entropy on retain answers) or kl (KL(ref || θ))"})
    kl_positions: str = field(default="all", metadata={"help": "with retain_loss_type kl: all (every non-padding position, the references' batchmean) or answer (answer tokens only)"})

    def __post_init__(self):
        super().__post_init__()
        if self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise UnlearnError(f"retain_loss_type must be one of {', '.join(RETAIN_LOSS_TYPES)}, got '{self.retain_loss_type}'")
        if self.kl_positions not in ("all", "answer"):
            raise UnlearnError(f"kl_positions must be all or answer, got '{self.kl_positions}'")
        if self.alpha < 0 or self.gamma < 0:
            raise UnlearnError(f"alpha and gamma must be >= 0, got alpha={self.alpha}, gamma={self.gamma}")


def is_peft_model(model) -> bool:
    return isinstance(model, PeftModel)


def batch_counts(batches: list[dict]) -> dict[str, torch.Tensor]:
    """Items, answer tokens (shifted labels) and attended positions of forget / retain over micro-batches."""
    counts: dict[str, torch.Tensor] = {}
    for part in ("forget", "retain"):
        parts = [b[part] for b in batches if part in b]
        if not parts:
            continue
        counts[f"{part}_items"] = torch.tensor(sum(p["input_ids"].shape[0] for p in parts))
        counts[f"{part}_tokens"] = sum((p["labels"][:, 1:] != IGNORE_INDEX).sum() for p in parts)
        counts[f"{part}_positions"] = sum(p["attention_mask"].sum() for p in parts)
    return counts


class UnlearnCollator(PairedCollator):
    """`PairedCollator` that also carries cached reference log-likelihoods (``*ref_logprob``
    columns, as float tensors in the forget batch) and refusal answers (``idk_*`` columns, as
    a third padded batch ``"idk"``)."""

    def __call__(self, items: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        batch = super().__call__(items)
        forget = [it["forget"] for it in items]
        if "idk_input_ids" in forget[0]:
            batch["idk"] = self.qa([{k: f[f"idk_{k}"] for k in QA_KEYS} for f in forget])
        for prefix, part in (("", "forget"), ("idk_", "idk")):
            if f"{prefix}ref_logprob" in forget[0]:
                values = [f[f"{prefix}ref_logprob"] for f in forget]
                batch[part]["ref_logprob"] = torch.tensor(values, dtype=torch.float32)
        return batch


class _EpochResampler(TrainerCallback):
    """Tells the paired dataset which epoch starts (new retain partners, the epoch's refusals)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is k at the start of epoch k, k + fraction when resumed inside epoch k
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


def last_checkpoint(output_dir: str | None) -> str | None:
    if output_dir and os.path.isdir(output_dir):
        return get_last_checkpoint(output_dir)
    return None


class UnlearnTrainer(Trainer):
    """Base trainer: paired forget/retain batches, reference handling, logging, divergence guard.

    Subclasses set `method`, `uses_retain`, `reference_prefixes` (which forget-side answers need
    reference log-likelihoods: "" = the forget answer, "idk_" = the refusal) and implement
    `unlearn_loss`.
    """

    method: ClassVar[str] = "base"
    uses_retain: ClassVar[bool] = False
    reference_prefixes: ClassVar[tuple[str, ...]] = ()
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: UnlearnConfig, train_dataset, processing_class=None, data_collator=None,
                 weight_mask=None, **kwargs: Any):
        if processing_class is None:
            raise UnlearnError(f"{self.method}: pass the tokenizer as processing_class")
        check_tokenizer(processing_class)
        if not hasattr(train_dataset, "forget"):
            raise UnlearnError(f"{self.method}: train_dataset must be a ForgetRetainDataset (forget/retain pairs)")
        if len(train_dataset) == 0:
            raise UnlearnError(f"{self.method}: the forget set is empty")
        if self.needs_retain(args) and getattr(train_dataset, "retain", None) is None:
            raise UnlearnError(f"{self.method}: alpha > 0 needs a retain split (pass one, or set alpha=0)")
        if args.remove_unused_columns:
            args.remove_unused_columns = False  # nested forget/retain dicts must reach compute_loss intact
        own_trainable_weights(model)  # before the optimizer: weights it writes must not be file-mapped
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=data_collator or UnlearnCollator(processing_class), **kwargs)
        self.is_peft = is_peft_model(self.model)
        if self.is_peft and self.args.activation_checkpointing:
            # reentrant checkpointing needs an input that requires grad when only adapters train
            self.model.enable_input_require_grads()
        self.ref_model = None
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.resample = bool(getattr(args, "resample_pairs", True))
            self.add_callback(_EpochResampler(train_dataset))
        self.in_backward: OptimizerInBackward | None = None
        if args.optim_in_backward:
            self._check_in_backward()
            if self.args.device.type == "cpu":
                lean_allocator()  # the user asked for memory first: freed CPU buffers go back to the OS (llm_unlearn.perf)
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_step = 0
        self.setup()
        self.setup_reference()
        # one bar with step and loss; log dicts to <output_dir>/trainer_log.jsonl (llm_unlearn.console)
        self.console = attach_console(self, f"unlearn {self.method}", self.args.output_dir)
        if weight_mask is not None:
            masks.attach_mask(self, weight_mask)

    # ---- what a method overrides -------------------------------------------------------

    @classmethod
    def needs_retain(cls, args) -> bool:
        """Whether this method with these arguments uses the retain split."""
        return cls.uses_retain and getattr(args, "alpha", 0.0) > 0

    def setup(self) -> None:
        """Per-method preparation after the model is on its device, before the reference cache
        (extra dataset columns, which parameters train)."""

    def unlearn_loss(self, model, inputs: dict, counts: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def one_graph_parts(self) -> tuple[str, ...]:
        """The parts of a step's batch that `unlearn_loss` scores with the training model through
        `answer_logits` / `sequence_logprobs` (with grad). With the optimizer step in backward
        they run as one forward (`OneGraph`); () opts out (a method whose forwards are not QA
        logits, or that runs its own backward passes)."""
        parts = ("forget",)
        if self.needs_retain(self.args) and not (getattr(self.args, "retain_loss_type", "nll") == "kl"
                                                 and getattr(self.args, "kl_positions", "answer") == "all"):
            parts += ("retain",)  # the KL over all positions asks for every position's logits: its own forward
        return parts

    def runs_one_graph(self, model) -> bool:
        """Whether this forward's parts run as one (`OneGraph`): training with the optimizer step
        in backward. (With ``split_backward`` one graph would hold both parts' activations.)"""
        return self.in_backward is not None and model.training and torch.is_grad_enabled()

    # ---- reference ---------------------------------------------------------------------

    def setup_reference(self) -> None:
        if self.is_peft:
            return
        forget = self.train_dataset.forget
        variants = list(getattr(self.train_dataset, "forget_variants", None) or [])
        for prefix in self.reference_prefixes:
            if any(f"{prefix}input_ids" in v.column_names for v in variants):  # one column per epoch's draw
                variants = [self._with_reference(v, prefix) for v in variants]
            else:
                forget = self._with_reference(forget, prefix)
        self.train_dataset.forget = forget
        if variants:
            self.train_dataset.forget_variants = variants
        if self.needs_retain(self.args) and getattr(self.args, "retain_loss_type", "nll") == "kl":
            logger.info("KL retain term with full weights: keeping a frozen copy of the model for reference logits")
            self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)

    def _with_reference(self, dataset: Dataset, prefix: str) -> Dataset:
        if f"{prefix}ref_logprob" in dataset.column_names:
            return dataset
        if self.accelerator.num_processes > 1:
            # each rank scores 1/N of the items; every rank gets the whole column
            return sharded_reference_logprobs(self.model, dataset, self.processing_class, prefix=prefix,
                                              batch_size=self.args.per_device_train_batch_size)
        return add_reference_logprobs(self.model, dataset, self.processing_class, prefix=prefix,
                                      batch_size=self.args.per_device_train_batch_size)

    def epochs_planned(self) -> int:
        """Passes over the forget set this run makes (from ``max_steps`` when it is set)."""
        if self.args.max_steps and self.args.max_steps > 0:
            per_step = (self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                        * max(self.accelerator.num_processes, 1))
            return max(1, math.ceil(self.args.max_steps * per_step / len(self.train_dataset)))
        return max(1, math.ceil(self.args.num_train_epochs))

    @contextmanager
    def reference_mode(self, model):
        """The reference model: adapters disabled (LoRA) or the frozen copy; eval mode, no grad."""
        unwrapped = self.accelerator.unwrap_model(model)
        if self.is_peft:
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                with unwrapped.disable_adapter(), torch.no_grad():
                    yield unwrapped
            finally:
                unwrapped.train(was_training)
        elif self.ref_model is not None:
            with torch.no_grad():
                yield self.ref_model
        else:
            raise RuntimeError(f"{self.method}: no reference model with full weights (use cached ref_logprob)")

    def reference_logprobs(self, model, batch: dict) -> torch.Tensor:
        """Σ log π_ref(y|x) per item of a QA batch: a disabled-adapter pass (LoRA) or its cached
        ``ref_logprob`` (full weights)."""
        if self.is_peft:
            with self.reference_mode(model) as ref:
                s, _ = sequence_logprobs(ref, batch)
            return s
        if "ref_logprob" not in batch:
            raise UnlearnError(f"{self.method}: batch has no cached ref_logprob (full-weight reference not prepared)")
        return batch["ref_logprob"].to(device=batch["input_ids"].device, dtype=torch.float32)

    # ---- shared terms -----------------------------------------------------------------

    def retain_term(self, model, retain: dict, counts: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(retain loss contribution, retain NLL contribution), both over the step's retain tokens."""
        kl_all = (getattr(self.args, "retain_loss_type", "nll") == "kl"
                  and getattr(self.args, "kl_positions", "answer") == "all")
        logits, labels = (model_logits(model, retain), retain["labels"]) if kl_all else answer_logits(model, retain)
        s, _ = sequence_logprobs_from_logits(logits, labels)
        nll = -s.sum() / counts["retain_tokens"].clamp(min=1)
        if getattr(self.args, "retain_loss_type", "nll") == "nll":
            return nll, nll
        if kl_all:  # every non-padding position, over the step's positions (the references' batchmean)
            with self.reference_mode(model) as ref:
                ref_full = model_logits(ref, retain)
            kl = kl_all_positions(logits, ref_full, retain["attention_mask"])
            return kl.sum() / counts["retain_positions"].clamp(min=1), nll
        with self.reference_mode(model) as ref:
            ref_logits, _ = answer_logits(ref, retain)
        if ref_logits.shape != logits.shape:  # one of the two has no logits_to_keep: align on the longer
            logits, labels = model_logits(model, retain), retain["labels"]
            ref_logits = model_logits(ref, retain)
        kl, _ = kl_per_token(logits, ref_logits, labels)
        return kl.sum() / counts["retain_tokens"].clamp(min=1), nll

    def add_retain_term(self, model, inputs: dict, counts: dict, loss: torch.Tensor, terms: dict) -> torch.Tensor:
        """``loss + α·R(retain)`` when α > 0 (records retain_loss / retain_nll in `terms`)."""
        if not self.needs_retain(self.args):
            return loss
        if self._splits_backward(model, loss):
            loss = self._backward_forget_term(model, loss, terms)
        retain_loss, retain_nll = self.retain_term(model, inputs["retain"], counts)
        terms.update(retain_loss=retain_loss, retain_nll=retain_nll)
        return loss + self.args.alpha * retain_loss

    def _splits_backward(self, model, loss: torch.Tensor) -> bool:
        """``split_backward`` applies: a training forward with a graph, and a backend where two
        backward calls per micro-batch are plain gradient accumulation (not DeepSpeed, whose
        engine counts backward calls, nor DataParallel, which averages the returned loss)."""
        return (bool(getattr(self.args, "split_backward", False)) and model.training and loss.requires_grad
                and not self.args.optim_in_backward
                and self.accelerator.distributed_type != DistributedType.DEEPSPEED and self.args.n_gpu <= 1)

    def _backward_forget_term(self, model, loss: torch.Tensor, terms: dict) -> torch.Tensor:
        """Backward the finished forget term now, freeing its graph before the retain forward;
        return it detached, so the caller's total has the full value and only the retain graph.

        The scale matches what `compute_loss` applies to the total (× processes when counts are
        global). Under DDP / FSDP each of the two backward passes reduces gradients across ranks
        (averages of averages: the same result, twice the gradient traffic of one joint backward);
        where communication rather than memory limits a run, set ``split_backward=False``."""
        if not torch.isfinite(loss):
            self._diverged(loss, terms)
        scale = self.accelerator.num_processes if self.counts_across_processes() else 1
        self.accelerator.backward(loss * scale)
        return loss.detach()

    # ---- optimizer in backward ---------------------------------------------------------

    def _check_in_backward(self) -> None:
        """Refuse set-ups where a per-parameter step inside backward would be wrong."""
        why = None
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            why = "DeepSpeed owns the optimizer step"
        elif self.accelerator.num_processes > 1 or self.args.n_gpu > 1:
            why = ("with several processes the hooks would step on this rank's gradient before DDP / FSDP has "
                   "reduced it; shard the optimizer state with FSDP2 instead (recipes/accelerate/)")
        elif self.args.fp16:
            why = "fp16 loss scaling unscales gradients only at the optimizer step; use bf16 or fp32"
        elif self.args.activation_checkpointing and any(
                (getattr(self.args, f, None) or {}).get("use_reentrant")
                for f in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")):
            # each checkpointed call backwards on its own, so a layer run on forget and retain items gets its
            # gradient (and would get an update) twice per step; the non-reentrant default backwards once
            why = "reentrant activation checkpointing would step a parameter once per checkpointed call; drop use_reentrant"
        elif not any(p.requires_grad for p in self.model.parameters()):
            why = "the model has no trainable parameter"
        if why:
            raise UnlearnError(f"{self.method}: optim_in_backward is not possible here: {why}")

    def create_optimizer(self, model=None):
        if not self.args.optim_in_backward:
            return super().create_optimizer(model)
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [{"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                      {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
            groups = [g for g in groups if g["params"]]
            cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or "params" in kwargs:
                raise UnlearnError(f"{self.method}: optim_in_backward needs an optimizer that can step one parameter "
                                   f"at a time (adamw_torch, adafactor, sgd, adamw_8bit, …), not optim={self.args.optim}")
            per_param = {}
            if "bitsandbytes" in str(cls) and kwargs.get("optim_bits") == 8:
                # as the Trainer does for bitsandbytes' 8-bit optimizers: embeddings keep 32-bit state
                per_param = {m.weight: {"optim_bits": 32} for m in opt_model.modules()
                             if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad}
            self.in_backward = OptimizerInBackward(groups, cls, kwargs, max_grad_norm=self.args.max_grad_norm,
                                                   should_step=lambda: self.accelerator.sync_gradients,
                                                   param_kwargs=per_param)
            self.optimizer = self.in_backward
        return self.optimizer

    def _clip_grad_norm(self, model):
        if self.in_backward is not None:  # clipped per parameter in the hooks; the pre-clip global norm
            return self.in_backward.pop_grad_norm()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if self.in_backward is not None and grad_norm is None:
            grad_norm = self.in_backward.pop_grad_norm()
            return grad_norm if grad_norm is not None else torch.zeros(())
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # ---- Trainer hooks -----------------------------------------------------------------

    def counts_across_processes(self) -> bool:
        """Whether step counts are summed over processes (several processes and
        ``average_tokens_across_devices``): then each rank's loss is its share of the global mean."""
        return self.accelerator.num_processes > 1 and bool(getattr(self.args, "average_tokens_across_devices", True))

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> dict[str, torch.Tensor]:
        counts = {k: v.to(device) for k, v in batch_counts(batch_samples).items()}
        if self.counts_across_processes():
            # every rank has the same keys (same method and config); a fixed order keeps the collectives aligned
            counts = {k: self.accelerator.reduce(counts[k], reduction="sum") for k in sorted(counts)}
        return counts

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        global_counts = isinstance(num_items_in_batch, dict) and self.counts_across_processes()
        counts = num_items_in_batch if isinstance(num_items_in_batch, dict) else batch_counts([inputs])
        counts = {k: v.to(inputs["forget"]["input_ids"].device) for k, v in counts.items()}
        if self.runs_one_graph(model):
            parts = [inputs[k] for k in self.one_graph_parts() if k in inputs]
            if len(parts) > 1:  # one graph: each weight's gradient is complete when computed (module docstring)
                model = OneGraph(model, parts)
        loss, terms = self.unlearn_loss(model, inputs, counts)
        if not torch.isfinite(loss):
            self._diverged(loss, terms)
        if model.training:
            for name, value in terms.items():
                self._metric_sums[name] += float(value.detach())  # summed over ranks in `log`
        if global_counts:
            # this rank's sums over the global counts; DDP averages the ranks' gradients and the Trainer
            # the ranks' logged losses, so ×N gives the global-batch mean (Trainer.compute_loss does the same)
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _diverged(self, loss: torch.Tensor, terms: dict) -> None:
        checkpoint = last_checkpoint(self.args.output_dir)
        where = f"last good checkpoint kept at {checkpoint}" if checkpoint else "no checkpoint was saved (set save_steps)"
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        err = DivergenceError(
            f"{self.method}: loss became {float(loss.detach())} at step {self.state.global_step + 1} ({detail}); "
            f"training stopped, {where}; try a lower learning_rate"
        )
        err.checkpoint = checkpoint
        err.step = self.state.global_step + 1
        raise err

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_sums:
            steps = max(self.state.global_step - self._metric_step, 1)
            names = sorted(self._metric_sums)
            totals = [self._metric_sums[n] for n in names]
            if self.counts_across_processes():  # each rank holds its share of the global-batch value
                reduced = self.accelerator.reduce(torch.tensor(totals, dtype=torch.float64, device=self.args.device),
                                                  reduction="sum")
                totals = reduced.tolist()
            for name, total in zip(names, totals):
                logs[name] = round(total / steps, 6)
            self._metric_sums.clear()
            self._metric_step = self.state.global_step
        super().log(logs, start_time)

    def floating_point_ops(self, inputs: dict) -> int:
        return sum(super(UnlearnTrainer, self).floating_point_ops(part) for part in inputs.values() if isinstance(part, dict))
