"""A memory model of unlearning runs: peak memory per device, predicted from the model's config
alone (no weights are loaded), for full weights, LoRA and QLoRA, AdamW / 8-bit AdamW / Adafactor /
SGD, the optimizer step inside backward (`llm_unlearn.optim`), activation checkpointing and FSDP2.

``estimate(config, method, mode, optim, batch, seq, dtype, world_size, sharding)`` returns a
`MemoryEstimate`: the bytes of each part and the predicted peak. ``llm-unlearn plan-memory``
prints it for a model directory, a Hub id with its config cached, or a built-in config
(`BUILTIN_CONFIGS`: Llama-3.2-1B, Llama-2-7B, Zephyr-7B, Llama-3.1-8B, SmolLM2-135M/360M).

The parts, per device (P parameters, T trainable, b bytes per element of `dtype`, N = world size):

- weights: P·b (QLoRA: the decoder's linear weights at 4 bits with double-quantised absmax,
  0.5 + 1/64 + 4/(64·256) bytes per weight; embeddings, norms and the head stay in `dtype`; LoRA
  factors in fp32, PEFT's default). FSDP2 (``sharding="fsdp"``): /N, plus the unsharded
  parameters of the two decoder layers all-gathered at a time (the current one and the prefetched one).
- gradients: T·b, /N under FSDP2. With the optimizer step in backward only the gradient being
  applied exists: the largest trainable tensor's.
- optimizer state: AdamW 2·T·b (torch keeps the moments in the parameter dtype); 8-bit AdamW
  (bitsandbytes) 2 bytes per weight plus a fp32 absmax per 256-block per moment, tensors under
  4096 elements in fp32; Adafactor (transformers, ``beta1=None``) a row and a column factor per
  matrix, the full second moment of vectors; SGD (momentum 0) nothing. /N under FSDP2. The step's
  own temporaries (one to three copies of the largest tensor) are counted with it.
- activations of one forward graph of ``batch × seq`` tokens (training mode, SDPA attention), per
  token and decoder layer, bytes: ``2·(4 + 2b)·h`` (two RMSNorms, computed in fp32, save their
  input, normalised and output values) ``+ 4b·q`` (query, key and value after RoPE, repeated to
  the query heads, and the attention output) ``+ 4b·i`` (gate, up, SiLU and the product of the
  SwiGLU MLP) ``+ 4·heads`` (log-sum-exp) ``+ b·seq`` (the padding mask each layer expands) ``+ 8``,
  with h the hidden size, q = heads × head_dim, i the MLP size: the tensors autograd saves,
  counted with ``saved_tensors_hooks`` on random Llama configs (exact for them, fp32 and bf16,
  full and LoRA; LoRA's own terms in `layer_activation_bytes`). Then the final
  norm, and the head's fp32 logits on the answer rows (``logits_to_keep``, `answer_len` + 1 per
  item) saved by the log-softmax, with two more such buffers in its backward. With activation
  checkpointing a layer keeps only its input (b·h per token) and one layer is recomputed at a time.
- how the graphs of a step overlap: methods with a retain term run two forwards per step (forget,
  retain; IdkDPO three). With ``split_backward`` (the default) the forget graph is backwarded
  before the retain forward: the peak holds the gradients and one graph. Without it, and with the
  optimizer step in backward (which turns split_backward off), all graphs of the step are alive
  at once, but not the gradients: the trainer runs them as one batched forward
  (`llm_unlearn.scoring.OneGraph`); over separate graphs each weight's gradient from the later
  one would wait in autograd's buffer for the earlier one's, a full gradient buffer. A frozen reference copy (``ref="frozen"``: a KL retain term with
  full weights) adds one set of weights.

Not counted: the runtime (Python, torch, CUDA context: about 0.5–1 GB on a GPU, 0.6 GB of RSS on
CPU), the data, and allocator slack (the CUDA caching allocator's fragmentation, a CPU heap that
keeps freed memory: `llm_unlearn.perf.tune_allocator`'s; with the step in backward on CPU the
trainer switches to `lean_allocator`, which keeps RSS close to the live tensors).
`MemoryEstimate.fits` adds a stated margin for those.

Validated by measurement on CPU (peak RSS minus the process's RSS before the model is built):
`benchmarks/memory_model.py`, results in ``benchmarks/results/memory_model.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from llm_unlearn.errors import UnlearnError

GB = 1e9
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
MODES = ("full", "lora", "qlora")
OPTIMS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd")
SHARDINGS = ("none", "fsdp")
# forward graphs per optimizer step: forget answers, refusals (IdkDPO), retain answers
METHOD_GRAPHS = {"grad_ascent": 1, "grad_diff": 2, "npo": 2, "simnpo": 2, "idk_dpo": 3, "rmu": 2}
LORA_TARGETS = 7  # all-linear on a Llama layer: q, k, v, o, gate, up, down
BNB_BLOCK, BNB_MIN_8BIT = 256, 4096
GPU_RUNTIME_GB = 0.8  # CUDA context, cuBLAS workspace, NCCL buffers: outside torch's allocator
ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation margin used by `fits`

# Configs of common targets (the fields the model reads), so plans need no download.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                                    tie_word_embeddings=True),
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000,
                                     tie_word_embeddings=False),
    "HuggingFaceH4/zephyr-7b-beta": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                         vocab_size=32000, tie_word_embeddings=False),
    "meta-llama/Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                    tie_word_embeddings=False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                                num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                                                vocab_size=49152, tie_word_embeddings=True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                                num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                                                vocab_size=49152, tie_word_embeddings=True),
}
ALIASES = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-2-7b": "meta-llama/Llama-2-7b-hf",
           "zephyr-7b": "HuggingFaceH4/zephyr-7b-beta", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
           "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct"}


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a decoder-only Llama-family config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    name: str = "model"

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> ModelShape:
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        text = get("text_config")  # multimodal wrappers: the language model's config
        if text is not None and get("hidden_size") is None:
            return cls.from_config(text, name)
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "vocab_size") if get(k) is None]
        if missing:
            raise UnlearnError(f"config of {name or 'the model'} has no {', '.join(missing)}: not a decoder-only "
                               "transformer the memory model knows")
        if get("num_local_experts") or get("num_experts") or get("n_routed_experts"):
            raise UnlearnError(f"{name or 'the model'} is a mixture of experts: the memory model covers dense "
                               "Llama-family decoders only")
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(hidden=hidden, intermediate=int(get("intermediate_size")), layers=int(get("num_hidden_layers")),
                   heads=heads, kv_heads=int(get("num_key_value_heads") or heads),
                   head_dim=int(get("head_dim") or hidden // heads), vocab=int(get("vocab_size")),
                   tied=bool(get("tie_word_embeddings", False)),
                   name=name or get("_name_or_path") or get("name_or_path") or "model")

    # parameter tensors: (kind, shape, count)
    def tensors(self) -> list[tuple[str, tuple[int, ...], int]]:
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        out = [("embed", (self.vocab, h), 1)]
        if not self.tied:
            out.append(("head", (self.vocab, h), 1))
        out += [("linear", (q, h), self.layers), ("linear", (kv, h), 2 * self.layers), ("linear", (h, q), self.layers),
                ("linear", (i, h), 2 * self.layers), ("linear", (h, i), self.layers),
                ("norm", (h,), 2 * self.layers + 1)]
        return out

    def params(self, kinds: tuple[str, ...] | None = None) -> int:
        return sum(math.prod(s) * n for k, s, n in self.tensors() if kinds is None or k in kinds)

    def layer_params(self) -> int:
        return (self.params(("linear", "norm")) - self.hidden) // self.layers

    def lora_params(self, r: int) -> int:
        """LoRA factors on every linear of every layer: r·(in + out) each."""
        return r * sum((s[0] + s[1]) * n for k, s, n in self.tensors() if k == "linear")


@dataclass
class MemoryEstimate:
    """Bytes per device of each part and the predicted peak (see the module docstring)."""

    parts: dict[str, float]
    peak: float
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gb(self) -> float:
        return self.peak / GB

    def fits(self, device_gb: float, gpu: bool = True) -> bool:
        """Whether the peak plus allocator slack (10 %) and, on a GPU, the runtime (0.8 GB) fits."""
        need = self.peak * (1 + ALLOCATOR_SLACK) + (GPU_RUNTIME_GB * GB if gpu else 0)
        return need <= device_gb * GB

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "parts_gb": {k: round(v / GB, 4) for k, v in self.parts.items()},
                "peak_gb": round(self.peak_gb, 4), "notes": self.notes}


def _bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise UnlearnError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got '{dtype}'") from None


def layer_activation_bytes(shape: ModelShape, b: int, seq: int, lora_r: int = 0) -> float:
    """Bytes autograd saves per token in one decoder layer (module docstring). Under LoRA
    (`lora_r` > 0) the frozen base linears and norms save nothing for their weights; the fp32 A
    factors save their input (on a 16-bit base a fp32 copy per adapted linear) and B its r-wide
    input. Exact on random Llama configs (counted with ``saved_tensors_hooks``)."""
    h, q, i = shape.hidden, shape.heads * shape.head_dim, shape.intermediate
    common = 4 * shape.heads + b * seq + 8  # log-sum-exp, the padding mask, two rsqrt
    if not lora_r:
        return 2 * (4 + 2 * b) * h + 4 * b * q + 4 * b * i + common
    lora = 4 * lora_r * LORA_TARGETS
    if b == 4:  # fp32 base: A saves the same input the base would
        return 2 * (4 + 4) * h + 4 * b * q + 4 * b * i + common + lora
    # fp32 copies of the inputs of q, k, v, gate, up (hidden), o (q) and down (i)
    return 2 * 4 * h + 4 * 5 * h + (4 * b + 4) * q + (3 * b + 4) * i + common + lora


def _optimizer_state(shape: ModelShape, optim: str, b: int, trainable: list[tuple[tuple[int, ...], int]]) -> float:
    total = 0.0
    for s, n in trainable:
        numel = math.prod(s)
        if optim == "adamw_torch":
            total += 2 * numel * b * n
        elif optim in ("adamw_8bit", "paged_adamw_8bit"):
            total += n * (2 * (numel + 4 * math.ceil(numel / BNB_BLOCK)) if numel >= BNB_MIN_8BIT else 8 * numel)
        elif optim == "adafactor":
            total += n * ((s[0] + s[1]) * b if len(s) == 2 else numel * b)
    return total


def _step_temporaries(optim: str, largest: int, b: int, in_place: bool = False) -> float:
    """Temporaries of one tensor's update: AdamW's denominator (``sqrt(v)``, then its quotient);
    Adafactor's update and its negation (plus fp32 copies of the parameter and gradient when they
    are 16-bit), or the update alone with `in_place` (`llm_unlearn.optim.InPlaceAdafactor`, which the
    optimizer step in backward uses); 8-bit AdamW works in its kernel; SGD without momentum in place."""
    per_element = {"adamw_torch": 2 * b, "adafactor": 4 * ((1 if in_place else 2) + (2 if b < 4 else 0))}.get(optim, 0)
    return per_element * largest


def estimate(config: Any, method: str = "npo", mode: str = "full", optim: str = "adamw_torch", batch: int = 4,
             seq: int = 256, dtype: str = "bfloat16", world_size: int = 1, sharding: str = "none", *,
             optim_in_backward: bool = False, checkpointing: bool = False, answer_len: int | None = None,
             lora_r: int = 8, split_backward: bool = True, ref: str = "cached") -> MemoryEstimate:
    """Predicted peak memory per device of one unlearning run (module docstring).

    `config`: a transformers config, a dict of its fields, or a `ModelShape`. `mode`: full, lora,
    qlora. `optim`: adamw_torch, adamw_8bit, paged_adamw_8bit, adafactor, sgd. `batch`, `seq`:
    items per device and micro-batch, padded length. `answer_len`: answer tokens per item
    (default seq // 2). `sharding`: none (one device, or DDP replicas) or fsdp (FSDP2 full
    sharding over `world_size` devices). `ref`: cached (full weights: reference log-likelihoods
    stored with the data; LoRA: adapters disabled) or frozen (a frozen copy, for a KL retain term
    with full weights)."""
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    b = _bytes(dtype)
    if method not in METHOD_GRAPHS:
        raise UnlearnError(f"method must be one of {', '.join(METHOD_GRAPHS)}, got '{method}'")
    if mode not in MODES:
        raise UnlearnError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    if optim not in OPTIMS:
        raise UnlearnError(f"optim must be one of {', '.join(OPTIMS)}, got '{optim}'")
    if sharding not in SHARDINGS:
        raise UnlearnError(f"sharding must be one of {', '.join(SHARDINGS)}, got '{sharding}'")
    if world_size < 1 or batch < 1 or seq < 2:
        raise UnlearnError(f"world_size and batch must be >= 1 and seq >= 2, got {world_size}, {batch}, {seq}")
    if optim_in_backward and world_size > 1:
        raise UnlearnError("optim_in_backward runs in one process (the hooks would step before gradients are reduced)")
    if ref not in ("cached", "frozen"):
        raise UnlearnError(f"ref must be cached or frozen, got '{ref}'")
    answer = min(seq - 1, answer_len if answer_len is not None else seq // 2)
    shard = world_size if sharding == "fsdp" else 1
    notes: list[str] = []
    parts: dict[str, float] = {}

    # weights
    linear = shape.params(("linear",))
    other = shape.params() - linear
    if mode == "qlora":
        base = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + other * b
    else:
        base = shape.params() * b
    lora = shape.lora_params(lora_r) if mode != "full" else 0
    parts["weights"] = (base + 4 * lora) / shard
    if shard > 1:  # two decoder layers all-gathered at a time (current + prefetched)
        per_layer = shape.layer_params() * (b if mode != "qlora" else 0.52)
        parts["fsdp_unsharded_layers"] = 2 * per_layer
    if ref == "frozen" and mode == "full":
        parts["reference_copy"] = shape.params() * b / shard

    # what trains, and its dtype
    if mode == "full":
        trainable = [(s, n) for _, s, n in shape.tensors()]
        tb = b
    else:
        h, q, kv, i, L = (shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim,
                          shape.intermediate, shape.layers)
        # A (r, in) and B (out, r) of q, k, v, o, gate, up, down
        trainable = [((lora_r, h), 5 * L), ((lora_r, q), L), ((lora_r, i), L),
                     ((q, lora_r), L), ((kv, lora_r), 2 * L), ((h, lora_r), 2 * L), ((i, lora_r), 2 * L)]
        tb = 4
    n_trainable = sum(math.prod(s) * n for s, n in trainable)
    largest = max(math.prod(s) for s, _ in trainable)
    state = _optimizer_state(shape, optim, tb, trainable) / shard
    parts["optimizer_state"] = state
    step_tmp = _step_temporaries(optim, largest, tb) / shard  # the step works on this device's shard
    parts["gradients"] = n_trainable * tb / shard  # in backward: one tensor at a time (below)

    # activations of one graph
    tokens = batch * seq
    lora_extra = lora_r if mode != "full" else 0
    per_layer_token = layer_activation_bytes(shape, b, seq, lora_extra)
    rows = batch * (answer + 1)
    head_saved = 4 * rows * shape.vocab
    head_backward = 2 * 4 * rows * shape.vocab + b * rows * shape.vocab
    final_norm = tokens * (4 + 2 * b) * shape.hidden
    if checkpointing:
        graph = tokens * b * shape.hidden * shape.layers + final_norm + head_saved
        recompute = tokens * per_layer_token  # one layer's activations during its backward
    else:
        graph = tokens * per_layer_token * shape.layers + final_norm + head_saved
        recompute = 0.0
    graphs = METHOD_GRAPHS[method]
    parts["activations_per_graph"] = graph
    # the head's backward buffers come first and are freed before any layer is recomputed
    backward_transient = max(head_backward, recompute)

    # overlap within a step
    split = split_backward and not optim_in_backward and graphs > 1
    vocab_rows = shape.vocab * shape.hidden
    if optim_in_backward:
        # backward starts at the head with every graph alive; an untied head's gradient (and its update)
        # comes then, the input embedding's last, when the graphs are gone. Tied: the head's contribution
        # to the shared tensor's gradient is held through the whole backward, until the embedding's
        # arrives; the two are summed into a third buffer, then the update runs
        held = 0
        if mode == "full":
            first = vocab_rows if not shape.tied else max(math.prod(s) for k, s, _ in shape.tensors() if k == "linear")
            last = vocab_rows
            held = vocab_rows * tb if shape.tied else 0
        else:
            first = last = largest
        start = graphs * graph + backward_transient + held + first * tb + _step_temporaries(optim, first, tb, True)
        end = max(last * tb + _step_temporaries(optim, last, tb, True), 3 * held)
        live = max(start, end)
        parts["gradients"] = max(first, last) * tb
        step_tmp = _step_temporaries(optim, max(first, last), tb, True)
        notes.append("optimizer step in backward: the graphs of the step are alive together (no split_backward), "
                     "gradients one tensor at a time")
    elif split:  # the forget backward leaves the gradients; the retain graph is built next to them
        live = max(parts["gradients"] + graph + backward_transient, parts["gradients"] + step_tmp)
    else:  # all graphs, then the head's gradient at the start of backward; or all gradients at the step
        live = max(graphs * graph + backward_transient + (vocab_rows * tb / shard if mode == "full" else 0),
                   parts["gradients"] + step_tmp)
    parts["activations_live"] = max(live - parts["gradients"] - (step_tmp if optim_in_backward else 0), 0.0)
    parts["step_temporaries"] = step_tmp
    peak = sum(v for k, v in parts.items() if k in ("weights", "fsdp_unsharded_layers", "reference_copy",
                                                      "optimizer_state")) + live
    if mode != "full" and graphs > 1:
        notes.append("LoRA: the reference pass (adapters off, no grad) runs before the graph and is freed")
    settings = {"model": shape.name, "method": method, "mode": mode, "optim": optim, "batch": batch, "seq": seq,
                "answer_len": answer, "dtype": str(dtype), "world_size": world_size, "sharding": sharding,
                "optim_in_backward": optim_in_backward, "checkpointing": checkpointing, "split_backward": split,
                "lora_r": lora_r if mode != "full" else None, "ref": ref, "params": shape.params(),
                "trainable": n_trainable}
    return MemoryEstimate(parts=parts, peak=peak, settings=settings, notes=notes)


def load_config(spec: str | Path) -> tuple[Any, str]:
    """(config, where it came from) for a model directory, a built-in name/alias, or a Hub id whose
    config is in the local cache. Only the config is read; never the weights."""
    key = ALIASES.get(str(spec).lower(), str(spec))
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnlearnError(f"{path} has no config.json")
        try:
            return AutoConfig.from_pretrained(str(path), local_files_only=True), str(path / "config.json")
        except (OSError, ValueError) as exc:
            raise UnlearnError(f"{path / 'config.json'}: cannot read it ({str(exc).splitlines()[0]})") from None
    if key in BUILTIN_CONFIGS:
        return dict(BUILTIN_CONFIGS[key], _name_or_path=key), "built-in config"
    if path.suffix == ".json" and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), str(path)
        except ValueError as exc:
            raise UnlearnError(f"{path}: not JSON ({exc})") from None
    try:
        return AutoConfig.from_pretrained(key), f"Hub config of {key}"
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(ALIASES))
        raise UnlearnError(f"cannot read the config of '{spec}' ({str(exc).splitlines()[0][:160]}); pass a model "
                           f"directory, a config.json, or a built-in model: {known}") from None


__all__ = ["BUILTIN_CONFIGS", "MemoryEstimate", "ModelShape", "estimate", "layer_activation_bytes", "load_config"]
