"""Model loading: Hub id, local directory (full model or PEFT adapter), GGUF file, the offline
SmolLM2-135M-Instruct cache, and `tiny` random Llama models for tests and the fast demo;
LoRA / QLoRA attachment."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from llm_unlearn.errors import UnlearnError

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


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_UNLEARN_CACHE", Path.home() / ".cache" / "llm_unlearn"))


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on `texts`, with BOS/EOS/PAD and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
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
    from transformers import LlamaConfig, LlamaForCausalLM

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


def texts_for_tokenizer(source, splits: Iterable[str] | None = None) -> list[str]:
    """All question/answer/paraphrase/perturbed text of a local or synthetic source."""
    from llm_unlearn.data.tofu import available_splits, is_local_source, load_tofu

    if not is_local_source(source):
        raise UnlearnError("the 'tiny' model trains its tokenizer on local data: pass --data DIR")
    names = list(splits) if splits is not None else available_splits(source)
    texts: list[str] = []
    for name in names:
        for row in load_tofu(name, source):
            for key in ("question", "answer", "paraphrased_answer", "paraphrased_question"):
                if isinstance(row.get(key), str):
                    texts.append(row[key])
            for p in row.get("perturbed_answer") or []:
                texts.append(p)
    return texts


def build_tiny(source, seed: int = 0, vocab_size: int = 1024, **model_kwargs):
    """Tokenizer trained on the source's text + a random tiny Llama."""
    tokenizer = train_tiny_tokenizer(texts_for_tokenizer(source), vocab_size=vocab_size)
    return build_tiny_model(tokenizer, seed=seed, **model_kwargs), tokenizer


def resolve_model_path(spec: str) -> str:
    """Map aliases (smollm2) to the local cache; leave directories, files and Hub ids alone."""
    alias = MODEL_ALIASES.get(spec.lower())
    if alias is not None:
        path = cache_dir() / "models" / alias
        if (path / "config.json").is_file():
            return str(path)
        if spec.lower() == SMOLLM2_HUB_ID.lower():
            return spec
        raise UnlearnError(f"model '{spec}' is not fetched yet; run: llm-unlearn models fetch {alias}")
    return spec


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


def load_tokenizer(spec: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    from llm_unlearn.data.qa import check_tokenizer

    path = resolve_model_path(spec)
    if path.endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    else:
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    check_tokenizer(tok)
    return tok


def load_model(spec: str, dtype: str | torch.dtype | None = "float32", load_in_4bit: bool = False,
               gguf_file: str | None = None, adapter: str | None = None, trainable_adapter: bool = False,
               device_map=None):
    """Load a causal LM from a Hub id, directory, GGUF file, alias, or a PEFT adapter directory.

    An adapter directory (``adapter_config.json``) loads its base model and the adapter on top;
    `adapter` adds one explicitly. `load_in_4bit` quantises the base with bitsandbytes (QLoRA).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    kwargs = {"dtype": _dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = _dtype(dtype) if isinstance(_dtype(dtype), torch.dtype) else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    if Path(path).is_dir() and is_adapter_dir(path):
        adapter = adapter or path
        base = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        path = resolve_model_path(base)
    if path.endswith(".gguf"):
        if not Path(path).is_file():
            raise UnlearnError(f"GGUF file not found: {path}")
        model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name, **kwargs)
    else:
        if not Path(path).exists() and (path.startswith((".", "/")) or os.sep in path and path.count("/") != 1):
            raise UnlearnError(f"model directory not found: {path}")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, **kwargs)
        except OSError as exc:
            raise UnlearnError(f"cannot load model '{spec}': {str(exc).splitlines()[0]}") from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
    return model


def attach_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                target_modules: str | list[str] = "all-linear", quantized: bool = False, seed: int = 0):
    """Wrap `model` in a PEFT LoRA model (for a 4-bit base, prepare it for k-bit training first)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def load_model_and_tokenizer(spec: str, **kwargs):
    """Both, from the same spec (an adapter directory holds its tokenizer too)."""
    model = load_model(spec, **kwargs)
    tokenizer = load_tokenizer(resolve_model_path(spec), gguf_file=kwargs.get("gguf_file"))
    return model, tokenizer
