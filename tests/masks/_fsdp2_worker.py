"""Worker for test_fsdp2.py: a masked AdamW run of a tiny Llama, in one process or sharded with
FSDP2 ``fully_shard`` over a gloo group (torchrun). Writes the gathered weights, the losses and
how the parameters were held to OUT/result.pt (rank 0).

    python _fsdp2_worker.py OUT MODE [--no-rebind]          # MODE: full_element | lora_row
    torchrun --nproc_per_node 2 _fsdp2_worker.py OUT MODE
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    rebind = "--no-rebind" not in sys.argv
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_unlearn.masks import compute_mask, enforce_mask

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    if mode == "lora_row":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    mask = compute_mask(model, method="random", ratio=0.5, granularity="row" if mode == "lora_row" else "element",
                        seed=1, progress=False)
    enforcer = enforce_mask(model, mask)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    if world > 1:
        from torch.distributed.fsdp import fully_shard
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        for module in model.modules():
            if isinstance(module, LlamaDecoderLayer):
                fully_shard(module)
        fully_shard(model)
    sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    moved = enforcer.rebind(model) if rebind else 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    enforcer.attach_optimizer(opt)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    local = ids.chunk(world)[rank]
    losses = []
    for _ in range(3):
        loss = model(input_ids=local, labels=local).loss
        loss.backward()
        if rebind:
            enforcer.mask_grads_()
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
    final = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        final[n] = full.detach().clone()
    if rank == 0:
        torch.save({"initial": initial, "final": final, "losses": losses, "sharded_params": sharded,
                    "rebound": moved, "mask": {k: v for k, v in mask.items()}}, os.path.join(out, "result.pt"))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
