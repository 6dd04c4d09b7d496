"""The memory model (`llm_unlearn.memory`): its activation count against what autograd really
saves, its peak against a measured run, config loading and `llm-unlearn plan-memory`."""

from __future__ import annotations

import json

import pytest
import torch

from llm_unlearn.cli import main
from llm_unlearn.errors import UnlearnError
from llm_unlearn.memory import BUILTIN_CONFIGS, ModelShape, estimate, layer_activation_bytes, load_config


def _llama(layers: int, hidden=256, inter=704, heads=4, kv=2, vocab=1000, dtype=torch.float32, lora=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=64, attn_implementation="sdpa",
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    if lora:
        from llm_unlearn.models import attach_lora

        model = attach_lora(model, r=8, alpha=16)
    return model, cfg


def _saved_bytes(model, batch: int, seq: int) -> int:
    """Bytes of the distinct storages autograd saves for one padded training forward (+ log-softmax)."""
    ids = torch.randint(0, 1000, (batch, seq))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
    return sum(saved.values())


@pytest.mark.parametrize("dtype,b", [(torch.float32, 4), (torch.bfloat16, 2)])
@pytest.mark.parametrize("lora", [False, True])
def test_layer_activations_are_what_autograd_saves(dtype, b, lora):
    batch, seq = 2, 48
    one, cfg = _llama(1, dtype=dtype, lora=lora)
    two, _ = _llama(2, dtype=dtype, lora=lora)
    per_layer_token = (_saved_bytes(two, batch, seq) - _saved_bytes(one, batch, seq)) / (batch * seq)
    assert per_layer_token == layer_activation_bytes(ModelShape.from_config(cfg), b, seq, 8 if lora else 0)


@pytest.mark.parametrize("optim,in_backward,ckpt", [("adamw_torch", False, False), ("adafactor", True, True)])
def test_prediction_matches_a_measured_run(optim, in_backward, ckpt, tiny_tokenizer, tmp_path):
    """Peak live CPU allocations (malloc) of two NPO+RT steps on a random Llama, against `estimate`."""
    from datasets import Dataset

    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.perf import MallocPeak
    from llm_unlearn.trainers import NPOConfig, NPOTrainer

    batch, prompt, answer = 4, 48, 48

    def data(seed: int) -> Dataset:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, len(tiny_tokenizer), (2 * batch, prompt + answer), generator=g)
        labels = ids.clone()
        labels[:, :prompt] = -100
        return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                  "labels": labels.tolist(), "question": [f"q{seed}{i}" for i in range(2 * batch)],
                                  "answer": [f"a{seed}{i}" for i in range(2 * batch)]})

    pairs = ForgetRetainDataset(data(0), data(1), seed=0)
    sampler = MallocPeak()
    if not sampler.available:
        sampler.stop()
        pytest.skip("needs glibc's mallinfo2 to measure live allocations")
    model, cfg = _llama(4, vocab=len(tiny_tokenizer) * 4)
    args = NPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True, seed=0, max_steps=2,
                     per_device_train_batch_size=batch, learning_rate=1e-4, warmup_steps=0, alpha=1.0, optim=optim,
                     optim_in_backward=in_backward, activation_checkpointing=ckpt)
    NPOTrainer(model=model, args=args, processing_class=tiny_tokenizer, train_dataset=pairs).train()
    measured = sampler.stop()
    predicted = estimate(cfg, "npo", "full", optim, batch=batch, seq=prompt + answer, dtype="float32",
                         optim_in_backward=in_backward, checkpointing=ckpt, answer_len=answer).peak
    assert abs(predicted - measured) <= 0.15 * measured, (predicted / 1e6, measured / 1e6)


def test_what_the_model_says_about_the_design():
    cfg = BUILTIN_CONFIGS["meta-llama/Llama-3.1-8B"]
    kw = dict(batch=4, seq=512, dtype="bfloat16", checkpointing=True)
    adamw = estimate(cfg, "npo", "full", "adamw_torch", **kw)
    in_bwd = estimate(cfg, "npo", "full", "adamw_torch", optim_in_backward=True, **kw)
    assert adamw.parts["gradients"] == pytest.approx(adamw.settings["params"] * 2)
    assert in_bwd.parts["gradients"] == 128256 * 4096 * 2  # one tensor at a time: the embedding
    assert adamw.peak - in_bwd.peak > 0.9 * adamw.parts["gradients"] - 10e9
    # sharding divides weights, gradients and state; activations do not shrink
    per_gpu = [estimate(cfg, "npo", "full", "adamw_torch", world_size=n, sharding="fsdp", **kw).peak for n in (1, 2, 8)]
    assert per_gpu[0] > per_gpu[1] > per_gpu[2] > adamw.parts["activations_per_graph"]
    # the question: 8B in bf16 on one 40 GB GPU, in backward with checkpointing
    assert estimate(cfg, "npo", "full", "adafactor", optim_in_backward=True, **kw).fits(40)
    assert not in_bwd.fits(40)  # AdamW's bf16 moments (32 GB) next to 16 GB of weights
    with pytest.raises(UnlearnError, match="one process"):
        estimate(cfg, "npo", "full", "adamw_torch", world_size=2, sharding="fsdp", optim_in_backward=True)
    with pytest.raises(UnlearnError, match="optim must be one of"):
        estimate(cfg, optim="lion")


def test_load_config(tmp_path):
    cfg, source = load_config("llama-3.2-1b")
    assert source == "built-in config" and ModelShape.from_config(cfg).params() == pytest.approx(1.236e9, rel=1e-3)
    model, _ = _llama(2)
    model.config.save_pretrained(tmp_path / "m")
    loaded, where = load_config(tmp_path / "m")
    assert ModelShape.from_config(loaded).params() == sum(p.numel() for p in model.parameters())
    assert where.endswith("config.json")
    with pytest.raises(UnlearnError, match="cannot read the config of 'nobody/nothing'"):
        load_config("nobody/nothing")
    with pytest.raises(UnlearnError, match="mixture of experts"):
        ModelShape.from_config({**BUILTIN_CONFIGS["meta-llama/Llama-3.2-1B"], "num_local_experts": 8})


def test_plan_memory_cli(capsys, tmp_path):
    from llm_unlearn.cli.plan_memory_cmd import BUILTIN_NAMES
    from llm_unlearn.memory import ALIASES

    assert set(BUILTIN_NAMES.split(", ")) == set(ALIASES) - {"smollm2-135m"}  # the help lists every built-in
    assert main(["plan-memory", "--model", "zephyr-7b", "--gpus", "1,8", "--in-backward", "--device-gb", "40",
                 "--gradient-checkpointing"]) == 0
    out = capsys.readouterr().out
    assert "full, adamw_torch, in backward" in out and "qlora, adamw_torch" in out and "(no fit)" in out
    assert main(["plan-memory", "--model", "llama-3.1-8b", "--modes", "full", "--optims", "adamw_torch",
                 "--in-backward", "--parts"]) == 0
    assert "full, adamw_torch, in backward, 1 device(s): weights 16.06, optimizer_state 32.12" in capsys.readouterr().out
    assert main(["plan-memory", "--model", "smollm2", "--modes", "full", "--optims", "sgd", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["estimates"][0]
    assert record["settings"]["optim"] == "sgd" and record["parts_gb"]["optimizer_state"] == 0
    assert main(["plan-memory", "--model", "smollm2", "--gpus", "0"]) == 2
    assert "error: --gpus expects integers >= 1" in capsys.readouterr().err
    assert main(["plan-memory", "--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["plan-memory", "--model", "smollm2", "--method", "dpo"]) == 2
    assert "method must be one of" in capsys.readouterr().err
