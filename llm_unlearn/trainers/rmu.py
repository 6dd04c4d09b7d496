"""RMU, Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark", §5, eq. 1–2):

    L = E_forget[ ‖h_ℓ^θ(x) − c·u‖² ] + α·E_retain[ ‖h_ℓ^θ(x) − h_ℓ^frozen(x)‖² ]

h_ℓ is the output of decoder layer ℓ (squared error averaged over the hidden dimension and the
non-padding positions), u a fixed random unit vector (seeded), c the steering coefficient. c depends
on the model's activation norms (WMDP tuned 6.5 for Zephyr-7B; SmolLM2-135M's layer-7 tokens have
norms of ~80–170, a few of ~700): with ``steering_scale`` s, c is instead s·‖h_ℓ^frozen(x)‖ per
token, the adaptive coefficient of Dang et al. (2025, "On effects of steering latent
representation for LLM unlearning"), which carries across models and across tokens whose norms
differ by 10×. Only
the MLP down-projection weights of `update_layers` (default ℓ−2…ℓ) train, as in WMDP's
``rmu/unlearn.py`` (``param_ids=[6]``: ``mlp.down_proj.weight``) and open-unlearning's RMU config
(``model.layers.(5|6|7).mlp.down_proj.weight``); ``update_params: all`` trains every parameter
of those layers. The frozen activations come from the
same model with adapters disabled (LoRA) or with the update layers' original weights swapped in
(`torch.func.functional_call`; a copy of those few layers only, not of the model)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_unlearn.errors import UnlearnError
from llm_unlearn.trainers.base import UnlearnConfig, UnlearnTrainer
from llm_unlearn.trainers.losses import activation_sq_error


@dataclass
class RMUConfig(UnlearnConfig):
    """RMU (defaults from Li et al. for 7B models; c and α depend on the model's activation norms)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    steering_coeff: float = field(default=6.5, metadata={"help": "c: norm of the random target direction for forget activations"})
    steering_scale: float | None = field(default=None, metadata={"help": "adaptive c: s x the frozen model's norm of each "
                                                                         "forget token's activation (replaces steering_coeff)"})
    alpha: float = field(default=1200.0, metadata={"help": "weight of the retain activation-matching term (0 disables it)"})
    layer: int | None = field(default=None, metadata={"help": "decoder layer whose output is steered (default: 7/32 of the depth, layer 7 of 32 as in the paper)"})
    update_layers: str | None = field(default=None, metadata={"help": "comma-separated decoder layers whose parameters train (default: layer-2,layer-1,layer)"})
    update_params: str = field(default="mlp_down", metadata={"help": "which parameters of update_layers train: mlp_down (the MLP down-projection weight, as WMDP and open-unlearning) or all"})

    def __post_init__(self):
        super().__post_init__()
        if self.alpha < 0:
            raise UnlearnError(f"alpha must be >= 0, got {self.alpha}")
        if self.steering_scale is not None and not self.steering_scale > 0:
            raise UnlearnError(f"steering_scale must be > 0, got {self.steering_scale}")
        if self.update_params not in UPDATE_PARAMS:
            raise UnlearnError(f"update_params must be one of {', '.join(UPDATE_PARAMS)}, got '{self.update_params}'")


UPDATE_PARAMS = ("mlp_down", "all")
# the MLP's output projection in common architectures (Llama/Qwen/Mistral, Phi/OPT, GPT-NeoX, GPT-2, Mixtral)
MLP_DOWN = re.compile(r"(^|\.)(mlp|feed_forward|block_sparse_moe)\..*\b(down_proj|fc2|dense_4h_to_h|c_proj|w2)\b")


def rmu_parameter_names(layer: nn.Module, update_params: str) -> set[str]:
    """Names (within one decoder layer) of the parameters RMU trains: the MLP down-projection
    weight (and its LoRA factors under PEFT), or every parameter."""
    names = {n for n, _ in layer.named_parameters()}
    if update_params == "all":
        return names
    return {n for n in names if MLP_DOWN.search(n) and not n.endswith("bias")}


class _StopForward(Exception):
    """Raised by the capture hook: nothing after layer ℓ needs to run."""


def find_decoder_layers(model) -> nn.ModuleList:
    """The decoder's list of transformer blocks (works through PEFT wrappers)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UnlearnError(f"rmu: cannot find the decoder layers of {type(model).__name__}")


@contextmanager
def capture_output(module: nn.Module, store: dict):
    def hook(_module, _args, output):
        store["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


class RMUTrainer(UnlearnTrainer):
    method = "rmu"
    uses_retain = True

    def setup(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        self.layers = find_decoder_layers(model)
        n = len(self.layers)
        layer = self.args.layer if self.args.layer is not None else max(1, round(n * 7 / 32))
        if not 0 <= layer < n:
            raise UnlearnError(f"rmu: layer must be in 0..{n - 1}, got {layer}")
        if self.args.update_layers:
            try:
                update = sorted({int(x) for x in str(self.args.update_layers).split(",") if x.strip()})
            except ValueError:
                raise UnlearnError(f"rmu: update_layers must be comma-separated integers, got '{self.args.update_layers}'") from None
        else:
            update = list(range(max(0, layer - 2), layer + 1))
        if not update or any(not 0 <= i <= layer for i in update):
            raise UnlearnError(f"rmu: update_layers must be within 0..{layer} (the steered layer), got {update}")
        self.layer, self.update_layers = layer, update
        chosen = {id(p) for i in update for n, p in self.layers[i].named_parameters()
                  if n in rmu_parameter_names(self.layers[i], self.args.update_params)}
        self.frozen_params: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            trainable = id(p) in chosen and (p.requires_grad if self.is_peft else True)
            if trainable and not self.is_peft:
                self.frozen_params[name] = p.detach().clone()
            p.requires_grad_(trainable)
        if not any(p.requires_grad for p in model.parameters()):
            raise UnlearnError(f"rmu: no trainable parameter ({self.args.update_params}) in layers {update}"
                               + (" (does the LoRA adapter target the MLP down-projection?)" if self.is_peft else ""))
        gen = torch.Generator().manual_seed(self.args.seed)
        u = torch.rand(model.config.hidden_size, generator=gen)
        self.direction = (u / u.norm()).to(next(model.parameters()).device)
        self.control_vec = self.args.steering_coeff * self.direction

    def activations(self, model, batch: dict, frozen: bool = False) -> torch.Tensor:
        store: dict = {}
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        if not frozen:
            with capture_output(self.layers[self.layer], store):
                model(**kwargs)
            return store["h"]
        if self.is_peft:
            with self.reference_mode(model) as ref, capture_output(self.layers[self.layer], store):
                ref(**kwargs)
            return store["h"]
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), capture_output(self.layers[self.layer], store):
            torch.func.functional_call(unwrapped, self.frozen_params, args=(), kwargs=kwargs, strict=False)
        return store["h"]

    def one_graph_parts(self) -> tuple[str, ...]:
        return ()  # the loss is on a layer's hidden states, captured by a hook, not on answer logits

    def unlearn_loss(self, model, inputs, counts):
        forget = inputs["forget"]
        h = self.activations(model, forget)
        if self.args.steering_scale is None:
            target = self.control_vec.to(h.dtype).expand_as(h)
        else:  # adaptive: each token's target is s x its own (frozen) activation norm, along u
            with torch.no_grad():
                norm = self.activations(model, forget, frozen=True).norm(dim=-1, keepdim=True)
            target = self.args.steering_scale * norm.to(h.dtype) * self.direction.to(h.dtype)
        rmu_forget = activation_sq_error(h, target, forget["attention_mask"]).sum() / counts["forget_positions"]
        loss, terms = rmu_forget, {"rmu_forget": rmu_forget}
        if self.needs_retain(self.args):
            retain = inputs["retain"]
            h_r = self.activations(model, retain)
            h_frozen = self.activations(model, retain, frozen=True)
            rmu_retain = activation_sq_error(h_r, h_frozen, retain["attention_mask"]).sum() / counts["retain_positions"]
            loss = loss + self.args.alpha * rmu_retain
            terms["rmu_retain"] = rmu_retain
        return loss, terms
